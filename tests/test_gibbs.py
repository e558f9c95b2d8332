"""The exact block-Gibbs sampler for deep linear networks against brute force and exact answers.

The algebra (conditional mean and precision) is checked in float64 against jax.hessian/jax.grad
of the log density; the sampler against the exact Gaussian posterior of a single layer (a
regular model, where one sweep is an exact i.i.d. draw), allowing 4 standard errors.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxslt
from jaxslt import gibbs, problems

Z = 4.0  # standard errors allowed in statistical comparisons
WIDTHS = [2, 3, 2, 2]


def _random_net(key, widths, n=50):
    ks = jax.random.split(key, 2 * len(widths) + 2)
    shapes = list(itertools.pairwise(widths))
    weights = tuple(jax.random.normal(ks[i], s) for i, s in enumerate(shapes))
    center = tuple(jax.random.normal(ks[len(widths) + i], s) for i, s in enumerate(shapes))
    x = jax.random.normal(ks[-2], (n, widths[0])) * jnp.linspace(0.5, 1.5, widths[0])
    y = jax.random.normal(ks[-1], (n, widths[-1]))
    return weights, center, x, y


@functools.partial(jax.jit, static_argnames="layer")
def _brute_force_conditional(weights, center, x, y, layer, nbeta, gamma):
    """Mean and precision of W_layer | rest from the Hessian and gradient of log p at 0."""
    shape = weights[layer].shape

    def logp(v):
        w = list(weights)
        w[layer] = v.reshape(shape)
        dist = sum(jnp.sum((a - b) ** 2) for a, b in zip(w, center, strict=True))
        return -nbeta * problems.dln_loss(w, (x, y)) - 0.5 * gamma * dist

    zero = jnp.zeros(int(np.prod(shape)))
    precision = -jax.hessian(logp)(zero)
    mean = jnp.linalg.solve(precision, jax.grad(logp)(zero))
    return mean.reshape(shape), precision


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_conditional_matches_brute_force(layer):
    with jax.enable_x64(True):
        weights, center, x, y = _random_net(jax.random.key(1), WIDTHS)
        stats = gibbs.dln_statistics(x, y)
        nbeta, gamma = 7.0, 0.3
        mean, precision = _brute_force_conditional(weights, center, x, y, layer, nbeta, gamma)
        conditional = jax.jit(gibbs.layer_conditional, static_argnames="layer")
        cond = conditional(weights, stats, center, layer=layer, nbeta=nbeta, localization=gamma)
        assert cond.mean.dtype == jnp.float64
        np.testing.assert_allclose(cond.dense_precision(), precision, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(cond.mean, mean, rtol=1e-10, atol=1e-10)


def test_sweep_bookkeeping_matches_sequential_conditionals():
    """Without noise a sweep must give the sequence of conditional means, each one computed
    from scratch (by brute force) at the layers already updated."""
    with jax.enable_x64(True):
        weights, center, x, y = _random_net(jax.random.key(2), WIDTHS)
        stats = gibbs.dln_statistics(x, y)
        nbeta, gamma = 5.0, 0.7
        swept = gibbs.block_sweep(None, weights, stats, center, nbeta, gamma, noise=False)
        current = list(weights)
        for layer in range(len(weights)):
            mean, _ = _brute_force_conditional(current, center, x, y, layer, nbeta, gamma)
            current[layer] = mean
        for a, b in zip(swept, current, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_sweep_draws_are_sequential_conditional_draws():
    """With noise, a sweep equals drawing each layer from ``layer_conditional`` in turn with the
    per-layer keys (same eigenbases, same standard normals)."""
    with jax.enable_x64(True):
        weights, center, x, y = _random_net(jax.random.key(14), WIDTHS)
        stats = gibbs.dln_statistics(x, y)
        key, kw = jax.random.key(15), dict(nbeta=6.0, localization=0.4)
        swept = gibbs.gibbs_sweep(key, weights, stats, center, **kw)
        current = list(weights)
        for layer, k in enumerate(jax.random.split(key, len(weights))):
            cond = gibbs.layer_conditional(current, stats, center, layer, **kw)
            current[layer] = cond.sample(k)
        for a, b in zip(swept, current, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-8)


def test_layer_sample_covariance():
    """Draws of a middle layer (A and B both non-trivial) have covariance precision⁻¹."""
    weights, center, x, y = _random_net(jax.random.key(3), WIDTHS)
    stats = gibbs.dln_statistics(x, y)
    cond = gibbs.layer_conditional(weights, stats, center, 1, nbeta=3.0, localization=0.5)
    draws = jax.jit(jax.vmap(cond.sample))(jax.random.split(jax.random.key(4), 40_000))
    flat = np.asarray(draws.reshape(draws.shape[0], -1), np.float64)
    cov = np.linalg.inv(np.asarray(cond.dense_precision(), np.float64))
    sd = np.sqrt(np.diag(cov))
    # standard errors: mean sd/√N, covariance entries ≈ sd_i sd_j √(2/N)
    n = flat.shape[0]
    np.testing.assert_array_less(np.abs(flat.mean(0) - cond.mean.reshape(-1)), Z * sd / np.sqrt(n))
    emp = np.cov(flat, rowvar=False)
    np.testing.assert_array_less(np.abs(emp - cov), Z * np.outer(sd, sd) * np.sqrt(2 / n))


def _numpy_loss(weights, x, y):
    """problems.dln_loss in float64 numpy."""
    f = np.asarray(x, np.float64)
    for w in weights:
        f = f @ np.asarray(w, np.float64)
    return 0.5 * np.mean(np.sum((np.asarray(y, np.float64) - f) ** 2, axis=-1))


@pytest.mark.parametrize("noise", [0.0, 0.7])
def test_loss_from_statistics_equals_dln_loss(noise):
    prob = problems.deep_linear_network(
        [5, 4, 3, 6], 2, key=jax.random.key(5), num_examples=3000, noise=noise
    )
    x, y = prob.data
    keys = jax.random.split(jax.random.key(6), len(prob.params))
    other = tuple(
        w + 0.3 * jax.random.normal(k, w.shape) for k, w in zip(keys, prob.params, strict=True)
    )
    for chunk in (None, 512):
        stats = jax.jit(gibbs.dln_statistics, static_argnames="chunk_size")(x, y, chunk_size=chunk)
        assert int(stats.n) == 3000
        for w in (prob.params, other):
            np.testing.assert_allclose(  # absolute error ~eps·syy (L_n(W*) = 0 without noise)
                gibbs.dln_loss_from_statistics(w, stats),
                prob.loss_fn(w, (x, y)),
                rtol=2e-5,
                atol=1e-6 * float(stats.syy),
            )
        excess = gibbs.dln_excess_loss(other, prob.params, stats)
        exact = _numpy_loss(other, x, y) - _numpy_loss(prob.params, x, y)
        np.testing.assert_allclose(excess, exact, rtol=1e-4)


@pytest.mark.parametrize(("gamma", "at_minimum"), [(1.0, True), (30.0, True), (10.0, False)])
def test_single_layer_is_exact(gamma, at_minimum):
    """L = 1 is a regular model: the posterior is Gaussian and one sweep is an exact i.i.d. draw.

    At the empirical minimum E[λ̂] = Σ nβ h_i / (2(nβ h_i + γ)), h = eigenvalues of Σxx each
    repeated H_1 times; off the minimum the gradient g adds a mean shift μ = −(nβH + γ)⁻¹nβ g:
    E[λ̂] = nβ(gᵀμ + ½μᵀHμ + ½tr(HΣ)), Σ = (nβH + γ)⁻¹. Per eigen-coordinate the excess is
    (g + hμ)e + ½he² + const with e ~ N(0, 1/a), so Var(λ̂_c) = nβ² Σ_i [(g_i + h_iμ_i)²/a_i +
    h_i²/(2a_i²)] / T exactly (T i.i.d. sweeps).
    """
    h0, h1, n = 3, 2, 400
    kx, ky, kw = jax.random.split(jax.random.key(6), 3)
    x = jax.random.normal(kx, (n, h0)) * jnp.array([0.2, 1.0, 3.0])
    y = x @ jax.random.normal(kw, (h0, h1)) + 0.5 * jax.random.normal(ky, (n, h1))
    stats = gibbs.dln_statistics(x, y)
    sxx, sxy = np.asarray(stats.sxx, np.float64), np.asarray(stats.sxy, np.float64)
    wmin = np.linalg.solve(sxx, sxy)
    wstar = wmin if at_minimum else wmin + 0.1
    wstar = np.asarray(np.float32(wstar), np.float64)  # the W* the sampler sees
    nbeta = jaxslt.default_nbeta(n)
    num_chains, num_sweeps = 256, 40
    res = gibbs.gibbs_llc(
        (jnp.asarray(wstar, jnp.float32),),
        x,
        y,
        key=jax.random.key(7),
        localization=gamma,
        num_chains=num_chains,
        num_sweeps=num_sweeps,
        num_burnin=0,
    )
    hs, vecs = np.linalg.eigh(sxx)
    a = nbeta * hs + gamma
    grad = vecs.T @ (sxx @ wstar - sxy)  # (h0, h1) in the eigenbasis of Σxx
    mu = -nbeta * grad / a[:, None]
    expected = nbeta * (np.sum(grad * mu) + 0.5 * np.sum(hs[:, None] * mu**2))
    expected += h1 * np.sum(nbeta * hs / (2 * a))
    if at_minimum:
        hess = np.repeat(hs, h1)
        quad = jaxslt.truth.quadratic_posterior(hess, nbeta=nbeta, localization=gamma)
        np.testing.assert_allclose(expected, quad, rtol=1e-6)
    # exact per-chain std: excess = Σ ½h x² + linear terms; Var of one draw of the excess
    var_draw = h1 * np.sum(hs**2 / (2 * a**2)) + np.sum((hs[:, None] * mu + grad) ** 2 / a[:, None])
    sd_chain = nbeta * np.sqrt(var_draw / num_sweeps)
    assert res.llc_per_chain.shape == (num_chains,)
    assert abs(float(res.llc_mean) - expected) < Z * sd_chain / np.sqrt(num_chains)
    assert abs(float(res.llc_std) / sd_chain - 1) < Z / np.sqrt(2 * (num_chains - 1))


def test_dln_identity_block_has_small_standard_error():
    """[4,4,4], rank 2 (λ = 15/2) at the identity-block point: a precise, positive estimate.
    Not compared with λ: at finite nβ and γ the target differs from Aoyagi's value."""
    prob = problems.deep_linear_network([4, 4, 4], 2, key=jax.random.key(8), num_examples=10_000)
    x, y = prob.data
    num_chains = 8
    res = gibbs.gibbs_llc(
        prob.params,
        x,
        y,
        key=jax.random.key(9),
        localization=10.0,
        num_chains=num_chains,
        num_sweeps=1000,
        num_burnin=200,
    )
    assert float(res.nbeta) == pytest.approx(jaxslt.default_nbeta(10_000), rel=1e-6)
    assert res.loss_trace.shape == (num_chains, 1000)
    assert res.burnin_loss_trace.shape == (num_chains, 200)
    assert np.all(np.isfinite(res.llc_per_chain))
    stderr = float(res.llc_std) / np.sqrt(num_chains)
    assert 0 < float(res.llc_mean) < float(prob.truth.llc) * 2
    assert stderr < 0.02 * float(res.llc_mean)
    np.testing.assert_allclose(res.running_llc()[:, -1], res.llc_per_chain, rtol=1e-3)


