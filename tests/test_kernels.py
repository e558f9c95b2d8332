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

from jaxslt.kernels import from_blackjax, mala, rmsprop_sgld, sgld, sgld_acceptance, sgnht
from jaxslt.posterior import localized_posterior


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


def _quadratic(params, batch):
    del batch
    return 0.5 * jnp.sum(jnp.array([1.0, 4.0]) * params["w"] ** 2)


def test_rmsprop_sgld_freezes_its_preconditioner_after_adapt_steps():
    post = localized_posterior(loss, PARAMS, nbeta=5.0, localization=0.5)
    kernel = rmsprop_sgld(post, adapt_steps=3)

    def body(state, key):
        state, _ = kernel.step(key, state, BATCH, 1e-3)
        return state, state

    _, states = jax.lax.scan(body, kernel.init(PARAMS), jax.random.split(jax.random.key(0), 6))
    np.testing.assert_array_equal(states.count, [1, 2, 3, 3, 3, 3])
    for t in (3, 4, 5):
        chex.assert_trees_all_equal(
            jax.tree.map(lambda v, t=t: v[t], states.square_avg),
            jax.tree.map(lambda v: v[2], states.square_avg),
        )
    assert not np.array_equal(states.square_avg["a"][0], states.square_avg["a"][1])


def test_rmsprop_sgld_step_is_the_documented_update():
    decay, eps_pc, step = 0.9, 1e-3, 1e-2
    post = localized_posterior(loss, PARAMS, nbeta=5.0, localization=0.5)
    kernel = rmsprop_sgld(post, decay=decay, eps=eps_pc)
    state = kernel.init(PARAMS)
    state = state._replace(
        position=jax.tree.map(lambda x: x + 0.1, PARAMS),
        square_avg=jax.tree.map(lambda x: jnp.full(x.shape, 2.0), PARAMS),
        count=jnp.array(4),
    )
    key = jax.random.key(1)
    new, _ = kernel.step(key, state, BATCH, step)
    grad = post.grad_estimator(state.position, BATCH)
    loss_grad = jax.tree.map(lambda g: -5.0 * g, jax.grad(loss)(state.position, BATCH))
    noise = optax.tree.random_like(key, state.position)

    def expected(w, g, lg, z):
        v = decay * 2.0 + (1 - decay) * lg**2
        precond = 1 / (jnp.sqrt(v / (1 - decay**5)) + eps_pc)
        return w + step / 2 * precond * g + jnp.sqrt(step * precond) * z

    chex.assert_trees_all_close(
        new.position,
        jax.tree.map(expected, state.position, grad, loss_grad, noise),
        rtol=1e-5,
    )


def test_rmsprop_sgld_with_frozen_preconditioner_samples_its_exact_gaussian():
    """Frozen G: each coordinate is SGLD with step ε·G_i, stationary variance
    1/(a_i(1 − εG_i a_i/4)); compare each chain's mean loss with its own exact expectation."""
    nbeta, eps, chains = 50.0, 2e-2, 256
    h = jnp.array([1.0, 4.0])
    center = {"w": jnp.zeros(2)}
    post = localized_posterior(_quadratic, center, nbeta=nbeta, localization=0.0)
    kernel = rmsprop_sgld(post, adapt_steps=200)

    def chain(key):
        def body(state, k):
            state, info = kernel.step(k, state, None, eps)
            return state, info.loss

        state, losses = jax.lax.scan(body, kernel.init(center), jax.random.split(key, 6000))
        return state, losses[1000:].mean()

    states, means = jax.jit(jax.vmap(chain))(jax.random.split(jax.random.key(0), chains))
    v = states.square_avg["w"] / (1 - 0.99**200)
    precond = 1 / (jnp.sqrt(v) + 1.0)
    a = nbeta * h
    expected = jnp.sum(0.5 * h / (a * (1 - eps * precond * a / 4)), axis=-1)
    diff = np.asarray(means - expected)
    assert abs(diff.mean()) < 4 * diff.std(ddof=1) / np.sqrt(chains)
    assert np.all(precond < 0.5)  # the preconditioner really did rescale the step


