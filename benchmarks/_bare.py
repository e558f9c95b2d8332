"""The floor the benchmarks compare jaxslt with: SGLD written by hand as a jitted JAX loop.

``bare_sgld`` is what a user would write without jaxslt: ``value_and_grad`` and the update
w ← w − (ε/2)·(nβ·∇L_B(w) + γ·(w − w*)) + √ε·ξ in ``lax.scan``, i.i.d. minibatch indices, one
noise key per leaf, chains ``vmap``ped (or, ``sequential=True``, one after another with
``lax.map``). No full-data loss, no checks, no statistics: the least work the task needs.
``normal`` is the Gaussian sampler: ``jax.random.normal`` (what a user writes) or
``jaxslt.noise.normal`` (the same numbers, fused into the update).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def bare_sgld(
    loss_fn, params, data, key, *, step_size, nbeta, gamma, chains, steps, batch,
    normal=jax.random.normal, sequential=False,
):  # fmt: skip
    """Minibatch losses L_B(w_t), shape (chains, steps)."""
    n = jax.tree.leaves(data)[0].shape[0]

    def one_chain(key):
        def step(w, k):
            kb, kn = jax.random.split(k)
            idx = jax.random.randint(kb, (batch,), 0, n)
            minibatch = jax.tree.map(lambda x: x[idx], data)
            loss, g = jax.value_and_grad(loss_fn)(w, minibatch)
            noise = optax.tree.random_like(kn, w, normal)
            w = jax.tree.map(
                lambda w, g, w0, z: w - step_size / 2 * (nbeta * g + gamma * (w - w0))
                + jnp.sqrt(step_size) * z,
                w, g, params, noise,
            )  # fmt: skip
            return w, loss

        return jax.lax.scan(step, params, jax.random.split(key, steps))[1]

    keys = jax.random.split(key, chains)
    return jax.lax.map(one_chain, keys) if sequential else jax.vmap(one_chain)(keys)
