"""The benchmark page (docs/benchmarks.md), rendered from a report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.config import ROOT
from bench.report import Report, bullmq_text, fmt, ratio_text
from bench.stats import Figure
from bench.targets import Target

FINDINGS = ROOT / "bench" / "findings.md"
"""Hand-written profiling findings, included verbatim at the end of the Markdown page."""


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return lines


def _cpu_cells(fig: Figure) -> str:
    v = fig.values
    names = ("client", "workers", "consumers", "orchestrator", "redis")
    parts = [f"{n} {v[f'cpu_us_per_task.{n}']:,.0f}" for n in names if f"cpu_us_per_task.{n}" in v]
    return ", ".join(parts)


def _v(fig: Figure, name: str, digits: int = 0, suffix: str = "") -> str:
    if name not in fig.values:
        return ""
    return f"{fig.values[name]:,.{digits}f}{suffix}"


def _runs(fig: Figure) -> str:
    if fig.values.get("repeats", 1) <= 1:
        return "1"
    low, high = fig.values["min_tasks_per_s"], fig.values["max_tasks_per_s"]
    return f"{fig.values['repeats']:.0f} ({fmt(low)}..{fmt(high)})"


def _figure_sections(report: Report) -> list[str]:
    """One table per scenario, with the columns that scenario has."""
    out: list[str] = []
    by: dict[str, list[Figure]] = {}
    for fig in report.figures:
        by.setdefault(fig.scenario, []).append(fig)

    def section(title: str, header: list[str], rows: list[list[str]]) -> None:
        nonlocal out
        if rows:
            out += [f"### {title}", "", *_md_table(header, rows), ""]

    def failed(figs: list[Figure]) -> list[Figure]:
        return [f for f in figs if not f.ok]

    section(
        "Throughput",
        [
            "system",
            "setup",
            "tasks/s",
            "vs raw",
            "vs BullMQ c10",
            "runs (min..max)",
            "CPU µs/task",
            "peak RSS MiB",
        ],
        [
            [
                f.system,
                f.setup,
                fmt(f.primary),
                ratio_text(report, f),
                bullmq_text(report, f),
                _runs(f),
                _cpu_cells(f),
                _v(f, "rss_peak_mb.worker", 1) or _v(f, "rss_peak_mb.consumer", 1),
            ]
            for f in by.get("throughput", [])
            if f.ok
        ],
    )
    section(
        "Latency (sequential round trips, one client)",
        [
            "system",
            "setup",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "p50 vs raw",
            "p50 vs BullMQ c10",
            "n",
        ],
        [
            [
                f.system,
                f.setup,
                _v(f, "p50_ms", 2),
                _v(f, "p90_ms", 2),
                _v(f, "p99_ms", 2),
                _v(f, "max_ms", 2),
                ratio_text(report, f),
                bullmq_text(report, f),
                _v(f, "round_trips"),
            ]
            for f in by.get("latency", [])
            if f.ok
        ],
    )
    section(
        "Concurrency",
        ["system", "setup", "round trips/s", "vs raw", "p50 ms", "p99 ms", "CPU µs/task"],
        [
            [
                f.system,
                f.setup,
                fmt(f.primary),
                ratio_text(report, f),
                _v(f, "p50_ms", 1),
                _v(f, "p99_ms", 1),
                _cpu_cells(f),
            ]
            for f in by.get("concurrency", [])
            if f.ok
        ],
    )
    section(
        "Backlog",
        [
            "system",
            "setup",
            "drain tasks/s",
            "vs raw",
            "first fifth /s",
            "last fifth /s",
            "flatness",
            "Redis bytes/task",
            "submit tasks/s",
        ],
        [
            [
                f.system,
                f.setup,
                fmt(f.primary),
                ratio_text(report, f),
                _v(f, "first_fifth_per_s"),
                _v(f, "last_fifth_per_s"),
                _v(f, "flatness", 2),
                _v(f, "redis_bytes_per_task"),
                _v(f, "submit_tasks_per_s"),
            ]
            for f in by.get("backlog", [])
            if f.ok
        ],
    )
    section(
        "Fan-out",
        ["system", "setup", "tasks/s", "vs 2 pools", "runs (min..max)", "CPU µs/task"],
        [
            [f.system, f.setup, fmt(f.primary), _ratio_plain(report, f), _runs(f), _cpu_cells(f)]
            for f in by.get("fanout", [])
            if f.ok
        ],
    )
    section(
        "Mixed durations (makespan against its lower bound)",
        ["system", "setup", "makespan s", "lower bound s", "x lower bound", "vs BullMQ"],
        [
            [
                f.system,
                f.setup,
                _v(f, "makespan_s", 2),
                _v(f, "lower_bound_s", 2),
                _v(f, "x_lower_bound", 2),
                bullmq_text(report, f),
            ]
            for f in by.get("mixed", [])
            if f.ok
        ],
    )
    section(
        "Start-up of a new pool (spawn_pool returning -> first result)",
        ["system", "setup", "median ms", "slowest ms", "fastest ms", "spawn_pool s (median)"],
        [
            [
                f.system,
                f.setup,
                f"{f.values['first_result_s'] * 1000:,.0f}",
                f"{f.values['first_result_max_s'] * 1000:,.0f}",
                f"{f.values['first_result_min_s'] * 1000:,.0f}",
                _v(f, "spawn_pool_s", 2),
            ]
            for f in by.get("startup", [])
            if f.ok
        ],
    )
    section(
        "Memory",
        ["what", "MiB", "measured"],
        [[f.key, f"{f.primary:.1f}", f.setup] for f in by.get("memory", []) if f.ok],
    )
    bad = failed(report.figures)
    if bad:
        out += ["### Not measured", ""]
        out += [f"- `{f.key}` ({f.setup}): {f.status}: {f.reason}" for f in bad]
        out += [""]
    return out


def _ratio_plain(report: Report, fig: Figure) -> str:
    r = report.ratio(fig)
    return "" if r is None else f"{r:.2f}x"


QUIET_LOAD = 3.0
"""A 1-minute load average above this at the start or the end marks the figures as noisy."""

VERDICT = {True: "met", False: "**not met**", None: "not measured"}


def _load_warning(machine: dict[str, object]) -> list[str]:
    loads = [machine.get("load_start"), machine.get("load_end")]
    worst = max((float(x) for x in loads if isinstance(x, int | float)), default=0.0)
    if worst <= QUIET_LOAD:
        return []
    return [
        "",
        f"> **Noisy run:** the machine's load average reached {worst:.2f} (above "
        f"{QUIET_LOAD:g} on {machine.get('cores', '?')} cores) while it ran, so other work "
        "competed for the CPU; regenerate these figures on a quiet machine before relying "
        "on them.",
    ]


def _issue15_section(report: Report) -> list[str]:
    """The table of issue 15's targets: met / not met, by how much, and against what."""
    judged: list[Target] = report.targets15
    if not judged:
        return []
    out = ["", "## Targets (issue 15: overtake BullMQ)", ""]
    rows = [
        [
            t.name,
            "-" if t.measured is None else f"{t.measured:,.2f}",
            f"{t.op} {t.limit:g}",
            VERDICT[t.passed],
            t.margin,
            t.compared,
        ]
        for t in judged
    ]
    out += _md_table(["target", "measured", "limit", "result", "margin", "compared"], rows)
    met = sum(1 for t in judged if t.passed)
    missed = sum(1 for t in judged if t.passed is False)
    out += ["", f"{met} met, {missed} not met, {len(judged) - met - missed} not measured."]
    bounds = [t for t in judged if t.passed is False and t.bound]
    if bounds:
        out += ["", "Where the CPU of the missed targets goes (per task, by process):", ""]
        out += [f"- {t.name}: {t.bound}." for t in bounds]
    out += [
        "",
        "Throughput and CPU compare one worker process of ours with one BullMQ worker "
        "process at concurrency 10; `measured` is the ratio (or seconds for the first "
        "result). The issue's figures on a Redis Cluster come from a separate "
        "`python -m bench --cluster --systems ours` run.",
    ]
    return out


