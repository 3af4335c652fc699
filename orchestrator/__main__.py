"""`python -m orchestrator`: the `mahavishnu` command line."""

from orchestrator.cli import main

main()
