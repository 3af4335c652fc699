"""`python -m tests.standins session-buddy|akosha --port N`: run a stand-in MCP server."""

from tests.standins.server import main

raise SystemExit(main())
