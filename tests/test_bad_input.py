"""Bad inputs to the public entry points: each a clear error (type and the words it must say),
raised before anything compiles where the input alone tells, never a raw traceback or a message
that blames the wrong cause. One row per case: grow the table with every new class of hole."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxslt
from jaxslt import validation
from jaxslt.calibration import calibrate
from jaxslt.trajectory import llc_trajectory

N = 64
KEY = jax.random.key(0)
SMALL = dict(num_chains=2, num_draws=20, num_burnin=5)
CAL = dict(num_chains=2, num_draws=10, num_burnin=5)


def loss(params, batch):
    return jnp.mean((batch[:, 0] - params["w"][0]) ** 2) + jnp.sum(params["w"] ** 2)


def sum_loss(params, batch):  # the mistake: a sum over the batch instead of the mean
    return jnp.sum((batch[:, 0] - params["w"][0]) ** 2) + jnp.sum(params["w"] ** 2)


P = {"w": jnp.asarray([0.0, 0.0, 0.0])}
X = jnp.linspace(-1.0, 1.0, N)[:, None]


def est(**kw):
    args = dict(loss_fn=loss, params=P, data=X, step_size=1e-4, **SMALL)
    args.update(kw)
    return jaxslt.estimate_llc(
        args.pop("loss_fn"), args.pop("params"), args.pop("data"), key=KEY, **args
    )


def cal(**kw):
    return calibrate(loss, P, X, key=KEY, **{**CAL, **kw})


def traj(checkpoints, **kw):
    return llc_trajectory(loss, checkpoints, X, key=KEY, **{"step_size": 1e-4, **SMALL, **kw})


CASES = {
    # 1. settings validated in the dtype the chains use
    "step_size underflows float32": (
        lambda: est(step_size=1e-50), ValueError, ["step_size", "underflows float32"]),
    "nbeta overflows float32": (
        lambda: est(nbeta=1e39), ValueError, ["nbeta", "overflows float32"]),
    "localization overflows float32": (
        lambda: est(localization=1e300), ValueError, ["localization", "overflows float32"]),
    "calibrate step underflows": (
        lambda: cal(step_sizes=[1e-50, 1e-4]), ValueError, ["step_size", "underflows"]),
    # 2. every public entry point validates like estimate_llc
    "calibrate NaN step": (
        lambda: cal(step_sizes=[1e-4, float("nan")]), ValueError, ["step_sizes[1]", "finite"]),
    "calibrate inf localization": (
        lambda: cal(localizations=[1.0, float("inf")]), ValueError,
        ["localizations[1]", "finite"]),
    "calibrate negative nbeta": (
        lambda: cal(nbetas=[-1.0]), ValueError, ["nbetas must be positive", "> 0"]),
    "calibrate empty list": (
        lambda: cal(localizations=[]), ValueError, ["localizations", "non-empty"]),
    "calibrate unknown sampler": (
        lambda: cal(sampler="foo"), ValueError, ["sampler='foo'", "unknown"]),
    "calibrate string step_sizes": (
        lambda: cal(step_sizes="0.1"), TypeError, ["step_sizes", "list of numbers"]),
    "calibrate scalar localizations": (
        lambda: cal(localizations=10.0), TypeError, ["localizations", "list of numbers"]),
    "calibrate mala on minibatches": (
        lambda: cal(sampler="mala", batch_size=8), ValueError, ["full-batch", "batch_size"]),
    "calibrate batch_size 0": (
        lambda: cal(batch_size=0), ValueError, ["batch_size must be >= 1"]),
    "calibrate num_draws 0": (lambda: cal(num_draws=0), ValueError, ["num_draws"]),
    "calibrate cell_batch_size": (
        lambda: cal(cell_batch_size=0), ValueError, ["cell_batch_size", ">= 1"]),
    "auto with mala on minibatches": (
        lambda: est(step_size="auto", sampler="mala", batch_size=8), ValueError,
        ["full-batch", "batch_size"]),
    "auto with a NaN localization": (
        lambda: est(step_size="auto", localization=float("nan")), ValueError,
        ["localization must be finite"]),
    "trajectory int first checkpoint": (
        lambda: traj([{"w": jnp.ones(3, jnp.int32)}, P]), TypeError,
        ["checkpoint at step 0", "float"]),
    "trajectory NaN first checkpoint": (
        lambda: traj([{"w": jnp.full(3, jnp.nan)}, P]), ValueError,
        ["checkpoint at step 0", "NaN"]),
    "sghmc friction -1": (
        lambda: est(sampler="sghmc", sampler_options={"friction": -1.0}), ValueError,
        ["friction", "> 0"]),
    "sghmc friction NaN": (
        lambda: est(sampler="sghmc", sampler_options={"friction": float("nan")}), ValueError,
        ["friction", "finite"]),
    "rmsprop decay 1.5": (
        lambda: est(sampler="rmsprop_sgld", sampler_options={"decay": 1.5}), ValueError,
        ["decay", "(0, 1)"]),
    "sampler option a string": (
        lambda: est(sampler="sghmc", sampler_options={"friction": "0.1"}), TypeError,
        ["friction", "number"]),
    # 3. errors that name the right cause
    "NaN in the data": (
        lambda: est(data=X.at[3, 0].set(jnp.nan)), ValueError, ["data", "NaN"]),
    "inf in host data": (
        lambda: est(data={"x": np.where(np.arange(N)[:, None] == 5, np.inf, 1.0)}),
        ValueError, ["data['x']", "NaN or inf"]),
    "NaN in calibrate data": (
        lambda: calibrate(loss, P, X.at[0, 0].set(jnp.nan), key=KEY, **CAL), ValueError,
        ["data", "NaN"]),
    "loss not finite at w*": (
        lambda: est(loss_fn=lambda p, b: jnp.log(p["w"][0]) + loss(p, b)),
        FloatingPointError, ["L_n(w*)", "loss_fn", "not the cause"]),
    "trajectory loss not finite at a checkpoint": (
        lambda: llc_trajectory(
            lambda p, b: jnp.log(p["w"][0]) + loss(p, b), [P, {"w": jnp.ones(3)}], X,
            key=KEY, step_size=1e-4, **SMALL),
        FloatingPointError, ["step 0", "L_n(w*)"]),
    "loss written as a sum": (
        lambda: est(loss_fn=sum_loss, params={"w": jnp.asarray([0.5, 0.0, 0.0])},
                    batch_size=16, eval_batch_size=48),
        ValueError, ["sum", "mean", "batch size"]),
    # 4. no raw tracebacks
    "loss returns a Python float": (
        lambda: est(loss_fn=lambda p, b: 0.5), TypeError, ["loss_fn returned a float", "jax"]),
    "loss returns a NumPy scalar": (
        lambda: est(loss_fn=lambda p, b: np.float32(0.5)), TypeError, ["loss_fn returned"]),
    "data a DataFrame": (
        lambda: est(data=pd.DataFrame({"a": np.ones(N)})), TypeError,
        ["pandas DataFrame", "to_numpy"]),
    "data a dict with a Series": (
        lambda: est(data={"a": pd.Series(np.ones(N))}), TypeError, ["data['a']", "Series"]),
    "data strings": (
        lambda: est(data=np.array(["a"] * N)[:, None]), TypeError, ["data", "strings"]),
    "params a DataFrame": (
        lambda: est(params={"w": pd.DataFrame({"a": np.ones(3)})}), TypeError,
        ["params leaf", "pandas"]),
    "compute_dtype unknown": (
        lambda: est(compute_dtype="foo"), TypeError, ["compute_dtype='foo'", "not a dtype"]),
    "compute_dtype integer": (
        lambda: est(compute_dtype="int32"), ValueError, ["compute_dtype", "floating"]),
    # 5. degenerate runs
    "params with no elements": (
        lambda: est(params={"w": jnp.ones((0,))}), ValueError, ["no elements"]),
    "diagnostics a string": (
        lambda: est(diagnostics="no"), TypeError, ["diagnostics", "True or False"]),
    "progress a string": (
        lambda: est(progress="yes"), TypeError, ["progress", "True, False or None"]),
    "calibrate loss not finite at w*": (
        lambda: calibrate(lambda p, b: jnp.log(p["w"][0]) + loss(p, b), P, X, key=KEY,
                          step_sizes=[1e-4, 1e-3], **CAL),
        FloatingPointError, ["L_n(w*)", "loss_fn", "not the cause"]),
    "calibrate loss not finite at w*, default steps": (
        lambda: calibrate(lambda p, b: jnp.log(p["w"][0]) + loss(p, b), P, X, key=KEY, **CAL),
        FloatingPointError, ["L_n(w*)", "loss_fn", "not the cause"]),
    "trajectory diagnostics a string": (
        lambda: traj([P], diagnostics="no"), TypeError, ["diagnostics"]),
    "duplicate checkpoint steps": (
        lambda: traj([P, P], steps=[1, 1]), ValueError, ["steps [1]", "more than once"]),
    "float checkpoint steps": (
        lambda: traj([P, P], steps=[0.5, 1]), TypeError, ["steps", "int"]),
}  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_bad_input_gives_a_clear_error(name):
    call, error, words = CASES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(error) as info:
            call()
    message = str(info.value)
    for word in words:
        assert word in message, f"{name}: {word!r} not in {message!r}"


WARNINGS = {
    "num_draws=1": (lambda: est(num_draws=1), ["num_draws=1", "diagnostics"]),
    "a zero-size leaf": (
        lambda: est(params={"w": P["w"], "empty": jnp.ones((0, 2))}),
        ["zero elements"],
    ),
    "one chain": (lambda: est(num_chains=1), ["num_chains=1", "R-hat"]),
}


@pytest.mark.parametrize("name", WARNINGS)
def test_degenerate_run_warns(name):
    call, words = WARNINGS[name]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    messages = " | ".join(str(w.message) for w in caught)
    for word in words:
        assert word in messages, f"{name}: {word!r} not in {messages!r}"


def test_settings_keep_float32_without_x64_and_follow_float64_params_with_it():
    # float32 unless the chains run in float64: a valid run's numbers do not change
    out = validation.cast_settings(P, step_size=1e-4, nbeta=10.0, localization=1.0)
    assert {np.dtype(v.dtype) for v in out.values()} == {np.dtype(np.float32)}
    assert float(out["step_size"]) == float(jnp.float32(1e-4))
    with jax.enable_x64(True):
        wide = {"w": jnp.zeros(3, jnp.float64)}
        out = validation.cast_settings(wide, step_size=1e-50, nbeta=1e39, localization=1.0)
        assert {np.dtype(v.dtype) for v in out.values()} == {np.dtype(np.float64)}
        assert float(out["step_size"]) == 1e-50  # representable in float64: accepted
        narrow = validation.cast_settings(P, step_size=1e-4, nbeta=10.0, localization=1.0)
        assert narrow["step_size"].dtype == jnp.float32  # float32 chains stay float32


def test_a_valid_run_is_unchanged_by_the_checks():
    a = est()
    b = jaxslt.sample_llc(
        loss, P, X, KEY, step_size=jnp.float32(1e-4), nbeta=None,
        localization=jnp.float32(100.0),
        config=jaxslt.SamplingConfig(batch_size=min(N, 256), **SMALL),
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(a.loss_trace), np.asarray(b.loss_trace))
    np.testing.assert_allclose(float(a.llc_mean), float(b.llc_mean), rtol=1e-5)  # jit vs eager


@pytest.mark.parametrize("sampler", ["sgld", "sgnht"])
def test_float64_chains_get_float64_settings_under_x64(sampler):
    with jax.enable_x64(True):
        params = {"w": jnp.zeros(3, jnp.float64)}
        data = jnp.linspace(-1.0, 1.0, N, dtype=jnp.float64)[:, None]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = jaxslt.estimate_llc(
                loss, params, data, key=KEY, step_size=1e-4, sampler=sampler, **SMALL
            )
        assert result.step_size.dtype == jnp.float64 and result.nbeta.dtype == jnp.float64
        assert float(result.step_size) == 1e-4  # not rounded through float32
        assert np.isfinite(float(result.llc_mean))
