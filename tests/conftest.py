"""Shared fixtures: small problems whose exact answers are known."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

# A regular quadratic model L(w) = L0 + ½ Σ_i h_i (w_i − w*_i)² with w* ≠ 0 and L0 ≠ 0, so that
# both the centring on w* and the subtraction of L_n(w*) are exercised. The loss ignores the
# data (full-batch SGLD on it is exactly the Gaussian AR(1) process of jaxslt.truth).
HESSIAN = np.array([0.5, 2.0, 8.0])
CENTER = np.array([0.3, -1.2, 2.0])
L0 = 0.7


def quadratic_loss(params, batch):
    del batch
    h = jnp.asarray(HESSIAN, params["w"].dtype)
    c = jnp.asarray(CENTER, params["w"].dtype)
    return L0 + 0.5 * jnp.sum(h * (params["w"] - c) ** 2)


def quadratic_params():
    return {"w": jnp.asarray(CENTER, jnp.float32)}


def dummy_data(n: int = 64):
    return jnp.zeros((n, 1), jnp.float32)
