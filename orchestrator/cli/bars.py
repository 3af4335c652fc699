"""Progress bars of long CLI operations (close-all with drain, the bench harness; `up --demo`
has its own): rich bars on stderr, never on stdout, so `--json` output stays one document.
They draw only when stderr is a terminal."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)


def stderr_progress(console: Console | None = None) -> Progress:
    """A transient progress display on stderr (disabled when stderr is not a terminal)."""
    console = console or Console(stderr=True)
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
