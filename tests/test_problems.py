"""Reference problems: shapes, exact values at w*, cached loss functions, exact targets."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

import jaxslt
from jaxslt import problems, truth

KEY = jax.random.key(0)
N = 64  # examples: small, and one size throughout so eager ops compile once

# The table of docs/method.md §7.2: E[tK] for p ∝ exp(−tK − |w|²/2),
# K = (w1^k1 w2^k2)², printed to 4 digits.
TABLE = {
    (0, 1): [0.4975, 0.4998, 0.5000, 0.5000],
    (1, 1): [0.3542, 0.3903, 0.4123, 0.4375],
    (1, 2): [0.2057, 0.2249, 0.2358, 0.2455],
    (2, 2): [0.1471, 0.1652, 0.1785, 0.1960],
}
TS = [1e2, 1e3, 1e4, 1e6]


def _perturbed(params, scale=0.3, seed=1):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        tree,
        [
            w + scale * jax.random.normal(k, w.shape, w.dtype)
            for w, k in zip(leaves, keys, strict=True)
        ],
    )


# --- deep linear networks and reduced-rank regression ------------------------------------------


def test_dln_backward_compatible_shapes_and_exact_zero_loss():
    p = problems.deep_linear_network([5, 3, 4, 2], 2, key=KEY, num_examples=N)
    loss_fn, params, data, lc = p[:4]
    assert loss_fn is problems.dln_loss
    assert [w.shape for w in params] == [(5, 3), (3, 4), (4, 2)]
    assert data[0].shape == (N, 5) and data[1].shape == (N, 2)
    assert lc == truth.deep_linear_network([5, 3, 4, 2], 2)
    assert float(loss_fn(params, data)) == 0.0
    assert p.nbeta is None and p.target is None and p.localization == 10.0 and p.name


@pytest.mark.parametrize("module", ["linen", "nnx"])
def test_dln_flax_variants_match_dln_loss(module):
    widths = [4, 3, 3, 5]
    base = problems.deep_linear_network(widths, 2, key=KEY, num_examples=N)
    p = problems.deep_linear_network(widths, 2, key=KEY, num_examples=N, module=module)
    assert p.truth == base.truth
    assert all(np.array_equal(a, b) for a, b in zip(p.data, base.data, strict=True))
    assert float(p.loss_fn(p.params, p.data)) == 0.0
    # identical weights in each representation, away from w*, give the same loss
    weights = _perturbed(base.params)
    if module == "linen":
        params = {"params": {f"layer_{i}": {"kernel": w} for i, w in enumerate(weights)}}
    else:
        params = _nnx_like(p.params, weights)
    for a, b in zip(
        jax.tree.leaves(base.params), _layer_leaves(p.params, module, len(weights)), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    expected = float(problems.dln_loss(weights, base.data))
    assert expected > 0
    np.testing.assert_allclose(float(p.loss_fn(params, p.data)), expected, rtol=1e-6)


def _nnx_like(state, weights):
    """An nnx.State with the same structure as ``state`` holding ``weights`` layer by layer."""
    leaves, tree = jax.tree.flatten(state)
    assert len(leaves) == len(weights)  # one kernel per layer, in layer order
    return jax.tree.unflatten(tree, list(weights))


def _layer_leaves(params, module, num_layers):
    if module == "linen":
        return [params["params"][f"layer_{i}"]["kernel"] for i in range(num_layers)]
    leaves = jax.tree.leaves(params)  # nnx.State: the kernels of layers 0, 1, …
    assert len(leaves) == num_layers
    return leaves


def test_same_settings_give_the_same_loss_fn_object():
    def build(**kw):
        return problems.deep_linear_network([3, 2, 3], 1, key=KEY, num_examples=N, **kw)

    assert build().loss_fn is build().loss_fn is problems.dln_loss
    assert build(module="linen").loss_fn is build(module="linen").loss_fn
    assert build(module="nnx").loss_fn is build(module="nnx").loss_fn
    assert build(module="nnx").loss_fn is not build(module="linen").loss_fn
    nc = problems.normal_crossing
    assert nc([1, 2], t=10.0).loss_fn is nc((1, 2), t=1e3, localization=2.0).loss_fn
    assert nc([1, 2], t=10.0).loss_fn is not nc([2, 1], t=10.0).loss_fn
    rl = problems.regular_linear_gaussian
    assert (
        rl(2, key=KEY, num_examples=N).loss_fn
        is rl(3, key=jax.random.key(5), num_examples=N).loss_fn
    )
    tanh = problems.tanh_one_hidden
    assert tanh(2, key=KEY, num_examples=N).loss_fn is tanh(3, key=KEY, num_examples=N).loss_fn
    rrr = problems.reduced_rank_regression
    assert rrr(3, 2, 3, 1, key=KEY, num_examples=N).loss_fn is problems.dln_loss


def test_reduced_rank_regression_is_the_two_layer_dln():
    p = problems.reduced_rank_regression(5, 3, 4, 1, key=KEY, num_examples=N)
    assert p.truth == truth.reduced_rank_regression(5, 3, 4, 1)
    assert p.truth == truth.deep_linear_network([5, 3, 4], 1)
    assert [w.shape for w in p.params] == [(5, 3), (3, 4)]
    assert p.data[0].shape == (N, 5) and p.data[1].shape == (N, 4)
    assert float(p.loss_fn(p.params, p.data)) == 0.0
    np.testing.assert_array_equal(p.params[0] @ p.params[1], problems.identity_block(5, 4, 1))
    assert "reduced-rank" in p.name


# --- normal crossings ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", list(TABLE))
def test_normal_crossing_targets_reproduce_the_reference_table(k):
    for t, printed in zip(TS, TABLE[k], strict=True):
        p = problems.normal_crossing(k, t=t)
        assert p.localization == 1.0 and p.nbeta == t
        assert round(p.target, 4) == printed, (k, t, p.target)


def test_normal_crossing_problem():
    p = problems.normal_crossing([1, 2], t=1e3)
    assert p.params.shape == (2,) and p.data.shape == (2, 1)
    assert p.truth == truth.normal_crossing([1, 2]) == (Fraction(1, 4), 1)
    assert float(p.loss_fn(p.params, p.data)) == 0.0
    w = jnp.array([0.7, -1.3])
    np.testing.assert_allclose(float(p.loss_fn(w, p.data)), 0.7**2 * 1.3**4, rtol=1e-6)
    # a zero exponent contributes no factor (and no NaN gradient at w_i = 0)
    q = problems.normal_crossing([0, 1], t=10.0)
    assert float(q.loss_fn(jnp.array([5.0, 0.5]), q.data)) == 0.25
    assert np.isfinite(jax.grad(q.loss_fn)(q.params, q.data)).all()
    assert problems.normal_crossing([1, 1, 1], t=10.0).target is None


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_monomial_without_localizer_gives_one_over_2k_for_every_t(k):
    for t in [1e-2, 1.0, 1e2, 1e6, 1e12]:
        p = problems.normal_crossing([k], t=t, localization=0.0)
        assert p.truth.llc == Fraction(1, 2 * k)
        assert abs(p.target - 1 / (2 * k)) < 1e-12, (k, t, p.target)


def test_normal_crossing_target_against_closed_forms_and_adaptive_quadrature():
    for t in [0.1, 1e2, 1e5]:
        for gamma in [0.01, 1.0, 100.0]:
            # k = (1,): E[t w²] = t / (2t + γ); zero exponents factor out
            exact = t / (2 * t + gamma)
            for k in ([1], [0, 1], [1, 0, 0]):
                got = problems.normal_crossing_target(k, t=t, localization=gamma)
                assert abs(got / exact - 1) < 1e-12
    # k = (1, 1): the w2 integral is Gaussian, leaving a 1-D integral for scipy
    for t, gamma in [(1e2, 1.0), (1e6, 1.0), (1e3, 0.01), (10.0, 50.0)]:

        def f(w, with_tk, t=t, gamma=gamma):
            a = t * w * w + gamma / 2
            weight = np.exp(-gamma * w * w / 2) / np.sqrt(a)
            return weight * t * w * w / (2 * a) if with_tk else weight

        num, den = (
            integrate.quad(f, 0, np.inf, args=(i,), epsabs=0, epsrel=1e-13, limit=500)[0]
            for i in (True, False)
        )
        got = problems.normal_crossing_target([1, 1], t=t, localization=gamma)
        assert abs(got / (num / den) - 1) < 1e-10, (t, gamma)


def test_normal_crossing_target_scaling_identity():
    """w = v/√γ maps (t, γ) to (t·γ^−(k1+k2), 1): an exact identity the grid does not know."""
    for k in [(1, 2), (2, 2), (2, 3)]:
        for t, gamma in [(1e2, 0.01), (1e6, 0.01), (1e3, 10.0), (1e12, 100.0)]:
            a = problems.normal_crossing_target(k, t=t, localization=gamma)
            b = problems.normal_crossing_target(k, t=t * gamma ** -sum(k), localization=1.0)
            assert abs(a / b - 1) < 1e-12, (k, t, gamma)


# --- the regular model --------------------------------------------------------------------------


def test_regular_linear_gaussian_mle_and_exact_target():
    d, n = 4, N
    p = problems.regular_linear_gaussian(d, key=KEY, num_examples=n, localization=2.0)
    assert p.params.shape == (d,) and p.data[0].shape == (n, d) and p.data[1].shape == (n,)
    assert p.truth == truth.regular(d) == (Fraction(d, 2), 1)
    assert p.nbeta == pytest.approx(n / math.log(n)) == jaxslt.default_nbeta(n)
    # w* is the least-squares solution: the gradient vanishes (up to float32 rounding)
    grad = jax.grad(p.loss_fn)(p.params, p.data)
    assert float(jnp.max(jnp.abs(grad))) < 1e-5
    x = np.asarray(p.data[0], np.float64)
    hessian = x.T @ x / n
    eigs = np.linalg.eigvalsh(hessian)
    assert eigs.max() / eigs.min() > 4  # a non-trivial Hessian
    # the loss is exactly quadratic with Hessian XᵀX/n around w*
    delta = np.array([0.3, -0.2, 0.1, 0.4])
    w = np.asarray(p.params, np.float64) + delta
    y = np.asarray(p.data[1], np.float64)
    quadratic = 0.5 * np.mean((y - x @ np.asarray(p.params, np.float64)) ** 2)
    quadratic += 0.5 * delta @ hessian @ delta
    loss = float(p.loss_fn(jnp.asarray(w, jnp.float32), p.data))
    assert loss == pytest.approx(quadratic, rel=1e-5)
    expected = float(np.sum(p.nbeta * eigs / (2 * (p.nbeta * eigs + 2.0))))
    assert p.target == pytest.approx(expected, rel=1e-12)
    assert p.target == truth.quadratic_posterior(eigs, nbeta=p.nbeta, localization=2.0)
    # the target tends to λ = d/2 as γ → 0
    targets = [
        problems.regular_linear_gaussian(d, key=KEY, num_examples=n, localization=g).target
        for g in (10.0, 1.0, 1e-6, 0.0)
    ]
    assert all(a < b for a, b in itertools.pairwise(targets))
    assert targets[-1] == pytest.approx(d / 2, rel=1e-12)
    assert targets[-2] == pytest.approx(d / 2, rel=1e-4)


# --- tanh ---------------------------------------------------------------------------------------


def test_tanh_one_hidden_problem():
    p = problems.tanh_one_hidden(3, key=KEY, num_examples=N)
    assert p.params["a"].shape == (3,) and p.params["b"].shape == (3,)
    assert p.data[0].shape == (N,) and p.data[1].shape == (N,)
    assert float(jnp.min(p.data[0])) >= -1 and float(jnp.max(p.data[0])) <= 1
    assert p.truth == truth.tanh_one_hidden(3) == (Fraction(5, 6), 1)
    assert float(p.loss_fn(p.params, p.data)) == 0.0
    assert p.target is None and p.nbeta is None
    w = {"a": jnp.array([1.0, 0.0, 0.0]), "b": jnp.array([2.0, 0.0, 0.0])}
    expected = 0.5 * np.mean(np.tanh(2 * np.asarray(p.data[0], np.float64)) ** 2)
    np.testing.assert_allclose(float(p.loss_fn(w, p.data)), expected, rtol=1e-5)


# --- bad inputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: problems.deep_linear_network([3, 2, 3], 3, key=KEY),
        lambda: problems.deep_linear_network([3, 2, 3], 1, key=KEY, module="haiku"),
        lambda: problems.deep_linear_network([3, 2, 3], 1, key=KEY, num_examples=1),
        lambda: problems.deep_linear_network([3, 2, 3], 1, key=KEY, noise=-1.0),
        lambda: problems.reduced_rank_regression(3, 2, 3, 3, key=KEY),
        lambda: problems.normal_crossing([1, 1], t=0.0),
        lambda: problems.normal_crossing([1, 1], t=-1.0),
        lambda: problems.normal_crossing([1, 1], t=math.inf),
        lambda: problems.normal_crossing([0, 0], t=1.0),
        lambda: problems.normal_crossing([1, -1], t=1.0),
        lambda: problems.normal_crossing([1, 1], t=1.0, localization=0.0),
        lambda: problems.normal_crossing([1], t=1.0, localization=-1.0),
        lambda: problems.normal_crossing_target([1, 1, 1], t=1.0),
        lambda: problems.regular_linear_gaussian(0, key=KEY),
        lambda: problems.regular_linear_gaussian(5, key=KEY, num_examples=3),
        lambda: problems.tanh_one_hidden(0, key=KEY),
    ],
)
def test_bad_inputs_raise_value_error(build):
    with pytest.raises(ValueError):
        build()


def test_bad_types_raise_type_error():
    with pytest.raises(TypeError):
        problems.normal_crossing([1, 1], t="big")
    with pytest.raises(TypeError):
        problems.regular_linear_gaussian(2.5, key=KEY)


# --- every problem runs through estimate_llc ------------------------------------------------------


# Small shapes: compiling the sampler dominates these tests. The reduced-rank regression has the
# DLN's loss_fn and shapes, so it reuses the DLN's compiled program.
@pytest.mark.parametrize(
    "builds",
    [
        [
            lambda: problems.deep_linear_network([2, 1, 2], 1, key=KEY, num_examples=N),
            lambda: problems.reduced_rank_regression(2, 1, 2, 1, key=KEY, num_examples=N),
        ],
        [lambda: problems.deep_linear_network([2, 2], 1, key=KEY, num_examples=N, module="linen")],
        [lambda: problems.deep_linear_network([2, 2], 1, key=KEY, num_examples=N, module="nnx")],
        [lambda: problems.normal_crossing([1, 2], t=100.0)],
        [lambda: problems.regular_linear_gaussian(3, key=KEY, num_examples=N)],
        [lambda: problems.tanh_one_hidden(2, key=KEY, num_examples=N)],
    ],
    ids=["dln-and-rrr", "dln-linen", "dln-nnx", "normal-crossing", "regular", "tanh"],
)
def test_estimate_llc_runs_on_every_problem(builds):
    for build in builds:
        p = build()
        result = jaxslt.estimate_llc(
            p.loss_fn,
            p.params,
            p.data,
            key=jax.random.key(1),
            step_size=1e-4,
            nbeta=p.nbeta,
            localization=p.localization,
            num_chains=2,
            num_draws=50,
            num_burnin=10,
            progress=False,
        )
        assert np.isfinite(float(result.llc_mean)), p.name
        assert not np.asarray(result.diverged).any(), p.name
