"""The estimator against exact answers, and its contract (pytree result, jit/vmap, caching).

Statistical tests compare a mean over independent chains with an exact expectation and allow
4 standard errors, the standard error itself being exact (regular model) or the across-chain
one; with fixed keys every test is deterministic.
"""

from __future__ import annotations

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import HESSIAN, dummy_data, quadratic_loss, quadratic_params
from flax import nnx

import jaxslt
from jaxslt import SamplingConfig, problems, sample_llc_jit, truth

Z = 4.0  # standard errors allowed in statistical comparisons


def _estimate(loss_fn=quadratic_loss, params=None, data=None, **kw):
    kw.setdefault("key", jax.random.key(0))
    return jaxslt.estimate_llc(
        loss_fn,
        quadratic_params() if params is None else params,
        dummy_data() if data is None else data,
        **kw,
    )


# (nβ, γ, ε, burn-in): ε·a spans 0.005 … 1.6, well inside and near the edge of stability (4),
# with and without burn-in (the "after k steps" transient).
REGULAR_CASES = [
    (10.0, 0.0, 1e-2, 0),
    (10.0, 1.0, 1e-2, 400),
    (100.0, 1.0, 2e-3, 0),
    (100.0, 10.0, 2e-3, 300),
    (1000.0, 100.0, 2e-4, 50),
    (1000.0, 0.0, 1.9e-4, 200),
]


@pytest.mark.parametrize("sampler", ["sgld", "blackjax_sgld"])
@pytest.mark.parametrize(("nbeta", "gamma", "eps", "burnin"), REGULAR_CASES)
def test_regular_model_matches_exact_sgld_moments(sampler, nbeta, gamma, eps, burnin):
    chains, draws = 512, 200
    result = _estimate(
        step_size=eps,
        nbeta=nbeta,
        localization=gamma,
        num_chains=chains,
        num_draws=draws,
        num_burnin=burnin,
        batch_size=64,
        sampler=sampler,
        key=jax.random.key(burnin + int(nbeta)),
    )
    exact = truth.quadratic_sgld(
        HESSIAN,
        nbeta=nbeta,
        localization=gamma,
        step_size=eps,
        num_burnin=burnin,
        num_draws=draws,
    )
    assert float(result.init_loss) == pytest.approx(0.7, abs=1e-6)
    se = exact.std / np.sqrt(chains)
    assert abs(float(result.llc_mean) - exact.mean) < Z * se, (float(result.llc_mean), exact)
    # the across-chain std of a mean of many Gaussian squares: relative SE ≈ 1/sqrt(2(C-1))
    assert float(result.llc_std) == pytest.approx(exact.std, rel=Z / np.sqrt(2 * (chains - 1)))


def test_regular_model_thinning_matches_exact():
    chains, draws, thin = 512, 100, 7
    kw = dict(nbeta=100.0, localization=1.0, step_size=2e-3, num_burnin=100)
    result = _estimate(num_chains=chains, num_draws=draws, thinning=thin, **kw)
    exact = truth.quadratic_sgld(HESSIAN, num_draws=draws, thinning=thin, **kw)
    assert abs(float(result.llc_mean) - exact.mean) < Z * exact.std / np.sqrt(chains)


def test_small_step_recovers_exact_posterior_and_regular_llc():
    """As ε → 0 SGLD's stationary estimate tends to Σ nβh/(2a), and that to d/2 as γ/nβ → 0."""
    nbeta, gamma = 1000.0, 1.0
    posterior = truth.quadratic_posterior(HESSIAN, nbeta=nbeta, localization=gamma)
    assert posterior == pytest.approx(float(truth.regular(3).llc), rel=5e-3)
    chains, draws, burnin, eps = 256, 4000, 6000, 5e-6
    result = _estimate(
        step_size=eps,
        nbeta=nbeta,
        localization=gamma,
        num_chains=chains,
        num_draws=draws,
        num_burnin=burnin,
    )
    exact = truth.quadratic_sgld(
        HESSIAN,
        nbeta=nbeta,
        localization=gamma,
        step_size=eps,
        num_burnin=burnin,
        num_draws=draws,
    )
    # the discretisation bias at this ε is exact: mean − posterior = Σ (nβh/2a)(εa/4)/(1 − εa/4)
    bias = exact.mean - posterior
    assert 0 < bias < 0.015 * posterior
    assert abs(float(result.llc_mean) - posterior - bias) < Z * exact.std / np.sqrt(chains)


