"""The output of a run: the targets of issue 5 judged, a terminal table, JSON and Markdown."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.config import ROOT
from bench.stats import Figure

FINDINGS = ROOT / "bench" / "findings.md"
"""Hand-written profiling findings, included verbatim at the end of the Markdown page."""


@dataclass
class Target:
    """One target of the issue, judged against this run's figures."""

    name: str
    measured: float | None
    limit: float
    op: str  # ">=" or "<="
    unit: str
    compared: str = ""
    bound: str = ""

    @property
    def passed(self) -> bool | None:
        """True / False, or None when a figure it needs was not measured."""
        if self.measured is None:
            return None
        return self.measured >= self.limit if self.op == ">=" else self.measured <= self.limit

    @property
    def verdict(self) -> str:
        """PASS, FAIL or n/a."""
        return {True: "PASS", False: "FAIL", None: "n/a"}[self.passed]

    @property
    def margin(self) -> str:
        """By how much it passes or fails."""
        m = self.measured
        if m is None:
            return "not measured in this run"
        if self.op == ">=":
            if m <= 0:
                return "nothing measured"
            factor = m / self.limit
            if factor >= 1:
                return f"{(factor - 1) * 100:.0f}% above the floor"
            return f"{(1 - factor) * 100:.0f}% short (needs {1 / factor:.2f}x)"
        if m <= 0:
            return "below the limit"
        factor = m / self.limit
        if factor <= 1:
            return f"{(1 - factor) * 100:.0f}% under the limit"
        return f"{(factor - 1) * 100:.0f}% over (needs {factor:.2f}x less)"

    def as_json(self) -> dict[str, Any]:
        """The target as a JSON-ready dict."""
        return {
            "name": self.name,
            "measured": self.measured,
            "limit": self.limit,
            "op": self.op,
            "unit": self.unit,
            "passed": self.passed,
            "margin": self.margin,
            "compared": self.compared,
            "bound": self.bound,
        }


@dataclass
class Report:
    """Everything one run produced."""

    meta: dict[str, Any]
    config: dict[str, Any]
    figures: list[Figure]
    targets: list[Target] = field(default_factory=list)

    def get(self, key: str) -> Figure | None:
        """The measured figure with this key, or None."""
        for fig in self.figures:
            if fig.key == key and fig.ok:
                return fig
        return None

    def ratio(self, fig: Figure) -> float | None:
        """The figure's primary value over its baseline's, when both were measured."""
        if fig.baseline is None or not fig.ok:
            return None
        base = self.get(fig.baseline)
        if base is None or base.primary == 0:
            return None
        return fig.primary / base.primary

    def as_json(self) -> dict[str, Any]:
        """The whole report as a JSON-ready dict."""
        return {
            "meta": self.meta,
            "config": self.config,
            "figures": [dict(f.as_json(), ratio=self.ratio(f)) for f in self.figures],
            "targets": [t.as_json() for t in self.targets],
        }


# ------------------------------------------------------------------------------- targets


def cpu_breakdown(fig: Figure | None) -> str:
    """`workers 320 µs (63% of a core), client 128 µs, ...` from a figure's CPU values."""
    if fig is None:
        return ""
    parts = []
    for key, value in sorted(
        ((k, v) for k, v in fig.values.items() if k.startswith("cpu_us_per_task.")),
        key=lambda kv: -kv[1],
    ):
        name = key.split(".", 1)[1]
        share = fig.values.get(f"core_share.{name}", 0.0)
        parts.append(f"{name} {value:,.0f} µs ({share * 100:.0f}% of a core)")
    return ", ".join(parts)


def _bound(fig: Figure | None, raw: Figure | None, cores: int | None = None) -> str:
    ours = cpu_breakdown(fig)
    if fig is None or not ours:
        return ""
    text = f"CPU per task: {ours}"
    ceiling = cpu_breakdown(raw)
    if ceiling:
        text = f"{text}; raw: {ceiling}"
    spent = {
        k.split(".", 1)[1]: v for k, v in fig.values.items() if k.startswith("cpu_us_per_task.")
    }
    total, redis = sum(spent.values()), spent.get("redis", 0.0)
    if raw is not None and raw.primary and total and redis and cores:
        # a throughput no process mix can pass: every task costs this CPU on `cores` cores,
        # and Redis runs on one of them
        whole = cores * 1e6 / total
        alone = 1e6 / redis
        text += (
            f"; at these costs {cores} cores cannot pass {whole:,.0f} tasks/s "
            f"({whole / raw.primary:.2f}x raw) and Redis alone, with free clients and "
            f"workers, {alone:,.0f} tasks/s ({alone / raw.primary:.2f}x raw)"
        )
    return text


