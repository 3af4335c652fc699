"""The output of a run: the report, its terminal tables and its JSON.

The targets are judged in `bench/targets.py` (issue 5) and `bench/targets15.py` (issue 15);
the Markdown page is rendered by `bench/page.py`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.stats import Figure
from bench.targets import Target, evaluate
from bench.targets15 import evaluate_issue15


@dataclass
class Report:
    """Everything one run produced."""

    meta: dict[str, Any]
    config: dict[str, Any]
    figures: list[Figure]
    targets: list[Target] = field(default_factory=list)
    targets15: list[Target] = field(default_factory=list)

    def judge(self) -> None:
        """Judge the targets of issue 5, then those of issue 15 (which repeat some of 5's)."""
        self.targets = evaluate(self)
        self.targets15 = evaluate_issue15(self)

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

    def ratio_to(self, fig: Figure, key: str) -> float | None:
        """The figure's primary value over the figure `key`'s, when both were measured."""
        other = self.get(key)
        if not fig.ok or other is None or other.primary == 0 or other.key == fig.key:
            return None
        return fig.primary / other.primary

    def as_json(self) -> dict[str, Any]:
        """The whole report as a JSON-ready dict."""
        return {
            "meta": self.meta,
            "config": self.config,
            "figures": [dict(f.as_json(), ratio=self.ratio(f)) for f in self.figures],
            "targets": [t.as_json() for t in self.targets],
            "targets_issue15": [t.as_json() for t in self.targets15],
        }


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


def fmt(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def result_text(fig: Figure) -> str:
    """The figure's main values in one short line."""
    if not fig.ok:
        return f"{fig.status}: {fig.reason}"
    v = fig.values
    if fig.unit == "tasks/s":
        spread = ""
        if v.get("repeats", 1) > 1:
            spread = f" (runs {fmt(v['min_tasks_per_s'])}..{fmt(v['max_tasks_per_s'])})"
        return f"{fmt(fig.primary)} tasks/s{spread}"
    if fig.unit == "ms p50":
        return f"p50 {v['p50_ms']:.2f} ms, p99 {v['p99_ms']:.2f} ms (n={v['round_trips']:.0f})"
    if fig.unit == "round trips/s":
        return (
            f"{fmt(fig.primary)} round trips/s, p50 {v['p50_ms']:.1f} ms, p99 {v['p99_ms']:.1f} ms"
        )
    if fig.unit == "s makespan":
        return (
            f"makespan {v['makespan_s']:.2f} s, {v['x_lower_bound']:.2f}x its lower bound "
            f"{v['lower_bound_s']:.2f} s ({v['tasks']:.0f} tasks)"
        )
    if fig.unit == "s to first result":
        return (
            f"first result {v['first_result_s'] * 1000:.0f} ms after spawn_pool returned "
            f"(slowest {v['first_result_max_s'] * 1000:.0f} ms; spawn_pool "
            f"{v['spawn_pool_s']:.2f} s)"
        )
    if fig.unit == "tasks/s drain":
        flat = f", flatness {v['flatness']:.2f}" if "flatness" in v else ""
        return (
            f"{fmt(fig.primary)} tasks/s drain{flat}, "
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


BULLMQ_FIGURE = {
    "throughput": "throughput/bullmq/{n}",
    "latency": "latency/bullmq",
    "mixed": "mixed/bullmq",
}
"""BullMQ's figure (concurrency 10, or the mixed run) each of ours is compared with."""


def bullmq_text(report: Report, fig: Figure) -> str:
    """The figure over BullMQ's of the same shape, e.g. `0.61x BullMQ`; '' for BullMQ itself."""
    pattern = BULLMQ_FIGURE.get(fig.scenario)
    if pattern is None or fig.system.startswith("bullmq"):
        return ""
    r = report.ratio_to(fig, pattern.format(n=fig.key.rsplit("/", 1)[-1]))
    return "" if r is None else f"{r:.2f}x BullMQ"


def print_report(report: Report, console: Console | None = None) -> None:
    """The figures and the targets as two tables on the terminal."""
    console = console or Console()
    table = Table(title="Figures (same Redis, same run)", show_lines=False)
    for col in ("scenario", "system", "setup", "result", "vs"):
        table.add_column(col, overflow="fold")
    for fig in report.figures:
        versus = ", ".join(t for t in (ratio_text(report, fig), bullmq_text(report, fig)) if t)
        row = (fig.scenario, fig.system, fig.setup, result_text(fig), versus)
        table.add_row(*row)
    console.print(table)
    for title, judged in (
        ("Targets (issue 5)", report.targets),
        ("Targets (issue 15: overtake BullMQ)", report.targets15),
    ):
        if not judged:
            continue
        targets = Table(title=title)
        for col in ("target", "measured", "limit", "result", "margin"):
            targets.add_column(col, overflow="fold")
        for t in judged:
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
    report.judge()
    return report


def write_json(report: Report, path: Path) -> None:
    """Write the report as JSON (the folder is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.as_json(), indent=2, sort_keys=False) + "\n")