def render_markdown(report: Report) -> str:
    """The benchmark page (docs/benchmarks.md)."""
    meta, cfg = report.meta, report.config
    machine, versions = meta.get("machine", {}), meta.get("versions", {})
    out: list[str] = [
        "# Benchmarks",
        "",
        "<!-- Generated by the harness in bench/ (`python -m bench`); edit bench/ instead. -->",
        "",
        f"Generated by `{meta.get('command', 'python -m bench')}` on {meta.get('started_at', '?')} "
        f"in {meta.get('duration_s', 0) / 60:.1f} min. Every figure below comes from this one "
        "run, on the same Redis, and each is given as an absolute and as a ratio to the raw "
        "ceiling measured alongside it: absolute times on a shared 2-core machine drift, "
        "ratios much less.",
        "",
    ]
    out += _load_warning(machine)
    out += _issue15_section(report)
    out += ["", "## Targets (issue 5)", ""]
    rows = []
    for t in report.targets:
        measured = "-" if t.measured is None else f"{t.measured:,.2f}"
        rows.append(
            [t.name, measured, f"{t.op} {t.limit:g}", f"**{t.verdict}**", t.margin, t.compared]
        )
    out += _md_table(["target", "measured", "limit", "result", "margin", "compared"], rows)
    passed = sum(1 for t in report.targets if t.passed)
    failed = sum(1 for t in report.targets if t.passed is False)
    out += ["", f"{passed} passed, {failed} failed, {len(report.targets) - passed - failed} n/a."]
    bounds = [t for t in report.targets if t.passed is False and t.bound]
    if bounds:
        out += ["", "What bounds the failing figures (CPU time per task, by process):", ""]
        out += [f"- {t.name}: {t.bound}." for t in bounds]
    out += ["", "## Machine and versions", ""]
    out += _md_table(
        ["", ""],
        [
            ["CPU", f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores"],
            ["memory", f"{machine.get('memory_gib', 0):.1f} GiB"],
            ["system", str(machine.get("platform", "?"))],
            [
                "load average (1 min) at start / end",
                f"{machine.get('load_start', '?')} / {machine.get('load_end', '?')}",
            ],
            ["python", str(versions.get("python", "?"))],
            ["redis server", str(versions.get("redis_server", "?"))],
            ["redis-py (project)", str(versions.get("redis_py", "?"))],
            ["hiredis", str(versions.get("hiredis", "?"))],
            ["arq (its own venv)", str(versions.get("arq", "?"))],
            ["BullMQ (its own Node environment)", str(versions.get("bullmq", "?"))],
            ["mahavishnu-pools", str(versions.get("project", "?"))],
            ["Redis", str(meta.get("redis", "?"))],
        ],
    )
    out += ["", "## Figures", ""]
    out += _figure_sections(report)
    out += ["", "## Settings of this run", ""]
    out += _md_table(["setting", "value"], [[k, str(v)] for k, v in cfg.items()])
    out += ["", "## How each figure is measured", ""]
    out += [f"- {line}" for line in meta.get("method", [])]
    if FINDINGS.exists():
        out += ["", FINDINGS.read_text().strip()]
    return "\n".join(out) + "\n"


def write_markdown(report: Report, path: Path) -> None:
    """Write the benchmark page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_markdown(report))