def _quartic(params, batch):
    del batch
    return jnp.sum(params["w"] ** 4)


def test_monomial_identity_E_tK_is_one_over_2k():
    """K = w^(2k), no localizer: E[tK] = 1/(2k) exactly for every t (here k = 2, t = 100).

    SGLD's invariant law differs from the target by O(ε); Richardson extrapolation from ε and
    ε/2 cancels the first-order term, leaving O(ε²) ≪ the standard error.
    """
    t, eps = 100.0, 4e-3
    chains = 512
    common = dict(
        params={"w": jnp.zeros(1)},
        nbeta=t,
        localization=0.0,
        num_chains=chains,
        batch_size=64,
    )
    coarse = _estimate(
        _quartic, step_size=eps, num_draws=4000, num_burnin=1000, key=jax.random.key(1), **common
    )
    fine = _estimate(
        _quartic,
        step_size=eps / 2,
        num_draws=8000,
        num_burnin=2000,
        key=jax.random.key(2),
        **common,
    )
    extrapolated = 2 * float(fine.llc_mean) - float(coarse.llc_mean)
    se = np.hypot(2 * float(fine.llc_std), float(coarse.llc_std)) / np.sqrt(chains)
    assert se < 0.01
    assert abs(extrapolated - 0.25) < Z * se
    # and the bias the extrapolation removed is real: the coarse run alone is off
    assert float(coarse.llc_mean) - 0.25 > 0.5 * abs(float(fine.llc_mean) - 0.25)


def test_deep_linear_network_at_identity_blocks_matches_aoyagi():
    """DLN 4-4-4, r = 2: λ = 15/2, m = 1 (Aoyagi). With m = 1 the finite-nβ correction is
    o(1/log nβ); the measured SGLD bias at these settings is < 2% (benchmarks/accuracy)."""
    p = problems.deep_linear_network([4, 4, 4], 2, key=jax.random.key(7), num_examples=10_000)
    assert p.truth == (truth.deep_linear_network([4, 4, 4], 2))
    result = jaxslt.estimate_llc(
        p.loss_fn,
        p.params,
        p.data,
        key=jax.random.key(3),
        step_size=1e-4,
        localization=10.0,
        num_chains=8,
        num_draws=4000,
        num_burnin=2000,
        batch_size=256,
    )
    llc = float(p.truth.llc)
    se = float(result.llc_std) / np.sqrt(8)
    assert float(result.init_loss) == 0.0
    assert abs(float(result.llc_mean) - llc) < Z * se + 0.03 * llc, result


class _LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(jnp.tanh(nn.Dense(6)(x)))


