"""The localized tempered posterior's pure functions."""

from __future__ import annotations

import math

import blackjax
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxslt import default_nbeta, localized_posterior
from jaxslt.posterior import full_data_loss


def per_example_loss(params, example):
    x, y = example
    return 0.5 * (y - x @ params["w"] - params["b"]) ** 2


def mean_loss(params, batch):
    return jnp.mean(jax.vmap(per_example_loss, in_axes=(None, 0))(params, batch))


def _setup(n=50):
    kx, ky = jax.random.split(jax.random.key(0))
    data = (jax.random.normal(kx, (n, 3)), jax.random.normal(ky, (n,)))
    center = {"w": jnp.array([0.1, -0.2, 0.3]), "b": jnp.array(0.5)}
    w = {"w": jnp.array([0.4, 0.0, -0.1]), "b": jnp.array(-0.2)}
    return data, center, w


def test_logdensity_is_minus_nbeta_loss_minus_localizer():
    data, center, w = _setup()
    post = localized_posterior(mean_loss, center, nbeta=30.0, localization=2.0)
    sq = 0.3**2 + 0.2**2 + 0.4**2 + 0.7**2
    expected = -30.0 * mean_loss(w, data) - 0.5 * 2.0 * sq
    np.testing.assert_allclose(post.logdensity_fn(w, data), expected, rtol=1e-6)


@given(st.integers(0, 2**31 - 1))
@settings(max_examples=20, deadline=None)
def test_logdensity_change_is_the_difference_of_log_densities(seed):
    """log p(w′) − log p(w) from the two losses, in differences: the same algebra as the plain
    difference of the two log densities (equal to float32 rounding at 4 parameters, where the
    plain difference loses nothing)."""
    data, center, _ = _setup()
    k1, k2 = jax.random.split(jax.random.key(seed))
    w, w_new = (jax.tree.map(lambda c, k=k: c + jax.random.normal(k, c.shape), center)
                for k in (k1, k2))  # fmt: skip
    post = localized_posterior(mean_loss, center, nbeta=30.0, localization=2.0)
    loss, loss_new = mean_loss(w, data), mean_loss(w_new, data)
    plain = post.logdensity_from_loss(w_new, loss_new) - post.logdensity_from_loss(w, loss)
    change = post.logdensity_change(w, w_new, loss, loss_new)
    np.testing.assert_allclose(change, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("jit", [False, True])
def test_gradient_estimator_is_the_gradient_of_the_logdensity(jit):
    data, center, w = _setup()
    post = localized_posterior(mean_loss, center, nbeta=30.0, localization=2.0)
    grad = jax.jit(post.grad_estimator) if jit else post.grad_estimator
    chex.assert_trees_all_close(grad(w, data), jax.grad(post.logdensity_fn)(w, data), rtol=1e-5)
    loss, g = post.value_and_grad(w, data)
    np.testing.assert_allclose(loss, mean_loss(w, data), rtol=1e-6)
    chex.assert_trees_all_close(g, grad(w, data), rtol=1e-6)


def test_matches_blackjax_gradient_estimator_with_nbeta_as_data_size():
    """blackjax: ∇[logprior + data_size·mean_i loglik_i]; ours with logprior = −γ/2||w−w*||²,
    loglik_i = −l_i and data_size = nβ."""
    data, center, w = _setup()
    nbeta, gamma = 17.0, 3.0

    def logprior(p):
        return (
            -0.5
            * gamma
            * sum(
                jnp.sum((a - b) ** 2)
                for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(center), strict=True)
            )
        )

    def loglik(p, example):
        return -per_example_loss(p, example)

    reference = blackjax.sgmcmc.gradients.grad_estimator(logprior, loglik, nbeta)
    ours = localized_posterior(mean_loss, center, nbeta=nbeta, localization=gamma)
    chex.assert_trees_all_close(ours.grad_estimator(w, data), reference(w, data), rtol=1e-5)


def test_gradient_keeps_leaf_dtypes():
    center = {"a": jnp.ones(3, jnp.bfloat16), "b": jnp.ones(2, jnp.float32)}
    post = localized_posterior(
        lambda p, b: jnp.sum(p["a"].astype(jnp.float32) ** 2) + jnp.sum(p["b"] ** 2),
        center,
        nbeta=10.0,
        localization=1.0,
    )
    g = post.grad_estimator(center, None)
    chex.assert_trees_all_equal_dtypes(g, center)


@settings(max_examples=10)
@given(n=st.integers(1, 40), chunk=st.integers(1, 50))
def test_chunked_full_data_loss_equals_the_plain_mean(n, chunk):
    data, _, w = _setup(n)
    np.testing.assert_allclose(
        full_data_loss(mean_loss, w, data, chunk), mean_loss(w, data), rtol=2e-6
    )


def test_default_nbeta_is_n_over_log_n():
    assert default_nbeta(10_000) == pytest.approx(10_000 / math.log(10_000))
    with pytest.raises(ValueError, match="at least 2 examples"):
        default_nbeta(1)
