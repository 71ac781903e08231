"""``make run``'s own files: each install keeps its metrics under its DATA_DIR."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.devserver import ROOT, _metrics_dir


def test_two_installs_of_one_checkout_keep_their_metrics_apart(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The directory is emptied when an install starts: shared, one install's start wiped
    the other's /metrics, and the two added up each other's processes."""
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "one"))
    one = _metrics_dir()
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "two"))
    two = _metrics_dir()
    assert (one, two) == (tmp_path / "one" / "prometheus", tmp_path / "two" / "prometheus")
    assert not one.is_relative_to(ROOT) and not two.is_relative_to(ROOT)


def test_without_data_dir_the_metrics_stay_where_the_database_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DATA_DIR", raising=False)
    assert _metrics_dir() == ROOT / "var" / "prometheus"
    # A relative DATA_DIR is read from the checkout, where the children run.
    monkeypatch.setenv("DATA_DIR", "install-b")
    assert _metrics_dir() == ROOT / "install-b" / "prometheus"