def evaluate(report: Report) -> list[Target]:
    """Judge each target of the issue that this run has the figures for."""
    get = report.get
    targets: list[Target] = []
    cores = report.meta.get("machine", {}).get("cores")

    def ratio_target(
        name: str, key: str, base_key: str, limit: float, op: str, what: str = "tasks/s"
    ) -> None:
        fig, base = get(key), get(base_key)
        if fig is None and base is None:
            return
        measured = fig.primary / base.primary if fig and base and base.primary else None
        compared = ""
        if fig and base:
            compared = f"{fig.primary:,.1f} vs {base.primary:,.1f} {what}"
        raw = get(base_key) if base_key.split("/")[1] == "raw" else None
        bound = _bound(fig, raw, cores if what == "tasks/s" else None)
        targets.append(Target(name, measured, limit, op, "ratio", compared, bound))

    workers = sorted(
        {int(f.key.rsplit("/", 1)[1]) for f in report.figures if f.key.startswith("throughput/")}
    )
    for w in workers:
        procs = f"{w} worker process{'es' if w > 1 else ''}"
        plural = "s" if w > 1 else ""
        ratio_target(
            f"Throughput, direct >= 50% of the raw ceiling ({procs})",
            f"throughput/direct/{w}",
            f"throughput/raw/{w}",
            0.5,
            ">=",
        )
        ratio_target(
            f"Throughput, direct >= 5x arq defaults ({procs})",
            f"throughput/direct/{w}",
            f"throughput/arq/{w}",
            5.0,
            ">=",
        )
        ratio_target(
            f"Throughput, routed >= 35% of the raw ceiling ({w} pool{plural} x 1 worker)",
            f"throughput/routed/{w}",
            f"throughput/raw/{w}",
            0.35,
            ">=",
        )
    ratio_target(
        "Latency p50, direct <= 1.5x the raw round trip",
        "latency/direct",
        "latency/raw",
        1.5,
        "<=",
        "ms",
    )
    ratio_target(
        "Latency p50, routed <= 2.5x the raw round trip",
        "latency/routed",
        "latency/raw",
        2.5,
        "<=",
        "ms",
    )
    for system in ("direct", "routed"):
        fig = get(f"latency/{system}")
        if fig is not None:
            p50, p99 = fig.values["p50_ms"], fig.values["p99_ms"]
            targets.append(
                Target(
                    f"Latency p99 <= 4x its p50 ({system})",
                    p99 / p50 if p50 else None,
                    4.0,
                    "<=",
                    "ratio",
                    f"p99 {p99:.2f} ms vs p50 {p50:.2f} ms",
                )
            )
    backlog = get("backlog/direct")
    empty = get("throughput/direct/1")
    if backlog is not None or empty is not None:
        measured = backlog.primary / empty.primary if backlog and empty else None
        compared = ""
        if backlog and empty:
            compared = (
                f"drain {backlog.primary:,.0f} tasks/s of {backlog.values['tasks']:,.0f} queued "
                f"vs {empty.primary:,.0f} tasks/s on an empty queue (1 worker)"
            )
            if "flatness" in backlog.values:
                compared += (
                    f"; last fifth of the backlog {backlog.values['last_fifth_per_s']:,.0f} vs "
                    f"first fifth {backlog.values['first_fifth_per_s']:,.0f} tasks/s"
                )
        targets.append(
            Target(
                "Backlog: throughput within 15% of the empty-queue figure",
                measured,
                0.85,
                ">=",
                "ratio",
                compared,
                _bound(backlog, None),
            )
        )
    if backlog is not None:
        per_task = backlog.values["redis_bytes_per_task"]
        raw_backlog = get("backlog/raw")
        compared = f"INFO used_memory delta / {backlog.values['tasks']:,.0f} queued tasks"
        if raw_backlog is not None:
            raw_bytes = raw_backlog.values["redis_bytes_per_task"]
            compared += f" (raw stream entry: {raw_bytes:.0f} bytes)"
        targets.append(
            Target(
                "Redis memory per queued small task <= 600 bytes",
                per_task,
                600.0,
                "<=",
                "bytes",
                compared,
            )
        )
    fanout = [f for f in report.figures if f.scenario == "fanout" and f.ok]
    for fig in fanout:
        base = get(fig.baseline or "")
        targets.append(
            Target(
                f"{fig.values.get('pools', 0):.0f} pools: routed throughput within 20% of 2 pools",
                fig.primary / base.primary if base and base.primary else None,
                0.8,
                ">=",
                "ratio",
                f"{fig.primary:,.0f} vs {base.primary:,.0f} tasks/s" if base else "",
                _bound(fig, base),
            )
        )
    for name, key, limit in (
        ("Worker RSS <= 80 MB (throughput scenario)", "memory/worker", 80.0),
        ("Orchestrator RSS <= 100 MB (throughput scenario)", "memory/orchestrator", 100.0),
    ):
        fig = get(key)
        if fig is not None:
            targets.append(Target(name, fig.primary, limit, "<=", "MiB", fig.setup))
    return targets


