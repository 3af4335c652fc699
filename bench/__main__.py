"""`python -m bench`: run the benchmark harness (see `python -m bench --help`)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from bench.config import (
    DEFAULT_ARQ_VENV,
    DEFAULT_BULLMQ_DIR,
    DEFAULT_JSON,
    DEFAULT_MARKDOWN,
    SCENARIOS,
    SYSTEMS,
    RunConfig,
)
from bench.runner import command_line, rerender, run


def _names(value: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown) or '(none)'}; choose from {', '.join(allowed)}"
        )
    return names


def _counts(value: str) -> tuple[int, ...]:
    try:
        counts = tuple(sorted({int(n) for n in value.split(",") if n.strip()}))
    except ValueError:
        message = f"--workers wants numbers like 1,2, not {value!r}"
        raise argparse.ArgumentTypeError(message) from None
    if not counts or min(counts) < 1 or max(counts) > 8:
        raise argparse.ArgumentTypeError(f"--workers wants counts from 1 to 8, not {value!r}")
    return counts


def parse(argv: list[str]) -> RunConfig:
    """The run's options from the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark Mahavishnu pools against the raw Redis ceiling, arq and BullMQ.",
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every task count (default 1.0)"
    )
    parser.add_argument("--quick", action="store_true", help="same as --scale 0.05 --repeat 1")
    parser.add_argument(
        "--scenarios",
        type=lambda v: _names(v, SCENARIOS, "scenario"),
        default=SCENARIOS,
        help=f"comma-separated subset of {','.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--systems",
        type=lambda v: _names(v, SYSTEMS, "system"),
        default=SYSTEMS,
        help=f"comma-separated subset of {','.join(SYSTEMS)}",
    )
    parser.add_argument(
        "--workers", type=_counts, default=(1, 2), help="worker processes of the throughput figures"
    )
    parser.add_argument("--concurrency", type=int, default=64, help="tasks per worker process")
    parser.add_argument("--batch", type=int, default=500, help="tasks per submit batch")
    parser.add_argument("--clients", type=int, default=200, help="clients of the concurrency run")
    parser.add_argument("--fanout-pools", type=int, default=100, help="pools of the fan-out figure")
    parser.add_argument("--repeat", type=int, default=3, help="runs per throughput figure (median)")
    parser.add_argument("--redis-url", default=None, help="use this Redis instead of a private one")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="measure on a private local Redis Cluster of three primaries (system 'ours' only)",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the JSON")
    parser.add_argument(
        "--markdown", type=Path, default=DEFAULT_MARKDOWN, help="where to write the page"
    )
    parser.add_argument("--no-markdown", action="store_true", help="do not write the page")
    parser.add_argument("--arq-venv", type=Path, default=DEFAULT_ARQ_VENV, help="arq's own venv")
    parser.add_argument("--no-arq-tuned", action="store_true", help="skip the tuned arq rows")
    parser.add_argument(
        "--bullmq-dir",
        type=Path,
        default=DEFAULT_BULLMQ_DIR,
        help="the Node environment (npm bullmq) the harness creates for BullMQ",
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="measure nothing: re-render the page (and the tables) from a JSON of an earlier run",
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds one figure may take (default 300)"
    )
    args = parser.parse_args(argv)
    if args.from_json is not None:
        return RunConfig(
            json_path=None,
            markdown_path=None if args.no_markdown else args.markdown,
            command=command_line(argv),
            rerender=args.from_json,
        )
    if args.scale <= 0:
        parser.error("--scale must be positive")
    if args.concurrency < 1 or args.batch < 1 or args.clients < 1 or args.repeat < 1:
        parser.error("--concurrency, --batch, --clients and --repeat must be at least 1")
    if args.cluster and (args.redis_url or set(args.systems) - {"ours"}):
        parser.error("--cluster measures system 'ours' on its own cluster: add --systems ours")
    if args.fanout_pools < 3:
        parser.error("--fanout-pools must be at least 3")
    return RunConfig(
        scale=0.05 if args.quick else args.scale,
        scenarios=args.scenarios,
        systems=args.systems,
        workers=args.workers,
        concurrency=args.concurrency,
        batch=args.batch,
        clients=args.clients,
        fanout_pools=args.fanout_pools,
        repeat=1 if args.quick else args.repeat,
        redis_url=args.redis_url,
        cluster=args.cluster,
        json_path=args.json,
        markdown_path=None if args.no_markdown else args.markdown,
        arq_venv=args.arq_venv.resolve(),
        arq_tuned=not args.no_arq_tuned,
        bullmq_dir=args.bullmq_dir.resolve(),
        scenario_timeout=args.timeout,
        command=command_line(argv),
    )


def main(argv: list[str] | None = None) -> int:
    """Run the harness; exit 1 when a figure could not be measured."""
    cfg = parse(sys.argv[1:] if argv is None else argv)
    if cfg.rerender is not None:
        rerender(cfg.rerender, cfg.markdown_path)
        return 0
    report = asyncio.run(run(cfg))
    failed = [f for f in report.figures if f.status == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
