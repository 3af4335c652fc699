"""A stand-in for `claude -p PROMPT --output-format stream-json --verbose`.

It prints, one JSON object a line, the event shapes Claude Code's stream-json prints: a
`system`/`init` event, an `assistant` message with a text content block, an `assistant` message
with a `tool_use` block, the `user` message carrying its `tool_result`, a last `assistant` text
and the `result` event. With FAKE_CLAUDE_GATE (a unix socket path) set, it connects there after
its first assistant message and waits for one line before going on, so a test decides when the
rest comes (no sleeps). Usage: python fake_claude.py PROMPT
"""

from __future__ import annotations

import json
import os
import socket
import sys

SESSION = "5f0c7a7e-6d0b-4b43-9d3a-2f1d3c0e9a11"
MODEL = "claude-sonnet-4-5-20250929"


def emit(event: dict[str, object]) -> None:
    print(json.dumps(event), flush=True)


def assistant(message_id: str, content: list[dict[str, object]]) -> dict[str, object]:
    return {
        "type": "assistant",
        "message": {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": content,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 12, "output_tokens": 7, "service_tier": "standard"},
        },
        "parent_tool_use_id": None,
        "session_id": SESSION,
    }


def wait_for_gate() -> None:
    path = os.environ.get("FAKE_CLAUDE_GATE")
    if not path:
        return
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(path)
        sock.makefile("rb").readline()


def main() -> None:
    prompt = sys.argv[1]
    emit(
        {
            "type": "system",
            "subtype": "init",
            "cwd": os.getcwd(),
            "session_id": SESSION,
            "tools": ["Bash", "Read", "Edit"],
            "mcp_servers": [],
            "model": MODEL,
            "permissionMode": "default",
            "apiKeySource": "none",
        }
    )
    emit(assistant("msg_01", [{"type": "text", "text": f"Looking at: {prompt}"}]))
    wait_for_gate()
    tool = {"type": "tool_use", "id": "toolu_01", "name": "Bash", "input": {"command": "ls"}}
    emit(assistant("msg_02", [tool]))
    emit(
        {
            "type": "user",
            "message": {
                "role": "user",
                "content": [{"tool_use_id": "toolu_01", "type": "tool_result", "content": "a b"}],
            },
            "parent_tool_use_id": None,
            "session_id": SESSION,
        }
    )
    emit(assistant("msg_03", [{"type": "text", "text": "Done: two files."}]))
    emit(
        {
            "type": "result",
            "subtype": "success",
            "is_error": False,
            "duration_ms": 1234,
            "duration_api_ms": 1100,
            "num_turns": 2,
            "result": "Done: two files.",
            "session_id": SESSION,
            "total_cost_usd": 0.0012,
            "usage": {"input_tokens": 24, "output_tokens": 14},
        }
    )


if __name__ == "__main__":
    main()
