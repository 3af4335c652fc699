"""Stand-ins for the remote MCP services the project talks to: Session-Buddy 0.36.0 (pool and
memory tools) and Akosha 0.24.5 (memory, embedding and search tools), built with the real MCP
SDK, run as their own processes (`python -m tests.standins session-buddy --port N`), checked
against the real servers' recorded `tools/list` (tests/counterparts/) and, with
`make test-counterparts`, against the real servers themselves."""
