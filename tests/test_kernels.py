"""SGLD kernel: the exact update, per-leaf noise, dtypes; the blackjax adapter's convention."""

from __future__ import annotations

import blackjax
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from blackjax.util import generate_gaussian_noise

from jaxslt import from_blackjax, localized_posterior, sgld


def loss(params, batch):
    return jnp.mean(batch) * (jnp.sum(params["a"] ** 2) + jnp.sum(params["b"].astype(jnp.float32)))


PARAMS = {"a": jnp.array([0.5, -1.0, 2.0]), "b": jnp.ones((2, 2))}
BATCH = jnp.array([1.0, 3.0])


@pytest.mark.parametrize("jit", [False, True])
def test_sgld_step_is_the_documented_update(jit):
    eps, nbeta, gamma = 1e-2, 5.0, 0.5
    post = localized_posterior(loss, PARAMS, nbeta=nbeta, localization=gamma)
    kernel = sgld(post)
    position = jax.tree.map(lambda x: x + 0.1, PARAMS)
    key = jax.random.key(3)
    step = jax.jit(kernel.step) if jit else kernel.step
    state, info = step(key, kernel.init(position), BATCH, eps)
    # w + (ε/2)(−nβ∇L − γ(w − w*)) + √ε·ξ with ξ drawn per leaf by optax.tree.random_like
    grad_loss = jax.grad(loss)(position, BATCH)
    noise = optax.tree.random_like(key, position)
    expected = jax.tree.map(
        lambda w, g, w0, z: w + eps / 2 * (-nbeta * g - gamma * (w - w0)) + np.sqrt(eps) * z,
        position,
        grad_loss,
        PARAMS,
        noise,
    )
    chex.assert_trees_all_close(state.position, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(info.loss, loss(position, BATCH), rtol=1e-6)


def test_sgld_keeps_leaf_dtypes_and_structure():
    params = {"a": jnp.ones(4, jnp.bfloat16), "b": jnp.ones((2, 2), jnp.float32)}
    post = localized_posterior(loss, params, nbeta=5.0, localization=1.0)
    kernel = sgld(post)
    state, _ = kernel.step(jax.random.key(0), kernel.init(params), BATCH, 1e-3)
    chex.assert_trees_all_equal_shapes_and_dtypes(state.position, params)


def test_blackjax_sgld_gets_half_the_step_size():
    """blackjax's x + h∇log p + √(2h)ξ with h = ε/2 is exactly jaxslt's convention."""
    eps = 1e-2
    post = localized_posterior(loss, PARAMS, nbeta=5.0, localization=0.5)
    kernel = from_blackjax(blackjax.sgld, loss, post)
    position = jax.tree.map(lambda x: x + 0.1, PARAMS)
    key = jax.random.key(0)
    state, info = kernel.step(key, kernel.init(position, key), BATCH, eps)
    noise = generate_gaussian_noise(key, position)  # blackjax's own (flattening) draw
    expected = jax.tree.map(
        lambda w, g, z: w + eps / 2 * g + np.sqrt(eps) * z,
        position,
        post.grad_estimator(position, BATCH),
        noise,
    )
    chex.assert_trees_all_close(state.inner, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(info.loss, loss(position, BATCH), rtol=1e-6)