def test_jit_and_determinism():
    weights, center, x, y = _random_net(jax.random.key(10), WIDTHS, n=200)
    stats = gibbs.dln_statistics(x, y)
    sweep = jax.jit(gibbs.gibbs_sweep)
    key = jax.random.key(11)
    a = sweep(key, weights, stats, center, nbeta=40.0, localization=2.0)
    b = sweep(key, weights, stats, center, nbeta=40.0, localization=2.0)
    c = sweep(jax.random.key(12), weights, stats, center, nbeta=40.0, localization=2.0)
    for wa, wb, wc, w in zip(a, b, c, weights, strict=True):
        assert wa.shape == w.shape and wa.dtype == jnp.float32
        np.testing.assert_array_equal(wa, wb)
        assert not np.allclose(wa, wc)

    run = jax.jit(
        gibbs.gibbs_llc, static_argnames=("num_chains", "num_sweeps", "num_burnin", "chunk_size")
    )
    kw = dict(key=key, localization=5.0, num_chains=3, num_sweeps=20, num_burnin=5)
    r1, r2 = run(center, x, y, **kw), run(center, x, y, **kw)
    jax.tree.map(np.testing.assert_array_equal, r1, r2)
    assert np.all(np.isfinite(r1.llc_per_chain))


def test_validation():
    _, center, x, y = _random_net(jax.random.key(13), WIDTHS)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="localization"):
        gibbs.gibbs_llc(center, x, y, key=key, localization=0.0)
    with pytest.raises(ValueError, match="shape"):
        gibbs.gibbs_llc((center[0], center[2]), x, y, key=key)
    with pytest.raises(ValueError, match="features"):
        gibbs.gibbs_llc(center, y[:, :1], y, key=key)
    with pytest.raises(ValueError, match="num_sweeps"):
        gibbs.gibbs_llc(center, x, y, key=key, num_sweeps=0)


