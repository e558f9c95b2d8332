"""Singular fluctuation, functional variance, WAIC, WBIC: the exact linear-Gaussian formulas,
Watanabe's equations of state, and the estimator's pooled accumulators against them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import jaxslt
from jaxslt import observables as obs
from jaxslt.truth import linear_gaussian_observables

D, NOISE = 3, 1.0
SCALE = 2.0 ** np.linspace(-1, 1, D)


def _dataset(rng, n):
    x = rng.normal(size=(n, D)) * SCALE
    w0 = rng.normal(size=D)
    return x, x @ w0 + NOISE * rng.normal(size=n), w0


def test_exact_formulas_match_monte_carlo_of_the_gaussian_posterior():
    rng = np.random.default_rng(0)
    x, y, _ = _dataset(rng, 60)
    center = np.linalg.lstsq(x, y, rcond=None)[0] + 0.1  # off the minimum: r_i has a bias too
    exact = linear_gaussian_observables(x, y, center, nbeta=25.0, localization=2.0)
    draws = rng.multivariate_normal(exact.mean, exact.covariance, size=400_000)
    losses = 0.5 * (y[None, :] - draws @ x.T) ** 2  # (draws, n)
    num = losses.shape[0]
    var = losses.var(axis=0, ddof=1)
    # SE of a sample variance: sqrt((m4 − σ⁴)/N); of a sample mean: σ/√N
    m4 = ((losses - losses.mean(0)) ** 4).mean(0)
    se_v = np.sqrt(np.sum((m4 - var**2) / num))
    assert abs(var.sum() - exact.functional_variance) < 4 * se_v
    g = losses.mean(1)
    assert abs(g.mean() - exact.gibbs_train_loss) < 4 * g.std() / np.sqrt(num)
    e = np.exp(-losses)
    t = -np.mean(np.log(e.mean(0)))
    se_t = np.sqrt(np.sum(e.var(0) / e.mean(0) ** 2) / num) / losses.shape[1]
    assert abs(t - exact.bayes_train_loss) < 4 * se_t


def test_watanabe_equations_of_state_at_beta_one():
    """Over data sets, with β = 1 and no localizer (Watanabe 2010):
    E[G_g − T_n] = 2ν/n, E[G_g] = E[WAIC] and E[G_g − S] = λ/n with λ = ν = d/2 (regular).
    G_g = E_(x,y)[−log E_p exp(−l(x, y, w))] by Monte Carlo over fresh x on a shared grid;
    S = E[½ξ²] = ½·noise². Tolerances: 4 standard errors across data sets."""
    rng = np.random.default_rng(1)
    n, reps = 200, 600
    x_test = rng.normal(size=(20_000, D)) * SCALE
    gaps_t, gaps_waic, excess, nus = [], [], [], []
    for _ in range(reps):
        x, y, w0 = _dataset(rng, n)
        exact = linear_gaussian_observables(x, y, np.zeros(D), nbeta=float(n), localization=0.0)
        s = np.einsum("ij,jk,ik->i", x_test, exact.covariance, x_test)
        bias = x_test @ (w0 - exact.mean)
        g = np.mean(0.5 * np.log1p(s) + (bias**2 + NOISE**2) / (2 * (1 + s)))
        gaps_t.append(n * (g - exact.bayes_train_loss))
        gaps_waic.append(n * (g - exact.waic))
        excess.append(n * (g - 0.5 * NOISE**2))
        nus.append(exact.singular_fluctuation)
    se = lambda a: np.std(a) / np.sqrt(len(a))  # noqa: E731
    nu = np.mean(nus)
    assert abs(nu - D / 2) < 0.05 * D / 2  # O(d/n) below d/2 at finite n
    assert abs(np.mean(gaps_t) - 2 * nu) < 4 * se(gaps_t)
    assert abs(np.mean(gaps_waic)) < 4 * se(gaps_waic)
    assert abs(np.mean(excess) - D / 2) < 4 * se(excess)


@pytest.mark.slow
def test_estimator_observables_match_the_exact_posterior():
    """MALA (exact up to Monte-Carlo error) on a regular linear-Gaussian model at β = 1:
    every pooled observable within 4 SE (from the spread of the per-chain values) of the exact
    value, and ν̂ ≈ λ = d/2."""
    n = 200
    problem = jaxslt.problems.regular_linear_gaussian(
        D, key=jax.random.key(0), num_examples=n, localization=0.01
    )
    result = jaxslt.estimate_llc(
        problem.loss_fn, problem.params, problem.data, key=jax.random.key(1), step_size=1e-3,
        nbeta=float(n), localization=0.01, sampler="mala", num_chains=8, num_draws=2000,
        num_burnin=300, observables=True, observable_draws=500, diagnostics=False,
    )  # fmt: skip
    x, y = problem.data
    exact = linear_gaussian_observables(x, y, problem.params, nbeta=float(n), localization=0.01)
    o = result.observables
    np.testing.assert_array_equal(o.num_evaluations, 500)
    for name in ("singular_fluctuation", "bayes_train_loss", "gibbs_train_loss", "waic"):
        per_chain = np.asarray(getattr(o.per_chain, name))
        se = per_chain.std(ddof=1) / np.sqrt(per_chain.size)
        assert abs(float(getattr(o, name)) - getattr(exact, name)) < 4 * se, name
    assert float(o.wbic) == pytest.approx(n * float(o.gibbs_train_loss), rel=1e-6)
    assert abs(float(o.singular_fluctuation) - D / 2) < 0.1 * D / 2


@jax.jit
def _pool(losses, healthy, nbeta):
    moments = jax.vmap(
        lambda chain: jax.lax.scan(
            lambda acc, l: (obs.update_moments(acc, l), None),
            obs.init_moments(losses.shape[-1]),
            chain,
        )[0]
    )(losses)
    return obs.observables(moments, healthy, nbeta)


@settings(max_examples=30)
@given(st.lists(st.booleans(), min_size=4, max_size=4), st.integers(0, 2**31 - 1))
@example([True, False, True, True], 1_657_806_670)  # T_n ≈ 7e-4: failed a bare rtol=2e-5
def test_pooling_equals_statistics_of_all_draws(healthy, seed):
    """Welford per chain + Chan across chains + log-sum-exp = numpy on the concatenated draws
    of the healthy chains (chains with different means, so the between-chain term matters)."""
    rng = np.random.default_rng(seed)
    n, nbeta = 7, 3.0
    shift = rng.normal(size=(4, 1, 1))
    losses = (rng.gamma(2.0, 1.0, size=(4, 30, n)) + shift).astype(np.float32)
    healthy = np.array(healthy)
    result = _pool(jnp.asarray(losses), jnp.asarray(healthy), jnp.float32(nbeta))
    if not healthy.any():
        assert np.isnan(result.functional_variance) and np.isnan(result.waic)
        return
    kept = losses[healthy].reshape(-1, n).astype(np.float64)
    v = kept.var(axis=0, ddof=1).sum()
    t = -np.mean(np.log(np.mean(np.exp(-kept), axis=0)))
    # Float32 error bounds (the inputs are the same float32 numbers on both sides, so only the
    # accumulation rounds): with u = 2⁻²⁴ and N draws pooled per example, a Welford/Chan mean
    # or sum of squared deviations carries a worst-case error of ~N·u times the sum of the
    # magnitudes it adds (Σ l² for a variance: no credit taken for cancellation), and a running
    # logaddexp over N draws ~N·u times the magnitude of its argument (≤ max|l| + log N) —
    # an absolute error, so T_n (and WAIC) get an atol: T_n can be ~1e-4 when the shift
    # makes the losses straddle 0. A factor 4 covers the constants (exp, log, the final sums).
    u, count = 2.0**-24, kept.shape[0]
    tol_v = 4 * count * u * np.sum(np.mean(kept**2, axis=0))
    tol_t = 4 * count * u * (np.abs(kept).max() + np.log(count) + 1)
    np.testing.assert_allclose(result.functional_variance, v, rtol=0, atol=tol_v)
    np.testing.assert_allclose(
        result.singular_fluctuation, nbeta / n / 2 * v, rtol=0, atol=nbeta / n / 2 * tol_v
    )
    np.testing.assert_allclose(result.bayes_train_loss, t, rtol=0, atol=tol_t)
    np.testing.assert_allclose(
        result.gibbs_train_loss, kept.mean(), rtol=0, atol=4 * count * u * np.abs(kept).mean()
    )
    np.testing.assert_allclose(
        result.waic, t + nbeta / n / n * v, rtol=0, atol=tol_t + nbeta / n / n * tol_v
    )
    assert np.isnan(result.per_chain.singular_fluctuation[~healthy]).all()
    first = losses[np.argmax(healthy)].astype(np.float64)
    np.testing.assert_allclose(
        result.per_chain.functional_variance[np.argmax(healthy)],
        first.var(axis=0, ddof=1).sum(),
        rtol=0,
        atol=4 * first.shape[0] * u * np.sum(np.mean(first**2, axis=0)),
    )


def test_per_example_losses_in_chunks_with_a_remainder():
    x = jnp.arange(23.0)[:, None]
    y = jnp.sin(jnp.arange(23.0))

    def loss_fn(w, batch):
        xb, yb = batch
        return 0.5 * jnp.mean((yb - xb[:, 0] * w) ** 2)

    got = obs.per_example_losses(loss_fn, 0.3, (x, y), chunk_size=5)
    np.testing.assert_allclose(got, 0.5 * (y - 0.3 * x[:, 0]) ** 2, rtol=1e-6)


def test_observables_with_restrict_and_in_a_trajectory():
    problem = jaxslt.problems.deep_linear_network(
        [3, 4, 3], 1, key=jax.random.key(0), num_examples=64, module="linen"
    )
    table = jaxslt.llc_trajectory(
        problem.loss_fn, [problem.params, problem.params], problem.data, key=jax.random.key(1),
        step_size=1e-4, num_chains=2, num_draws=20, num_burnin=5, observables=True,
        observable_draws=5, restrict="params/layer_1/**", diagnostics=False,
    )  # fmt: skip
    assert list(table["singular_fluctuation"].notna()) == [True, True]
    # the same key at the same checkpoint: identical rows
    assert table["waic"].iloc[0] == table["waic"].iloc[1]


def test_observable_arguments_are_validated():
    problem = jaxslt.problems.deep_linear_network([2, 2], 1, key=jax.random.key(0))
    base = dict(key=jax.random.key(0), step_size=1e-4, num_draws=5)
    with pytest.raises(TypeError, match="observables must be True or False"):
        jaxslt.estimate_llc(problem.loss_fn, problem.params, problem.data, observables=1, **base)
    with pytest.raises(ValueError, match="observable_draws"):
        jaxslt.estimate_llc(problem.loss_fn, problem.params, problem.data, observables=True,
                            observable_draws=0, **base)  # fmt: skip