class _NNXMLP(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(3, 6, rngs=rngs)
        self.out = nnx.Linear(6, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


def test_linen_and_nnx_versions_give_statistically_equal_estimates():
    x = jax.random.normal(jax.random.key(0), (2000, 3))
    linen = _LinenMLP()
    variables = linen.init(jax.random.key(1), x)
    model = _NNXMLP(nnx.Rngs(0))
    lp = variables["params"]
    # Linen names modules in construction order: the output Dense(1) is built first
    model.hidden.kernel[...] = lp["Dense_1"]["kernel"]
    model.hidden.bias[...] = lp["Dense_1"]["bias"]
    model.out.kernel[...] = lp["Dense_0"]["kernel"]
    model.out.bias[...] = lp["Dense_0"]["bias"]
    y = linen.apply(variables, x)  # noise-free teacher: w* is a global minimum
    np.testing.assert_allclose(model(x), y, rtol=1e-6)
    graphdef, state = nnx.split(model)

    def linen_loss(v, batch):
        xb, yb = batch
        return 0.5 * jnp.mean(jnp.sum((linen.apply(v, xb) - yb) ** 2, -1))

    def nnx_loss(s, batch):
        xb, yb = batch
        return 0.5 * jnp.mean(jnp.sum((nnx.merge(graphdef, s)(xb) - yb) ** 2, -1))

    kw = dict(step_size=1e-4, localization=10.0, num_chains=16, num_draws=1000, num_burnin=500)
    a = jaxslt.estimate_llc(linen_loss, variables, (x, y), key=jax.random.key(5), **kw)
    b = jaxslt.estimate_llc(nnx_loss, state, (x, y), key=jax.random.key(6), **kw)
    se = np.hypot(float(a.llc_std), float(b.llc_std)) / 4
    assert abs(float(a.llc_mean) - float(b.llc_mean)) < Z * se
    assert 0 < float(a.llc_mean) < 31 / 2  # within (0, d/2], d = 31


def test_same_key_is_bit_identical_and_other_key_differs():
    kw = dict(step_size=1e-3, nbeta=100.0, localization=1.0, num_chains=3, num_draws=50)
    a, b = _estimate(**kw), _estimate(**kw)
    chex.assert_trees_all_equal(a, b)
    c = _estimate(key=jax.random.key(1), **kw)
    assert not np.array_equal(a.loss_trace, c.loss_trace)


def test_second_call_reuses_the_compiled_program(traces):
    kw = dict(nbeta=100.0, localization=1.0, num_chains=2, num_draws=17, num_burnin=3)
    _estimate(step_size=1e-3, **kw)
    before = traces["sample_llc"]
    _estimate(step_size=2e-3, key=jax.random.key(9), data=dummy_data() + 1.0, **kw | {"nbeta": 7.0})
    _estimate(step_size=1e-3, params={"w": jnp.ones(3)}, **kw | {"localization": 3.0})
    assert traces["sample_llc"] == before


def test_the_step_check_curvature_compiles_once_per_loss_not_per_config(traces):
    """The curvature at w* (``geometry_at``) is a program of its own: a new sampling config
    recompiles the sampler, not it (inside the sampler it took half the compile time of the
    in-context transformer); with diagnostics off it is not measured at all."""
    kw = dict(step_size=1e-3, nbeta=100.0, localization=1.0, num_chains=2, num_burnin=3)
    first = _estimate(num_draws=18, **kw)
    before = traces["_geometry_at"]  # 1, or 0 when an earlier test compiled it for this loss
    assert before <= 1 and np.isfinite(float(first.geometry.h_max))
    sampler_traces = traces["sample_llc"]
    other = _estimate(num_draws=19, acceptance_checks=0, sampler="rmsprop_sgld", **kw)
    assert traces["_geometry_at"] == before and traces["sample_llc"] == sampler_traces + 1
    for name in ("h_max", "trace_h", "grad_noise"):  # same w*, key and batch: same curvature
        assert float(getattr(other.geometry, name)) == float(getattr(first.geometry, name))
    lazy = _estimate(num_draws=20, diagnostics=False, **kw)
    assert traces["_geometry_at"] == before and np.isnan(float(lazy.geometry.h_max))


@pytest.mark.xla_internals  # JAX's caches: an ahead-of-time compile fills the one a call reads
def test_the_step_check_curvature_compiles_on_a_worker_while_the_sampler_compiles(compiles):
    """``plan.run`` traces the curvature program, compiles it on the ``jaxslt-compile`` thread
    while the caller compiles the sampler, and the measurement then runs it without compiling
    it again (MLP of 24 layers: the first call fell from 33 to 23 s; ``benchmarks/compile.py``)."""
    loss = functools.partial(quadratic_loss)  # a new function: nothing of it is compiled yet
    result = jaxslt.estimate_llc(loss, quadratic_params(), dummy_data(), key=jax.random.key(0),
                                 step_size=1e-3, num_chains=2, num_draws=20, num_burnin=5,
                                 progress=False)  # fmt: skip
    assert np.isfinite(float(result.geometry.h_max))
    where = [thread for (name, thread) in compiles if name == "jit(_geometry_at)"]
    assert len(where) == 1 and where[0].startswith("jaxslt-compile"), compiles
    assert compiles["jit(_geometry_at)", where[0]] == 1


def test_result_is_a_pytree_with_a_readable_summary():
    result = _estimate(step_size=1e-3, nbeta=100.0, num_chains=3, num_draws=20, num_burnin=5)
    chex.assert_shape(result.llc_per_chain, (3,))
    chex.assert_shape(result.loss_trace, (3, 20))
    chex.assert_shape(result.burnin_loss_trace, (3, 5))
    chex.assert_shape(result.running_llc(), (3, 20))
    np.testing.assert_allclose(result.running_llc()[:, -1], result.llc_per_chain, rtol=1e-5)
    leaves = jax.tree.leaves(jax.jit(lambda r: r)(result))
    # observables off (None); diagnostics, calibration static; geometry a NamedTuple of arrays
    assert len(leaves) == len(result) - 4 + len(result.geometry)
    text = repr(result)
    assert "LLC = " in text and "nβ = 100" in text and "3 chains" in text


def test_core_function_is_jittable_and_vmappable_over_checkpoints():
    p = problems.deep_linear_network([3, 2, 3], 1, key=jax.random.key(0), num_examples=500)
    core = functools.partial(
        jaxslt.sample_llc,
        p.loss_fn,
        step_size=1e-4,
        localization=10.0,
        config=SamplingConfig(num_chains=2, num_draws=100, num_burnin=50, batch_size=100),
    )
    key = jax.random.key(4)
    checkpoints = [jax.tree.map(lambda w, s=s: w * s, p.params) for s in (1.0, 0.9, 1.1)]
    direct = [jax.jit(core)(c, p.data, key) for c in checkpoints]
    stacked = jax.tree.map(lambda *ws: jnp.stack(ws), *checkpoints)
    batched = jax.jit(jax.vmap(core, in_axes=(0, None, None)))(stacked, p.data, key)
    chex.assert_shape(batched.llc_mean, (3,))
    chex.assert_shape(batched.loss_trace, (3, 2, 100))
    for i, one in enumerate(direct):
        chex.assert_trees_all_close(jax.tree.map(lambda x, i=i: x[i], batched), one, rtol=1e-4)
    wrapped = jaxslt.estimate_llc(
        p.loss_fn, checkpoints[0], p.data, key=key, step_size=1e-4, localization=10.0,
        num_chains=2, num_draws=100, num_burnin=50, batch_size=100,
    )  # fmt: skip
    assert wrapped.diagnostics is not None and wrapped.geometry is not None
    # the shell adds only the diagnostics and the curvature at w* to the core's result
    at = jaxslt.core.geometry_at(p.loss_fn, checkpoints[0], p.data, key, batch_size=100)
    assert np.isnan(float(direct[0].geometry.h_max)) and float(at.h_max) > 0
    chex.assert_trees_all_close(
        wrapped._replace(diagnostics=None), jaxslt.core.with_geometry(direct[0], at), rtol=1e-5
    )
    # the step check measures on its own folded key: the chains' numbers are unchanged by it
    unchecked = jax.jit(core, static_argnames="config")(
        checkpoints[0], p.data, key,
        config=SamplingConfig(num_chains=2, num_draws=100, num_burnin=50, batch_size=100,
                              step_check=False),
    )  # fmt: skip
    assert unchecked.geometry is None
    chex.assert_trees_all_equal(unchecked.loss_trace, direct[0].loss_trace)


@pytest.mark.parametrize("sampler", ["blackjax_sghmc", "blackjax_sgnht"])
def test_blackjax_momentum_samplers_run_through_the_same_runner(sampler):
    result = _estimate(
        step_size=1e-3, nbeta=100.0, localization=1.0, num_chains=4, num_draws=100, sampler=sampler
    )
    assert np.isfinite(float(result.llc_mean)) and not result.diverged.any()
    chex.assert_shape(result.loss_trace, (4, 100))


def _explodes(params, batch):
    del batch
    return jnp.sum(params["w"] ** 2)


def test_divergent_chains_are_flagged_excluded_and_warned():
    # ε·a = 0.05·2·100 = 10 > 4: every chain blows up geometrically and overflows.
    kw = dict(nbeta=100.0, localization=0.0, num_chains=2, num_draws=300, num_burnin=0)
    with pytest.raises(FloatingPointError, match=r"all 2 chains diverged.*lower step_size"):
        _estimate(_explodes, step_size=0.05, **kw)
    config = SamplingConfig(num_chains=2, num_draws=300, num_burnin=0)
    result = jaxslt.sample_llc(
        _explodes, {"w": jnp.ones(2)}, dummy_data(), jax.random.key(0), step_size=0.05,
        nbeta=100.0, localization=0.0, config=config,
    )  # fmt: skip
    steps = np.asarray(result.divergence_step)
    assert result.diverged.all() and (steps > 0).all()
    for c in range(2):
        trace = np.asarray(result.loss_trace[c])
        assert np.isfinite(trace[: steps[c]]).all() and not np.isfinite(trace[steps[c]])
    assert np.isnan(float(result.llc_mean))  # the core reports NaN; the shell raises


def test_partially_divergent_run_warns_and_excludes():
    def fragile(params, batch):  # one chain's noise crosses the cliff, the others do not
        del batch
        w = params["w"]
        return jnp.where(jnp.abs(w[0]) > 0.04, jnp.nan, 0.5 * jnp.sum(w**2))

    kw = dict(nbeta=100.0, localization=0.0, num_chains=8, num_draws=200, num_burnin=0)
    kw["step_size"] = 1e-5
    with pytest.warns(RuntimeWarning, match=r"chains diverged and were excluded"):
        result = _estimate(fragile, params={"w": jnp.zeros(2)}, **kw)
    healthy = ~np.asarray(result.diverged)
    assert 0 < healthy.sum() < 8
    np.testing.assert_allclose(
        float(result.llc_mean), np.asarray(result.llc_per_chain)[healthy].mean(), rtol=1e-6
    )
    assert np.isnan(np.asarray(result.llc_per_chain)[~healthy]).all()


# --- the other samplers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("friction", "nbeta", "gamma", "eps", "burnin"),
    [(0.05, 100.0, 1.0, 2e-3, 0), (0.3, 100.0, 10.0, 2e-3, 100), (1.0, 1000.0, 1.0, 1e-4, 30)],
)
def test_sghmc_matches_its_exact_gaussian_moments(friction, nbeta, gamma, eps, burnin):
    chains, draws = 512, 200
    result = _estimate(
        step_size=eps, nbeta=nbeta, localization=gamma, num_chains=chains, num_draws=draws,
        num_burnin=burnin, sampler="sghmc", sampler_options={"friction": friction},
    )  # fmt: skip
    exact = truth.quadratic_sghmc(
        HESSIAN, nbeta=nbeta, localization=gamma, step_size=eps, friction=friction,
        num_burnin=burnin, num_draws=draws,
    )  # fmt: skip
    assert abs(float(result.llc_mean) - exact.mean) < Z * exact.std / np.sqrt(chains)
    assert float(result.llc_std) == pytest.approx(exact.std, rel=Z / np.sqrt(2 * (chains - 1)))


def test_sghmc_at_full_friction_is_sgld():
    kw = dict(nbeta=100.0, localization=1.0, step_size=2e-3, num_burnin=5, num_draws=40)
    sghmc = truth.quadratic_sghmc(HESSIAN, friction=1.0, **kw)
    sgld = truth.quadratic_sgld(HESSIAN, **kw)
    assert sghmc.mean == pytest.approx(sgld.mean, rel=1e-12)
    assert sghmc.std == pytest.approx(sgld.std, rel=1e-12)


def test_mala_is_exact_where_sgld_is_biased():
    """ε·a up to 1.6: SGLD's stationary estimate is 40% high; MALA's is the exact posterior."""
    nbeta, gamma, eps, chains = 100.0, 1.0, 2e-3, 256
    result = _estimate(
        step_size=eps, nbeta=nbeta, localization=gamma, num_chains=chains, num_draws=2000,
        num_burnin=500, sampler="mala",
    )  # fmt: skip
    posterior = truth.quadratic_posterior(HESSIAN, nbeta=nbeta, localization=gamma)
    sgld = truth.quadratic_sgld(
        HESSIAN, nbeta=nbeta, localization=gamma, step_size=eps, num_burnin=500, num_draws=2000
    )
    assert sgld.mean > 1.1 * posterior
    se = float(result.llc_std) / np.sqrt(chains)
    assert abs(float(result.llc_mean) - posterior) < Z * se
    assert 0.3 < float(np.mean(result.accept_rate)) < 1.0
    assert "acceptance rate" in result.summary()


def test_mala_gives_the_monomial_identity_without_extrapolation():
    chains = 256
    result = _estimate(
        _quartic, params={"w": jnp.zeros(1)}, step_size=5e-3, nbeta=100.0, localization=0.0,
        num_chains=chains, num_draws=4000, num_burnin=500, sampler="mala",
    )  # fmt: skip
    se = float(result.llc_std) / np.sqrt(chains)
    assert se < 0.01 and abs(float(result.llc_mean) - 0.25) < Z * se


D_NOISY = 20
U = jax.random.normal(jax.random.key(0), (1000, D_NOISY))
U = U - U.mean(0)  # L_n(w) = |w|² exactly; minibatches add a random linear term


def _noisy_quadratic(params, batch):
    w = params["w"]
    return jnp.sum(w**2) + jnp.mean(batch @ w)


def test_sgnht_thermostat_removes_minibatch_heating():
    """With large minibatch gradient noise SGHMC runs hot; SGNHT's thermostat corrects it."""
    nbeta, chains = 50.0, 32
    exact = truth.quadratic_posterior([2.0] * D_NOISY, nbeta=nbeta, localization=0.0)
    kw = dict(
        params={"w": jnp.zeros(D_NOISY)}, data=U, step_size=1e-3, nbeta=nbeta, localization=0.0,
        num_chains=chains, num_draws=10_000, num_burnin=3000, batch_size=50,
        sampler_options={"friction": 0.1},
    )  # fmt: skip
    thermostat = _estimate(_noisy_quadratic, sampler="sgnht", **kw)
    plain = _estimate(_noisy_quadratic, sampler="sghmc", **kw)
    se = float(thermostat.llc_std) / np.sqrt(chains)
    assert abs(float(thermostat.llc_mean) - exact) < Z * se
    assert float(plain.llc_mean) - exact > 20 * se  # ~14% too hot without the thermostat


def test_mala_acceptance_of_sgld_steps_falls_as_the_step_grows():
    kw = dict(nbeta=100.0, localization=1.0, num_chains=8, num_draws=400, num_burnin=200)
    small, large = _estimate(step_size=1e-4, **kw), _estimate(step_size=4e-3, **kw)
    assert np.all(np.asarray(small.mala_accept) > 0.95)
    assert np.mean(large.mala_accept) < np.mean(small.mala_accept) - 0.1
    off = _estimate(step_size=1e-4, acceptance_checks=0, **kw)
    assert np.isnan(off.mala_accept).all()
    other = _estimate(step_size=1e-4, sampler="sghmc", **kw)
    assert np.isnan(other.mala_accept).all()


def test_bfloat16_compute_keeps_a_float32_chain_and_agrees_statistically():
    p = problems.deep_linear_network([4, 4, 4], 2, key=jax.random.key(7), num_examples=4000)
    kw = dict(step_size=1e-4, localization=10.0, num_chains=8, num_draws=2000, num_burnin=1000,
              diagnostics=False)  # fmt: skip
    full = jaxslt.estimate_llc(p.loss_fn, p.params, p.data, key=jax.random.key(1), **kw)
    half = jaxslt.estimate_llc(
        p.loss_fn, p.params, p.data, key=jax.random.key(2), compute_dtype=jnp.bfloat16, **kw
    )
    assert half.loss_trace.dtype == jnp.float32
    se = np.hypot(float(full.llc_std), float(half.llc_std)) / np.sqrt(8)
    assert abs(float(half.llc_mean) - float(full.llc_mean)) < Z * se


def test_float64_reference_runs_stay_in_float64():
    with jax.enable_x64(True):
        result = _estimate(
            params={"w": jnp.asarray(quadratic_params()["w"], jnp.float64)},
            step_size=1e-3, nbeta=100.0, num_chains=2, num_draws=20, diagnostics=False,
        )  # fmt: skip
        assert result.loss_trace.dtype == jnp.float64
        assert result.init_loss.dtype == jnp.float64


@pytest.mark.slow
def test_data_refined_llc_on_a_slice_matches_the_exact_posterior():
    """Data-refined LLC: w* is the MLE of the full data, sampled and evaluated on one slice (w*
    is not the slice's minimum). The localized posterior on the slice is Gaussian, so the exact
    expected estimate is nβ·(E_p[L'_n] − L'_n(w*)) with E_p[L'_n] from
    ``truth.linear_gaussian_observables``. MALA must land within 4 SE of it."""
    problem = jaxslt.problems.regular_linear_gaussian(3, key=jax.random.key(2), num_examples=400)
    x, y = problem.data
    sl = (x[:100], y[:100])
    nbeta, gamma = 50.0, 1.0
    result = jaxslt.estimate_llc(
        problem.loss_fn, problem.params, sl, key=jax.random.key(3), step_size=2e-3,
        nbeta=nbeta, localization=gamma, sampler="mala", num_chains=8, num_draws=3000,
        num_burnin=300, diagnostics=False,
    )  # fmt: skip
    exact = jaxslt.truth.linear_gaussian_observables(
        sl[0], sl[1], problem.params, nbeta=nbeta, localization=gamma
    )
    w = np.asarray(problem.params, np.float64)
    init = 0.5 * np.mean((np.asarray(sl[1]) - np.asarray(sl[0]) @ w) ** 2)
    target = nbeta * (exact.gibbs_train_loss - init)
    assert float(result.init_loss) == pytest.approx(init, rel=1e-5)
    se = float(result.llc_std) / np.sqrt(8)
    assert abs(float(result.llc_mean) - target) < 4 * se


def test_auto_chain_batch_size_groups_chains_when_memory_is_short(monkeypatch):
    p = problems.deep_linear_network([8, 8, 8], 2, key=jax.random.key(0), num_examples=256)
    kw = dict(key=jax.random.key(1), step_size=1e-5, num_chains=4, num_draws=20, num_burnin=0)
    config = SamplingConfig(num_chains=4, num_draws=20, num_burnin=0, acceptance_checks=5)
    plan = functools.partial(
        jaxslt.plan.resolve, p.loss_fn, p.params, p.data, kw["key"], kw["step_size"], config
    )
    assert plan().config.chain_batch_size is None  # plenty of memory: all chains at once
    # a live SGLD chain with acceptance checks: state + gradient + 3 copies for the checks;
    # fixed: w*, one working copy and the data
    param_bytes = 4 * sum(int(w.size) for w in p.params)
    fixed = 2 * param_bytes + sum(int(x.nbytes) for x in p.data)
    monkeypatch.setattr(
        jaxslt.memory, "available_memory", lambda d: (fixed + 2 * 5 * param_bytes) / 0.8
    )
    assert plan().config.chain_batch_size == 2
    grouped = jaxslt.estimate_llc(p.loss_fn, p.params, p.data, diagnostics=False, **kw)
    together = jaxslt.estimate_llc(
        p.loss_fn, p.params, p.data, chain_batch_size=None, diagnostics=False, **kw
    )
    np.testing.assert_allclose(grouped.loss_trace, together.loss_trace, rtol=1e-6)
    with pytest.raises(ValueError, match='"auto"'):
        jaxslt.estimate_llc(p.loss_fn, p.params, p.data, chain_batch_size="all", **kw)


@pytest.mark.xla_internals
@pytest.mark.parametrize("sampler", ["sghmc", "sgnht"])
def test_a_lone_momentum_chain_holds_its_state_and_one_gradient(sampler):
    """A group of one chain is stepped without a chain axis; with that axis put back on every
    step's output, XLA kept two erf⁻¹ intermediates of the noise per layer (5.35 copies of the
    parameters for sghmc, 3.50 for sgnht) instead of position + momentum + gradient = 3."""
    p = problems.deep_linear_network([256] * 5, 64, key=jax.random.key(0), num_examples=256)
    param_bytes = 4 * sum(int(w.size) for w in p.params)
    temp = sample_llc_jit.lower(
        p.loss_fn, p.params, p.data, jax.random.key(1), step_size=1e-7, nbeta=100.0,
        localization=1.0, config=SamplingConfig(
            num_chains=2, num_draws=10, num_burnin=0, batch_size=32, sampler=sampler,
            chain_batch_size=1, acceptance_checks=0, step_check=False,
        ),
    ).compile().memory_analysis().temp_size_in_bytes  # fmt: skip
    assert temp / param_bytes == pytest.approx(3.0, abs=0.1)


@pytest.mark.xla_internals
def test_acceptance_checks_cost_at_most_three_parameter_copies_per_chain():
    """At a checked step a chain holds w, w′ and a gradient (the step's own is reduced before
    the one at w′ is computed); the check is part of the step under the cond, so no further
    copies of its operands are made (it was 4.3 copies before)."""
    p = problems.deep_linear_network([256] * 5, 64, key=jax.random.key(0), num_examples=256)
    param_bytes = 4 * sum(int(w.size) for w in p.params)

    def temp_bytes(group, checks):
        return sample_llc_jit.lower(
            p.loss_fn, p.params, p.data, jax.random.key(1), step_size=1e-7, nbeta=100.0,
            localization=1.0, config=SamplingConfig(
                num_chains=4, num_draws=10, num_burnin=0, batch_size=32,
                chain_batch_size=group, acceptance_checks=checks, step_check=False,
            ),
        ).compile().memory_analysis().temp_size_in_bytes  # fmt: skip

    per_chain = temp_bytes(2, 5) - temp_bytes(1, 5)
    per_chain_unchecked = temp_bytes(2, 0) - temp_bytes(1, 0)
    # state + gradient: 2.0 copies under a scan over the steps, 1.75 under the while loop
    # (jax 0.7, CPU), which reuses part of one buffer
    assert 1.5 * param_bytes < per_chain_unchecked < 2.2 * param_bytes
    assert per_chain < per_chain_unchecked + 3 * param_bytes


def test_run_config_completes_a_config_as_estimate_llc_runs_it():
    """One place decides how a config runs (estimate_llc's plan and calibrate's cells both use
    it): the burn-in-adapting option, the batch size, the step check."""
    from jaxslt.core import run_config

    rms = run_config(SamplingConfig(sampler="rmsprop_sgld", num_burnin=40), 1000)
    assert rms.sampler_options == (("adapt_steps", 40),) and rms.batch_size == 256
    kept = SamplingConfig(sampler="rmsprop_sgld", sampler_options={"adapt_steps": 7})
    assert run_config(kept, 1000).sampler_options == (("adapt_steps", 7),)
    no_burnin = SamplingConfig(sampler="rmsprop_sgld", num_burnin=0)
    assert run_config(no_burnin, 1000).sampler_options == ()
    assert run_config(SamplingConfig(sampler="mala", batch_size=None), 300).batch_size == 300
    assert run_config(SamplingConfig(batch_size=None), 100).batch_size == 100
    assert run_config(SamplingConfig(batch_size=64), 1000).batch_size == 64
    unchecked = SamplingConfig(step_check=False)
    assert run_config(unchecked, 1000).step_check


@pytest.mark.parametrize("observables", [False, True])
def test_lowest_full_data_excess_is_the_least_evaluated_draw(observables):
    """The quadratic loss ignores its data, so L_n(w_t) = L_B(w_t), the trace's own value:
    lowest_excess = nβ·(min over the evaluated kept draws of the trace − L_n(w*)) exactly,
    at full_data_checks' 20 draws (every 10th of 200) or at the observables' draws."""
    kw = dict(step_size=1e-3, nbeta=100.0, localization=1.0, num_chains=3, num_draws=200,
              num_burnin=50, observables=observables, observable_draws=25)  # fmt: skip
    result = _estimate(**kw)
    every = 200 // 25 if observables else 200 // jaxslt.core.full_data_checks(200, 64, 64)
    assert every == (8 if observables else 10)
    trace = np.asarray(result.loss_trace)[:, ::every]
    expected = float(result.nbeta) * (trace.min(axis=1) - float(result.init_loss))
    # to the rounding of L_n (the observables' mean of 64 per-example losses: a few ulps of
    # L_n(w*) ≈ 0.7, times nβ), far below the gaps between the evaluated draws
    np.testing.assert_allclose(result.lowest_excess, expected, rtol=0, atol=1e-4)
    assert (np.asarray(result.lowest_excess) >= 0).all()  # a minimum: never below L_n(w*)
    # the compiled core records it only with the step check (or observables)
    config = SamplingConfig(num_chains=2, num_draws=20, step_check=False)
    bare = jaxslt.sample_llc(quadratic_loss, quadratic_params(), dummy_data(), jax.random.key(0),
                             step_size=1e-3, localization=1.0, config=config)  # fmt: skip
    assert bare.lowest_excess is None


def test_full_data_checks_stay_within_a_tenth_of_the_draws_examples():
    checks = jaxslt.core.full_data_checks
    assert checks(8000, 5000, 256) == 20  # the diagnostics benchmark's TMS: 40 affordable
    assert checks(400, 5000, 256) == 2  # 0.1 · 400 · 256 / 5000 = 2.05
    assert checks(1000, 1_000_000, 256) == 0  # one pass over n would cost 4× the budget
    assert checks(10, 64, 64) == 1 and checks(5, 10, 100) == 5  # never more than the draws