def memory_figures(figures: Sequence[Figure]) -> list[Figure]:
    """Peak RSS of workers and orchestrator over the throughput figures of the pools."""
    ours = [f for f in figures if f.scenario == "throughput" and f.ok and f.system != "raw"]
    ours = [f for f in ours if f.system in ("direct", "routed")]
    out: list[Figure] = []
    for part, label in (("worker", "worker process"), ("orchestrator", "orchestrator process")):
        values = [(f.values.get(f"rss_peak_mb.{part}", 0.0), f.key) for f in ours]
        values = [v for v in values if v[0] > 0]
        if values:
            peak, where = max(values)
            out.append(
                Figure(
                    key=f"memory/{part}",
                    scenario="memory",
                    system="ours",
                    setup=f"peak RSS (VmHWM) of the largest {label}, during {where}",
                    primary=peak,
                    unit="MiB",
                    values={"rss_peak_mb": peak},
                )
            )
    return out


# ------------------------------------------------------------------------------ rendering


def _fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def result_text(fig: Figure) -> str:
    """The figure's main values in one short line."""
    if not fig.ok:
        return f"{fig.status}: {fig.reason}"
    v = fig.values
    if fig.unit == "tasks/s":
        spread = ""
        if v.get("repeats", 1) > 1:
            spread = f" (runs {_fmt(v['min_tasks_per_s'])}..{_fmt(v['max_tasks_per_s'])})"
        return f"{_fmt(fig.primary)} tasks/s{spread}"
    if fig.unit == "ms p50":
        return f"p50 {v['p50_ms']:.2f} ms, p99 {v['p99_ms']:.2f} ms (n={v['round_trips']:.0f})"
    if fig.unit == "round trips/s":
        return (
            f"{_fmt(fig.primary)} round trips/s, p50 {v['p50_ms']:.1f} ms, p99 {v['p99_ms']:.1f} ms"
        )
    if fig.unit == "tasks/s drain":
        flat = f", flatness {v['flatness']:.2f}" if "flatness" in v else ""
        return (
            f"{_fmt(fig.primary)} tasks/s drain{flat}, "
            f"{v['redis_bytes_per_task']:.0f} B/task in Redis"
        )
    return f"{fig.primary:,.1f} {fig.unit}"


def ratio_text(report: Report, fig: Figure) -> str:
    """The figure over its baseline, e.g. `0.24x raw`."""
    r = report.ratio(fig)
    if r is None or fig.baseline is None:
        return ""
    base = fig.baseline.split("/")[1]
    return f"{r:.2f}x {base}"


def print_report(report: Report, console: Console | None = None) -> None:
    """The figures and the targets as two tables on the terminal."""
    console = console or Console()
    table = Table(title="Figures (same Redis, same run)", show_lines=False)
    for col in ("scenario", "system", "setup", "result", "vs"):
        table.add_column(col, overflow="fold")
    for fig in report.figures:
        row = (fig.scenario, fig.system, fig.setup, result_text(fig), ratio_text(report, fig))
        table.add_row(*row)
    console.print(table)
    if report.targets:
        targets = Table(title="Targets (issue 5)")
        for col in ("target", "measured", "limit", "result", "margin"):
            targets.add_column(col, overflow="fold")
        for t in report.targets:
            measured = "-" if t.measured is None else f"{t.measured:,.2f}"
            style = {True: "green", False: "red", None: "yellow"}[t.passed]
            targets.add_row(
                t.name,
                measured,
                f"{t.op} {t.limit:g}",
                f"[{style}]{t.verdict}[/{style}]",
                t.margin,
            )
        console.print(targets)


def load_json(path: Path) -> Report:
    """A report read back from its JSON (targets judged again), e.g. to re-render the page."""
    data = json.loads(path.read_text())
    figures = [
        Figure(
            key=f["key"],
            scenario=f["scenario"],
            system=f["system"],
            setup=f["setup"],
            primary=float(f["primary"]),
            unit=f["unit"],
            values={k: float(v) for k, v in f["values"].items()},
            baseline=f.get("baseline"),
            status=f.get("status", "ok"),
            reason=f.get("reason", ""),
            notes=list(f.get("notes", [])),
        )
        for f in data["figures"]
    ]
    report = Report(data["meta"], data["config"], figures)
    report.targets = evaluate(report)
    return report


def write_json(report: Report, path: Path) -> None:
    """Write the report as JSON (the folder is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.as_json(), indent=2, sort_keys=False) + "\n")


# ------------------------------------------------------------------------------- Markdown


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
    return f"{fig.values['repeats']:.0f} ({_fmt(low)}..{_fmt(high)})"


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
        ["system", "setup", "tasks/s", "vs raw", "runs (min..max)", "CPU µs/task", "peak RSS MiB"],
        [
            [
                f.system,
                f.setup,
                _fmt(f.primary),
                ratio_text(report, f),
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
        ["system", "setup", "p50 ms", "p90 ms", "p99 ms", "max ms", "p50 vs raw", "n"],
        [
            [
                f.system,
                f.setup,
                _v(f, "p50_ms", 2),
                _v(f, "p90_ms", 2),
                _v(f, "p99_ms", 2),
                _v(f, "max_ms", 2),
                ratio_text(report, f),
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
                _fmt(f.primary),
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
                _fmt(f.primary),
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
            [f.system, f.setup, _fmt(f.primary), _ratio_plain(report, f), _runs(f), _cpu_cells(f)]
            for f in by.get("fanout", [])
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
        "## Targets (issue 5)",
        "",
    ]
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
