"""The Grafana dashboard queries only metrics this project exports (shared/metrics/definitions.py;
tests/test_metrics.py checks those are what /metrics serves)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.metrics import definitions

pytestmark = pytest.mark.unit

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "mahavishnu.json"
METRIC_NAME = re.compile(r"\bmahavishnu_[a-z0-9_]+")


def exported_series() -> set[str]:
    return {name for metric in definitions.ALL for name in metric.series_names}


def panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in doc.get("panels", []):
        yield panel
        yield from panels(panel)  # a collapsed row holds its panels


def test_every_panel_query_names_an_exported_metric() -> None:
    doc = json.loads(DASHBOARD.read_text())
    exported = exported_series()
    queried: set[str] = set()
    graphs = [p for p in panels(doc) if p["type"] != "row"]
    assert graphs
    for panel in graphs:
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            names = set(METRIC_NAME.findall(target["expr"]))
            assert names, f"panel {panel['title']!r}: {target['expr']!r} names no metric"
            unknown = names - exported
            assert not unknown, f"panel {panel['title']!r} queries unexported {sorted(unknown)}"
            queried |= names
    for variable in doc["templating"]["list"]:
        assert set(METRIC_NAME.findall(json.dumps(variable))) <= exported
    # and every family is on the dashboard somewhere
    unshown = {m.name for m in definitions.ALL if not set(m.series_names) & queried}
    assert not unshown, f"metrics no panel shows: {sorted(unshown)}"


def test_panel_ids_are_unique() -> None:
    ids = [p["id"] for p in panels(json.loads(DASHBOARD.read_text()))]
    assert len(ids) == len(set(ids))
