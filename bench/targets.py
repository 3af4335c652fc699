"""The targets of issue 5 (the first performance pass), judged against a run's figures.

`Target` is one target with its verdict and margin; `evaluate` judges issue 5's targets (the
raw-ceiling ratios, latency, backlog, memory, fan-out). The targets of issue 15 (against
BullMQ) are in `bench/targets15.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bench.stats import Figure

if TYPE_CHECKING:
    from bench.report import Report


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


def bound_text(fig: Figure | None, raw: Figure | None, cores: int | None = None) -> str:
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
        bound = bound_text(fig, raw, cores if what == "tasks/s" else None)
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
                bound_text(backlog, None),
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
                bound_text(fig, base),
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
