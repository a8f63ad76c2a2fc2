"""The NNCF peers in the study: skipped with a note when the extra is missing, refused when asked for."""

from __future__ import annotations

import pytest

from qtool.errors import QtoolError
from qtool.quantization.nncf_quantizers import NNCF_PEERS
from qtool.report.markdown import peer_lines
from qtool.stages import study
from qtool.stages.study import ReproduceConfig


def test_without_nncf_a_full_study_skips_its_peers_with_a_note(monkeypatch):
    monkeypatch.setattr(study, "nncf_missing", lambda: "NNCF is not installed (pip install 'qtool[peers]')")
    full = ReproduceConfig()
    assert not set(NNCF_PEERS) & set(full.selected()) and "ort-dynamic" in full.selected()
    assert set(full.skipped()) == set(NNCF_PEERS)
    lines = peer_lines({"results": [], "skipped": full.skipped()})
    assert any("`nncf-ptq` did not run: NNCF is not installed (pip install 'qtool[peers]')" in line for line in lines)
    with pytest.raises(QtoolError, match=r"nncf-ptq cannot run: .*qtool\[peers\]"):
        ReproduceConfig(configurations=("fp32", "nncf-ptq")).selected()
    assert ReproduceConfig(configurations=("fp32", "max-all")).skipped() == {}


def test_with_nncf_every_peer_is_in_a_full_study(monkeypatch):
    monkeypatch.setattr(study, "nncf_missing", lambda: None)
    assert set(NNCF_PEERS) <= set(ReproduceConfig().selected()) and ReproduceConfig().skipped() == {}