def test_mala_and_gibbs_two_exact_samplers_agree_on_a_dln():
    """Two independent exact samplers of the same localized posterior (Metropolis-adjusted
    Langevin on the full data, block Gibbs on the sufficient statistics) must agree within
    their standard errors, computed across independent chains."""
    import jaxslt

    p = problems.deep_linear_network([3, 2, 3], 1, key=jax.random.key(0), num_examples=1000)
    nbeta, gamma = 50.0, 5.0
    exact = gibbs.gibbs_llc(
        p.params, *p.data, key=jax.random.key(1), nbeta=nbeta, localization=gamma,
        num_chains=16, num_sweeps=2000, num_burnin=200,
    )  # fmt: skip
    chains = 16
    mala = jaxslt.estimate_llc(
        p.loss_fn, p.params, p.data, key=jax.random.key(2), step_size=2e-3, nbeta=nbeta,
        localization=gamma, num_chains=chains, num_draws=4000, num_burnin=1000, sampler="mala",
        diagnostics=False,
    )  # fmt: skip
    assert 0.5 < float(np.mean(mala.accept_rate)) < 0.99
    se = np.hypot(float(mala.llc_std), float(exact.llc_std)) / np.sqrt(chains)
    assert se < 0.05 * float(exact.llc_mean)
    assert abs(float(mala.llc_mean) - float(exact.llc_mean)) < 4 * se
