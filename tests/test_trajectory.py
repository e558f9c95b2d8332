"""LLC over a sequence of checkpoints: one compile, equal to per-checkpoint estimates."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxslt

SETTINGS = dict(num_chains=2, num_draws=40, num_burnin=10, batch_size=32, nbeta=300.0,
                localization=5.0)  # fmt: skip


@pytest.fixture(scope="module")
def problem():
    return jaxslt.problems.deep_linear_network(
        [4, 5, 4], 2, key=jax.random.key(0), num_examples=256, module="linen"
    )


def _checkpoints(problem, count=3):
    """Points along a path from a perturbation back to w* (stand-ins for training)."""
    keys = jax.random.split(jax.random.key(9), count)
    return [
        jax.tree.map(
            lambda w, k=k, i=i: w + 0.3 * (1 - i / (count - 1)) * jax.random.normal(k, w.shape),
            problem.params,
        )
        for i, k in enumerate(keys)
    ]


def test_rows_equal_estimate_llc_per_checkpoint_and_compile_once(problem, traces):
    checkpoints = _checkpoints(problem)
    key = jax.random.key(1)
    before = traces["sample_llc"]
    table = jaxslt.llc_trajectory(problem.loss_fn, checkpoints, problem.data, key=key,
                                  step_size=1e-4, steps=[10, 100, 1000], **SETTINGS)  # fmt: skip
    assert traces["sample_llc"] <= before + 1
    assert list(table["step"]) == [10, 100, 1000]
    for row, params in zip(table.itertuples(), checkpoints, strict=True):
        single = jaxslt.estimate_llc(problem.loss_fn, params, problem.data, key=key,
                                     step_size=1e-4, **SETTINGS)  # fmt: skip
        assert row.llc_mean == float(single.llc_mean)
        assert row.init_loss == float(single.init_loss)
        assert row.rhat == single.diagnostics.rhat
        assert row.llc_se == single.diagnostics.llc_se
    assert len(table.attrs["results"]) == 3
    assert {"llc_std", "mala_accept", "ess_bulk", "llc_se", "ok", "warnings"} <= set(table.columns)
    # the checkpoints differ, so the curve does
    assert table["init_loss"].nunique() == 3


@pytest.mark.parametrize("checkpoint_batch_size", [2, None])
def test_vmapped_checkpoints_match_the_sequential_run(problem, checkpoint_batch_size):
    checkpoints = _checkpoints(problem)
    kwargs = dict(key=jax.random.key(2), step_size=1e-4, diagnostics=False, **SETTINGS)
    sequential = jaxslt.llc_trajectory(problem.loss_fn, checkpoints, problem.data, **kwargs)
    mapped = jaxslt.llc_trajectory(
        problem.loss_fn, checkpoints, problem.data,
        checkpoint_batch_size=checkpoint_batch_size, **kwargs,
    )  # fmt: skip
    np.testing.assert_allclose(mapped["llc_mean"], sequential["llc_mean"], rtol=1e-4)
    np.testing.assert_allclose(mapped["init_loss"], sequential["init_loss"], rtol=1e-6)


def test_checkpoint_forms(problem):
    checkpoints = _checkpoints(problem)
    kwargs = dict(key=jax.random.key(3), step_size=1e-4, diagnostics=False, **SETTINGS)
    as_list = jaxslt.llc_trajectory(problem.loss_fn, checkpoints, problem.data, **kwargs)
    as_map = jaxslt.llc_trajectory(
        problem.loss_fn, {30: checkpoints[2], 10: checkpoints[0], 20: checkpoints[1]},
        problem.data, **kwargs,
    )  # fmt: skip
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *checkpoints)
    as_stack = jaxslt.llc_trajectory(problem.loss_fn, stacked, problem.data, **kwargs)
    assert list(as_map["step"]) == [10, 20, 30]
    assert list(as_list["step"]) == [0, 1, 2]
    np.testing.assert_array_equal(as_map["llc_mean"], as_list["llc_mean"])
    np.testing.assert_array_equal(as_stack["llc_mean"], as_list["llc_mean"])


def test_a_diverging_checkpoint_gives_nan_and_a_warning_not_an_error(problem):
    bad = jax.tree.map(lambda w: w * 1e3, problem.params)
    with pytest.warns(jaxslt.LLCWarning, match="diverged"):
        table = jaxslt.llc_trajectory(
            problem.loss_fn, [problem.params, bad], problem.data, key=jax.random.key(4),
            step_size=1e-4, diagnostics=False, **SETTINGS,
        )  # fmt: skip
    assert np.isfinite(table["llc_mean"].iloc[0])
    assert np.isnan(table["llc_mean"].iloc[1])
    assert table["num_diverged"].iloc[1] == 2


def test_errors(problem):
    call = lambda checkpoints, **kw: jaxslt.llc_trajectory(  # noqa: E731
        problem.loss_fn, checkpoints, problem.data, key=jax.random.key(0), step_size=1e-4, **kw
    )
    with pytest.raises(ValueError, match="empty"):
        call([])
    with pytest.raises(ValueError, match="steps has 1 entries for 2 checkpoints"):
        call([problem.params] * 2, steps=[1])
    other = jaxslt.problems.deep_linear_network([4, 3, 4], 2, key=jax.random.key(0),
                                                module="linen").params  # fmt: skip
    with pytest.raises(ValueError, match="step 1 differs in structure or shapes"):
        call([problem.params, other])
    with pytest.raises(TypeError, match="unknown setting"):
        call([problem.params], num_chain=3)
    with pytest.raises(ValueError, match="checkpoint_batch_size"):
        call([problem.params], checkpoint_batch_size=0)


def test_warnings_name_their_checkpoint_and_stay_with_its_row(problem):
    """Every warning raised by llc_trajectory starts with "checkpoint at step <step>: " and
    its text is in that step's row of the table (40 draws of 2 chains: the diagnostics warn)."""
    import warnings

    checkpoints = _checkpoints(problem)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = jaxslt.llc_trajectory(problem.loss_fn, checkpoints, problem.data,
                                      key=jax.random.key(3), step_size=1e-4,
                                      steps=[10, 100, 1000], **SETTINGS)  # fmt: skip
    assert caught, "expected diagnostics warnings from 40 draws"
    rows = dict(zip(table["step"], table["warnings"], strict=True))
    for w in caught:
        text = str(w.message)
        assert text.startswith("checkpoint at step "), text
        step, _, body = text.removeprefix("checkpoint at step ").partition(": ")
        assert body in rows[int(step)], (step, body)


