"""The MCP facade: `server.py` builds the server and its tools (`tools_pools.py`,
`tools_tasks.py`), `http.py` serves it over streamable HTTP behind its checks, `params.py`,
`support.py` and `models.py` hold the tools' parameter types, argument checks and replies."""
