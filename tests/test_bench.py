"""The benchmark harness keeps working: smoke runs and their arithmetic (no speed assertions).

The smoke run is `python -m bench` at 2% of its size with one worker process, without arq and
without the big scenarios, on the private redis-server the harness starts itself; it must
produce every figure it was asked for, the targets, the JSON and the Markdown page. A second
tiny run measures BullMQ (its Node environment made by the harness; skipped only when Node or
npm, or npm's registry, is unavailable, with the reason).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import mixed
from bench.bullmq_bench import BullmqUnavailable, ensure_bullmq_env
from bench.report import Report
from bench.stats import Figure, drain_values, percentile
from bench.targets import Target, evaluate

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.integration
def test_smoke_run_produces_figures_and_report(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    out_md = tmp_path / "benchmarks.md"
    began = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--scale",
            "0.02",
            "--repeat",
            "1",
            "--workers",
            "1",
            "--systems",
            "raw,ours",
            "--scenarios",
            "throughput,latency,mixed,startup",
            "--json",
            str(out_json),
            "--markdown",
            str(out_md),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert time.monotonic() - began < 120

    data = json.loads(out_json.read_text())
    figures = {f["key"]: f for f in data["figures"]}
    for key in (
        "throughput/raw/1",
        "throughput/direct/1",
        "throughput/routed/1",
        "latency/raw",
        "latency/direct",
        "latency/routed",
        "memory/worker",
        "memory/orchestrator",
        "mixed/direct",
        "startup/direct",
    ):
        assert figures[key]["status"] == "ok", figures.get(key)
        assert figures[key]["primary"] > 0, figures[key]
    assert figures["throughput/direct/1"]["ratio"] > 0
    assert figures["throughput/direct/1"]["values"]["tasks"] == 400
    names = [t["name"] for t in data["targets"]]
    assert any(n.startswith("Throughput, direct >= 50%") for n in names)
    assert any(n.startswith("Latency p50, routed") for n in names)
    mixed_values = figures["mixed/direct"]["values"]
    assert mixed_values["tasks"] == 40
    # 40 tasks of which 4 take 1 s on 8 slots: the bound is the longest task
    assert mixed_values["lower_bound_s"] == pytest.approx(1.0)
    assert mixed_values["makespan_s"] >= 1.0
    assert figures["startup/direct"]["values"]["spawns"] == 1
    issue15 = {t["name"]: t for t in data["targets_issue15"]}
    first = "A new local pool answers its first task within 0.5 s of spawn_pool returning"
    assert issue15[first]["measured"] is not None
    assert issue15["Mixed workload makespan <= 1.10x its lower bound"]["measured"] >= 1.0
    assert data["meta"]["versions"]["redis_server"] != "?"
    assert data["meta"]["machine"]["cores"] >= 1

    page = out_md.read_text()
    assert page.startswith("# Benchmarks")
    assert "## Targets (issue 5)" in page
    assert "## Targets (issue 15: overtake BullMQ)" in page
    assert "### Mixed durations" in page and "### Start-up of a new pool" in page
    assert "throughput/raw/1" not in page or "tasks/s" in page
    assert "Figures (same Redis, same run)" in done.stdout


@pytest.mark.unit
def test_percentile_interpolates() -> None:
    assert percentile([], 50) == 0.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(map(float, range(101))), 99) == pytest.approx(99.0)


@pytest.mark.unit
def test_drain_values_flatness() -> None:
    # 100 tasks arriving one per 10 ms: flat, 100 tasks/s
    marks = [(i, i * 0.01) for i in range(1, 101)]
    values = drain_values(marks, 100)
    assert values["drain_tasks_per_s"] == pytest.approx(100.0)
    assert values["flatness"] == pytest.approx(1.0)


@pytest.mark.unit
def test_targets_judge_ratios_and_limits() -> None:
    figures = [
        Figure("throughput/raw/1", "throughput", "raw", "", primary=10_000.0),
        Figure("throughput/direct/1", "throughput", "direct", "", primary=6_000.0),
        Figure("throughput/routed/1", "throughput", "routed", "", primary=3_000.0),
        Figure("latency/raw", "latency", "raw", "", primary=0.5),
        Figure(
            "latency/direct",
            "latency",
            "direct",
            "",
            primary=1.0,
            values={"p50_ms": 1.0, "p99_ms": 5.0},
        ),
    ]
    report = Report({}, {}, figures)
    targets = {t.name: t for t in evaluate(report)}
    direct = targets["Throughput, direct >= 50% of the raw ceiling (1 worker process)"]
    assert direct.passed is True and direct.measured == pytest.approx(0.6)
    routed = targets["Throughput, routed >= 35% of the raw ceiling (1 pool x 1 worker)"]
    assert routed.passed is False and "short" in routed.margin
    assert targets["Latency p50, direct <= 1.5x the raw round trip"].passed is False
    assert targets["Latency p99 <= 4x its p50 (direct)"].passed is False
    assert targets["Throughput, direct >= 5x arq defaults (1 worker process)"].passed is None
    assert Target("t", 500.0, 600.0, "<=", "bytes").margin == "17% under the limit"


@pytest.mark.integration
def test_bullmq_smoke_run(tmp_path: Path) -> None:
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"BullMQ needs {' and '.join(missing)}, not found on PATH")
    out_json = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--scale",
            "0.02",
            "--repeat",
            "1",
            "--workers",
            "1",
            "--systems",
            "bullmq",
            "--scenarios",
            "throughput,mixed",  # latency: see the note below
            "--json",
            str(out_json),
            "--no-markdown",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,  # the first run installs npm bullmq into .mahavishnu/bench-bullmq
    )
    data = json.loads(out_json.read_text())
    figures = {f["key"]: f for f in data["figures"]}
    unavailable = [f for f in figures.values() if f["status"] == "unavailable"]
    if unavailable and "npm install" in unavailable[0]["reason"]:
        pytest.skip(f"npm's registry is unavailable: {unavailable[0]['reason']}")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # BullMQ's latency run (`job.waitUntilFinished` per job) hung for its 60 s wait twice in
    # make test runs on two loaded workers and never alone: until that is understood it is
    # measured by `python -m bench` only, not in this smoke test
    for key in ("throughput/bullmq/1", "throughput/bullmq-c1/1", "mixed/bullmq"):
        assert figures[key]["status"] == "ok", figures.get(key)
        assert figures[key]["primary"] > 0, figures[key]
    throughput = figures["throughput/bullmq/1"]["values"]
    assert throughput["tasks"] == 400
    assert throughput["cpu_us_per_task.workers"] > 0
    assert throughput["cpu_us_per_task.redis"] > 0
    assert figures["mixed/bullmq"]["values"]["makespan_s"] >= 1.0
    assert data["meta"]["versions"]["bullmq"].startswith("6.")


@pytest.mark.unit
def test_mixed_plan_is_fixed_and_bounded() -> None:
    durations = mixed.plan(400)
    assert durations == mixed.plan(400)  # the same seed, the same order
    assert durations.count(mixed.LONG_S) == 40 and durations.count(mixed.SHORT_S) == 360
    assert durations != sorted(durations)
    # 360 x 20 ms + 40 x 1 s = 47.2 s of work over 8 slots
    assert mixed.lower_bound(durations, 8) == pytest.approx(5.9)
    assert mixed.lower_bound([0.02, 3.0], 8) == pytest.approx(3.0)


@pytest.mark.unit
def test_issue15_targets_compare_with_bullmq() -> None:
    cpu = {"cpu_us_per_task.client": 60.0, "cpu_us_per_task.workers": 70.0}
    figures = [
        Figure("throughput/raw/1", "throughput", "raw", "", primary=50_000.0),
        Figure(
            "throughput/bullmq/1",
            "throughput",
            "bullmq",
            "",
            primary=16_000.0,
            values={**cpu, "cpu_us_per_task.redis": 40.0},
        ),
        Figure(
            "throughput/direct/1",
            "throughput",
            "direct",
            "",
            primary=21_000.0,
            values={**cpu, "cpu_us_per_task.redis": 30.0, "cpu_us_per_task.orchestrator": 1.0},
        ),
        Figure(
            "mixed/direct",
            "mixed",
            "direct",
            "",
            primary=6.2,
            values={"makespan_s": 6.2, "lower_bound_s": 5.9, "x_lower_bound": 6.2 / 5.9},
        ),
        Figure("mixed/bullmq", "mixed", "bullmq", "", primary=6.8),
    ]
    report = Report({}, {}, figures)
    report.judge()
    targets = {t.name: t for t in report.targets15}
    direct = targets["Throughput, direct, 1 worker process >= 1.25x BullMQ at concurrency 10"]
    assert direct.passed is True and direct.measured == pytest.approx(21 / 16)
    assert targets["Throughput, direct, 1 worker process >= 0.4x the raw ceiling"].passed is True
    assert (
        targets["Throughput, routed, 1 worker process >= 1x BullMQ at concurrency 10"].passed
        is None
    )
    cpu_target = targets[
        "CPU per task, all our processes (direct) <= BullMQ worker + Redis per job"
    ]
    # ours: 60 + 70 + 30 + 1 = 161 µs against BullMQ's worker + Redis: 70 + 40 = 110 µs
    assert cpu_target.passed is False and cpu_target.measured == pytest.approx(161 / 110)
    assert targets["Mixed workload makespan <= 1.10x its lower bound"].passed is True
    assert targets["Mixed workload makespan <= BullMQ's"].passed is True
    first = "A new local pool answers its first task within 0.5 s of spawn_pool returning"
    assert targets[first].passed is None and targets[first].margin == "not measured in this run"


@pytest.mark.unit
def test_bullmq_without_node_is_unavailable_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(BullmqUnavailable, match="node and npm not found on PATH"):
        ensure_bullmq_env(tmp_path / "env")
    assert not (tmp_path / "env").exists()
