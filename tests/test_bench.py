"""The benchmark harness keeps working: a smoke run and its arithmetic (no speed assertions).

The smoke run is `python -m bench` at 2% of its size with one worker process, without arq and
without the big scenarios, on the private redis-server the harness starts itself; it must
produce every figure it was asked for, the targets, the JSON and the Markdown page.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.report import Report, Target, evaluate
from bench.stats import Figure, drain_values, percentile

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
            "throughput,latency",
            "--json",
            str(out_json),
            "--markdown",
            str(out_md),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert time.monotonic() - began < 60

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
    ):
        assert figures[key]["status"] == "ok", figures.get(key)
        assert figures[key]["primary"] > 0, figures[key]
    assert figures["throughput/direct/1"]["ratio"] > 0
    assert figures["throughput/direct/1"]["values"]["tasks"] == 400
    names = [t["name"] for t in data["targets"]]
    assert any(n.startswith("Throughput, direct >= 50%") for n in names)
    assert any(n.startswith("Latency p50, routed") for n in names)
    assert data["meta"]["versions"]["redis_server"] != "?"
    assert data["meta"]["machine"]["cores"] >= 1

    page = out_md.read_text()
    assert page.startswith("# Benchmarks")
    assert "## Targets (issue 5)" in page
    assert "throughput/raw/1" not in page or "tasks/s" in page
    assert "Figures (same Redis, same run)" in done.stdout


def test_percentile_interpolates() -> None:
    assert percentile([], 50) == 0.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(map(float, range(101))), 99) == pytest.approx(99.0)


def test_drain_values_flatness() -> None:
    # 100 tasks arriving one per 10 ms: flat, 100 tasks/s
    marks = [(i, i * 0.01) for i in range(1, 101)]
    values = drain_values(marks, 100)
    assert values["drain_tasks_per_s"] == pytest.approx(100.0)
    assert values["flatness"] == pytest.approx(1.0)


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