def test_sgnht_step_updates_the_thermostat_from_the_kinetic_energy():
    post = localized_posterior(loss, PARAMS, nbeta=5.0, localization=0.5)
    kernel = sgnht(post, friction=0.2)
    key, eps = jax.random.key(2), 1e-2
    state = kernel.init(PARAMS, jax.random.key(5))
    assert float(state.thermostat) == pytest.approx(0.2)
    new, _ = kernel.step(key, state, BATCH, eps)
    h = np.sqrt(eps / 2)
    grad = post.grad_estimator(PARAMS, BATCH)
    noise = optax.tree.random_like(key, PARAMS)
    momentum = jax.tree.map(
        lambda p, g, z: (1 - 0.2) * p + h * g + np.sqrt(0.4) * z, state.momentum, grad, noise
    )
    chex.assert_trees_all_close(new.momentum, momentum, rtol=1e-5)
    chex.assert_trees_all_close(
        new.position, jax.tree.map(lambda w, p: w + h * p, PARAMS, momentum), rtol=1e-5
    )
    kinetic = sum(float(jnp.sum(p**2)) for p in jax.tree.leaves(momentum)) / 7
    assert float(new.thermostat) == pytest.approx(0.2 + eps / 2 * ((1 - 0.1) * kinetic - 1))


def test_mala_accept_probability_and_rejection():
    post = localized_posterior(_quadratic, {"w": jnp.zeros(2)}, nbeta=10.0, localization=1.0)
    kernel = mala(post)
    w = {"w": jnp.array([0.3, -0.2])}
    state = kernel.init(w, None, None)
    key, eps = jax.random.key(4), 0.05
    new, info = kernel.step(key, state, None, eps)
    k_prop, _ = jax.random.split(key)
    g = post.grad_estimator(w, None)
    prop = jax.tree.map(lambda x, gx, z: x + eps / 2 * gx + np.sqrt(eps) * z, w, g,
                        optax.tree.random_like(k_prop, w))  # fmt: skip
    gp = post.grad_estimator(prop, None)

    def log_q(to, frm, gf):
        return -sum(
            float(jnp.sum((a - b - eps / 2 * c) ** 2))
            for a, b, c in zip(*map(jax.tree.leaves, (to, frm, gf)), strict=True)
        ) / (2 * eps)

    log_ratio = (
        float(post.logdensity_fn(prop, None) - post.logdensity_fn(w, None))
        + log_q(w, prop, gp)
        - log_q(prop, w, g)
    )
    assert float(info.accept_prob) == pytest.approx(min(1.0, np.exp(log_ratio)), rel=1e-4)
    assert float(info.loss) == pytest.approx(float(_quadratic(w, None)))
    # the Metropolis decision: accept iff U(key_accept) < α, and then the state is the proposal,
    # else the old one — over fixed keys that give both outcomes
    outcomes = set()
    for seed in range(8):
        key = jax.random.key(seed)
        new, info = kernel.step(key, state, None, eps)
        k_prop, k_accept = jax.random.split(key)
        prop = jax.tree.map(lambda x, gx, z: x + eps / 2 * gx + np.sqrt(eps) * z, w, g,
                            optax.tree.random_like(k_prop, w))  # fmt: skip
        accepted = float(jax.random.uniform(k_accept)) < float(info.accept_prob)
        expected = prop["w"] if accepted else w["w"]
        np.testing.assert_allclose(new.position["w"], expected, rtol=1e-6, atol=1e-7)
        assert float(new.loss) == pytest.approx(float(_quadratic({"w": expected}, None)), rel=1e-5)
        outcomes.add(accepted)
    assert outcomes == {True, False}

    def cliff(params, batch):  # every proposal lands where the loss is NaN
        return jnp.where(jnp.abs(params["w"][0]) > 1e-6, jnp.nan, 0.0) + 0 * _quadratic(
            params, batch
        )

    kernel = mala(localized_posterior(cliff, {"w": jnp.zeros(2)}, nbeta=10.0, localization=1.0))
    state = kernel.init({"w": jnp.zeros(2)}, None, None)
    new, info = kernel.step(key, state, None, eps)
    assert float(info.accept_prob) == 0.0
    chex.assert_trees_all_equal(new, state)


def test_sgld_acceptance_equals_mala_acceptance_of_the_same_proposal():
    post = localized_posterior(_quadratic, {"w": jnp.zeros(2)}, nbeta=10.0, localization=1.0)
    position = {"w": jnp.array([0.3, -0.2])}
    probs = []
    for seed in range(4):
        key, eps = jax.random.key(seed), 0.05
        _, info = mala(post).step(key, mala(post).init(position, None, None), None, eps)
        kernel = sgld(post)
        new, _ = kernel.step(jax.random.split(key)[0], kernel.init(position), None, eps)
        prob = sgld_acceptance(post, position, new.position, None, eps)
        assert float(prob) == pytest.approx(float(info.accept_prob), rel=1e-4, abs=1e-7)
        probs.append(float(prob))
    assert any(0 < p < 1 for p in probs)
