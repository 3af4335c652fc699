"""The generated references match the code: regenerate with `make docs` when this fails."""

from __future__ import annotations

import pytest

from shared import reference

pytestmark = pytest.mark.unit


def test_every_setting_is_described() -> None:
    assert reference.undescribed() == [], "add a line to shared/settings_help.py"


@pytest.mark.parametrize("rel", sorted(reference.REFERENCES))
def test_generated_reference_is_current(rel: str) -> None:
    path = reference.ROOT / rel
    assert path.read_text(encoding="utf-8") == reference.REFERENCES[rel](), (
        f"{rel} is stale: run `make docs` (python -m shared.reference)"
    )


def test_every_setting_and_metric_is_in_its_reference() -> None:
    from shared.config import Settings
    from shared.metrics import definitions

    configuration = reference.configuration_md()
    for name in Settings.model_fields:
        assert f"| `{name}` | `MAHAVISHNU_{name.upper()}` |" in configuration
    metrics = reference.metrics_md()
    for metric in definitions.ALL:
        assert f"| `{metric.name}` |" in metrics


def test_check_mode_reports_a_stale_file(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    root = Path(str(tmp_path))
    (root / "docs").mkdir()
    for rel, make in reference.REFERENCES.items():
        (root / rel).write_text(make(), encoding="utf-8")
    assert reference.stale(root) == []
    (root / "docs" / "configuration.md").write_text("old\n", encoding="utf-8")
    assert reference.stale(root) == ["docs/configuration.md"]
