"""The two TensorState tutorials run unchanged but for the import (offline data)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("module", "needs", "conv_3_states"),
    [("examples.pytorch_tutorial", "torch", 360), ("examples.keras_tutorial", "tensorflow", 1437)],
)
def test_tutorial_runs_and_prints_tensorstate_s_report(module, needs, conv_3_states):
    pytest.importorskip(needs)
    r = subprocess.run(
        [sys.executable, "-m", module], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"Layer conv_3_post_states number of states: {conv_3_states}" in r.stdout
    assert f"Layer conv_1_post_states number of states: {conv_3_states * 576}" in r.stdout
    aiq = float(re.search(r"aIQ: ([\d.]+)%", r.stdout).group(1))
    assert 0 < aiq < 100
