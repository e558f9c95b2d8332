"""Calibration: curvature, the grid in one program, the ε → 0 fit, the recommendation rule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import HESSIAN, dummy_data, quadratic_loss, quadratic_params

import jaxslt
from jaxslt import calibration as cal_module

KW = dict(localizations=(1.0, 10.0), num_chains=4, batch_size=64)


@pytest.fixture(scope="module")
def calibration():
    return jaxslt.calibrate(
        quadratic_loss, quadratic_params(), dummy_data(), key=jax.random.key(0), **KW
    )


def test_power_iteration_finds_the_largest_hessian_eigenvalue():
    h = cal_module.max_hessian_eigenvalue(
        quadratic_loss, quadratic_params(), dummy_data(), key=jax.random.key(1)
    )
    assert float(h) == pytest.approx(HESSIAN.max(), rel=1e-4)


def test_power_iteration_on_a_vanishing_hessian_returns_zero():
    def quartic(params, batch):
        del batch
        return jnp.sum(params["w"] ** 4)

    h = cal_module.max_hessian_eigenvalue(
        quartic, {"w": jnp.zeros(3)}, dummy_data(), key=jax.random.key(1)
    )
    assert float(h) == 0.0


def test_weighted_extrapolation_recovers_a_line():
    eps = np.array([1e-4, 3e-4, 1e-3])
    lam0, se0 = cal_module._extrapolate(eps, 2.0 + 300.0 * eps, np.array([0.1, 0.1, 0.2]))
    assert lam0 == pytest.approx(2.0, rel=1e-9) and se0 > 0


def test_grid_table_and_recommendation_follow_the_rule(calibration):
    table = calibration.table
    assert len(table) == 12  # six default steps × two localizations
    assert {"step_size", "localization", "nbeta", "llc_mean", "llc_std", "mala_accept", "rhat",
            "diverged", "ok", "selected", "margin"} <= set(table.columns)  # fmt: skip
    # default steps: the pilot's healthy step times the fixed ratios of PILOT_GRID
    steps = np.sort(table.step_size.unique())
    np.testing.assert_allclose(steps / steps[0], cal_module.PILOT_GRID / 0.1, rtol=1e-5)
    assert "pilot at ε" in calibration.explanation
    # every healthy cell passes the final run's step check with room: bias ≤ 5% of λ̂
    ok = table[table.ok]
    assert (ok.bias_bound <= 0.05 * ok.llc_mean.abs()).all()
    # and its burn-in (1000) covers 3 relaxation times 1/(εγ) of the flat directions
    assert (ok.step_size * ok.localization * 1000 >= cal_module.MIN_RELAXATIONS).all()
    short = table[table.step_size * table.localization * 1000 < cal_module.MIN_RELAXATIONS]
    assert len(short) and not short.ok.any()
    rec = calibration.recommended
    assert table.selected.sum() == 1
    row = table[table.selected].iloc[0]
    assert row.ok and row.margin <= cal_module.MAX_MARGIN and row.diverged == 0
    assert rec["step_size"] == pytest.approx(row.step_size)
    assert rec["localization"] == row.localization
    assert rec["num_burnin"] >= 5 / (rec["step_size"] * rec["localization"])
    assert "Chosen" in calibration.explanation


def test_the_grid_compiles_once(calibration):
    before = cal_module._run_grid._cache_size()
    jaxslt.calibrate(quadratic_loss, quadratic_params(), dummy_data(), key=jax.random.key(5), **KW)
    assert cal_module._run_grid._cache_size() == before


def test_step_size_auto_uses_and_reports_the_calibration():
    result = jaxslt.estimate_llc(
        quadratic_loss, quadratic_params(), dummy_data(), key=jax.random.key(2),
        step_size="auto", localization=10.0, batch_size=64, num_draws=500,
    )  # fmt: skip
    assert isinstance(result.calibration, jaxslt.Calibration)
    rec = result.calibration.recommended
    assert float(result.step_size) == pytest.approx(rec["step_size"], rel=1e-6)
    assert float(result.localization) == 10.0
    assert result.burnin_loss_trace.shape[1] >= rec["num_burnin"]
    assert "chosen by jaxslt.calibrate" in result.summary()


def test_bad_grids_are_rejected():
    args = (quadratic_loss, quadratic_params(), dummy_data())
    with pytest.raises(ValueError, match="localizations must be a non-empty list"):
        jaxslt.calibrate(*args, key=jax.random.key(0), localizations=())
    with pytest.raises(ValueError, match="step_sizes must be positive"):
        jaxslt.calibrate(*args, key=jax.random.key(0), step_sizes=[-1e-3, 1e-3])
    with pytest.raises(TypeError, match="key must be one PRNG key"):
        jaxslt.calibrate(*args, key=0)


def test_cells_can_run_in_groups(calibration):
    grouped = jaxslt.calibrate(
        quadratic_loss, quadratic_params(), dummy_data(), key=jax.random.key(0),
        cell_batch_size=5, **KW,
    )  # fmt: skip
    np.testing.assert_allclose(
        grouped.table.llc_mean, calibration.table.llc_mean, rtol=1e-5, atol=1e-6
    )
    assert jnp.shape(grouped.results.llc_mean) == (12,)


def test_auto_works_with_one_chain():
    """The within-chain SE (nβ·sd/√ESS) is defined for one chain; the across-chain one was not,
    and auto raised "found no usable setting"."""
    result = jaxslt.estimate_llc(
        quadratic_loss, quadratic_params(), dummy_data(), key=jax.random.key(2),
        step_size="auto", localization=10.0, batch_size=64, num_chains=1,
    )  # fmt: skip
    assert result.calibration.recommended and np.isfinite(float(result.llc_mean))
    assert result.calibration.table.llc_se[result.calibration.table.ok].notna().all()


def test_a_localizer_that_moves_the_estimate_is_a_caution():
    """On the quadratic, the exact λ̂ is Σ nβh/(2(nβh + γ)): 1.42 at γ = 1 but 0.43 at γ = 100,
    so calibration must say that λ̂ is not flat in γ, and estimate_llc must warn it. (γ = 1
    needs a longer calibration to equilibrate: its cells are not healthy.)"""
    nbeta = jaxslt.default_nbeta(64)
    exact = [jaxslt.truth.quadratic_posterior(HESSIAN, nbeta=nbeta, localization=g)
             for g in (1.0, 100.0)]  # fmt: skip
    assert exact[1] < 0.5 * exact[0]
    with pytest.warns(jaxslt.LLCWarning, match="still moves with the localization"):
        result = jaxslt.estimate_llc(
            quadratic_loss, quadratic_params(), dummy_data(), key=jax.random.key(2),
            step_size="auto", batch_size=64,
        )  # fmt: skip
    assert any("against" in c and "at γ = 100" in c for c in result.calibration.cautions)