def test_auto_calibrates_once_and_every_checkpoint_runs_in_its_program(problem, traces):
    """step_size="auto" over checkpoints: one calibration (at the last checkpoint) and one
    sampler program, the calibration's, for its pilot, its cells and every checkpoint's run,
    whatever the lengths it recommends; each row is the estimate_llc run of the recommended
    settings at that checkpoint, bit for bit."""
    import warnings

    checkpoints = [jax.tree.map(lambda w, s=s: w * s, problem.params) for s in (0.98, 1.0)]
    kw = dict(key=jax.random.key(3), batch_size=64, localization=10.0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxslt.LLCWarning)
        table = jaxslt.llc_trajectory(  # more draws than the calibration's 2,000: a longer run
            problem.loss_fn, checkpoints, problem.data, step_size="auto", steps=[10, 20],
            num_draws=2_500, **kw,
        )  # fmt: skip
    assert traces["sample_llc"] == 1
    rec = table.attrs["calibration"].recommended
    draws = max(2_500, rec["num_draws"])
    first = table.attrs["results"][0]
    assert first.loss_trace.shape[-1] == draws > 2_000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxslt.LLCWarning)
        direct = jaxslt.estimate_llc(
            problem.loss_fn, checkpoints[0], problem.data, **{**kw, **rec, "num_draws": draws},
            diagnostics=False,
        )  # fmt: skip
    np.testing.assert_array_equal(direct.loss_trace, first.loss_trace)
    assert float(direct.llc_mean) == table.llc_mean[0]
