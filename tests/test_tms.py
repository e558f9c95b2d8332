"""examples/tms.py (--quick), run in a subprocess (the example turns on float64 globally): the
k-gon critical points of the toy model of superposition are built exactly, their losses are
the published ones, they are critical, the Hessian ranks are 14/17/17 (λ = 7, 8.5, 8.5), the
LLC estimates land near r/2, and the training run, trajectory, stages and figures are written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tms.py"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tms")
    env = {**os.environ, "PYTHONPATH": str(EXAMPLE.parents[1])}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_kgons_are_the_published_critical_points(run):
    table = pd.read_csv(run / "kgons.csv").set_index("critical_point")
    # the published losses are given to 5 digits (Chen et al. 2023): agree to 1e-5
    for name in ("4-gon", "5-gon", "6-gon"):
        row = table.loc[name]
        assert abs(row.loss - row.published_loss) < 1e-5, name
    # critical: the optimiser over (ℓ, β) stops at |∇L| ~ 1e-9; a non-critical point of this
    # family would have |∇L| of the order of the loss differences (1e-2)
    assert (table.grad_norm < 1e-6).all(), table.grad_norm
    assert table.loc["5-gon", "hessian_rank"] == 14
    assert table.loc["6-gon", "hessian_rank"] == 17
    assert table.loc["5-gon+", "hessian_rank"] == 17
    np.testing.assert_array_equal(table.loc[["5-gon", "6-gon"], "theory_llc"], [7.0, 8.5])
    # the 4-gon++ is a saddle (a negative Hessian eigenvalue): no theory value
    assert table.loc["4-gon++", "min_eigenvalue"] < -1e-3
    assert np.isnan(table.loc["4-gon++", "theory_llc"])


def test_quick_llc_estimates_near_half_the_rank(run):
    """Quick settings (n = 20 000, 4 chains × 1000 draws) measured 12–16% below r/2 (the
    full run: see docs/devinterp.md); allow 25% plus 4 standard errors: a wrong rank (±0.5 in
    λ ≈ 6%) is not caught here, a wrong model or estimator (λ̂ off by a factor) is."""
    table = pd.read_csv(run / "kgons.csv").dropna(subset=["theory_llc"])
    error = np.abs(table.llc - table.theory_llc)
    assert (error <= 0.25 * table.theory_llc + 4 * table.llc_se).all(), table


def test_training_trajectory_stages_and_figures(run):
    for name in ("trajectory.csv", "stages.csv", "plateaus.csv", "tms_llc.png",
                 "tms_llc_full.png", "tms_stages.png", "summary.json"):  # fmt: skip
        assert (run / name).stat().st_size > 0, name
    summary = json.loads((run / "summary.json").read_text())
    plateaus = pd.read_csv(run / "plateaus.csv").set_index("at")
    # SGD from a small init ends on the 5-gon+ plateau (loss 0.0618)
    assert "5-gon+" in plateaus.index
    assert plateaus.loc["5-gon+", "checkpoints"] >= 5
    assert summary["stage_kinds"][-1] == "flat"
