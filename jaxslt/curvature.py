"""The local geometry of the loss at w*, and what it says a step size costs in accuracy.

On the quadratic model L = L* + ½·Σ h_i u_i² of the loss near w* (u = w − w*), SGLD with step ε,
nβ, γ and a minibatch gradient whose noise has variance c_i along direction i samples u_i with

    Var_i = (1 + ε·nβ²·c_i/4) / ( a_i·(1 − ε·a_i/4) ),   a_i = nβ·h_i + γ,

against the exact 1/a_i. λ̂ sums (nβ·h_i/2)·Var_i, so its excess over the exact posterior's
value is, with s = ε·(nβ·h_max + γ) the stiffness,

    Σ_i (nβ·h_i/(2a_i))·(ε·a_i/4 + ε·nβ²·c_i/4)/(1 − ε·a_i/4)
        ≤ (ε·nβ/8)·( tr ∇²L + nβ·tr Cov(∇L_B) ) / (1 − s/4)

(using nβ·h_i/a_i ≤ 1 and a_i ≤ a_max). ``step_bias`` evaluates that bound from a
``LocalGeometry`` measured at
w* by ``local_geometry``: h_max by power iteration, tr ∇²L by Hutchinson's estimator, and
tr Cov(∇L_B) from the differences of independent minibatch gradients (zero for full batch);
the traces and the noise are also measured where the chains went (``LocalGeometry``), and the
bound takes the larger of each pair.
The stiffness ε·(nβ·h_max + γ) bounds the worst direction: SGLD diverges at 4, and inflates
that direction's variance by 1/(1 − s/4) (+33% at s = 1). See docs/method.md §4.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxslt.noise import threefry2x32, tree_normal, tree_sign_normal
from jaxslt.types import PyTree

__all__ = [
    "HEALTHY_SHARE",
    "LocalGeometry",
    "StepBias",
    "healthy_step",
    "local_geometry",
    "max_hessian_eigenvalue",
    "step_bias",
]

# a step is flagged when its first-order excess exceeds this fraction of λ̂, or its stiffness
# exceeds STIFFNESS_LIMIT (the stiffest direction's variance then inflated by ≥ 33%)
MAX_RELATIVE_BIAS = 0.1
STIFFNESS_LIMIT = 1.0
# the share of both limits that advice (``healthy_step``) and calibration keep, so that a step
# chosen by either passes the warning limits with room to spare
HEALTHY_SHARE = 0.5


class LocalGeometry(NamedTuple):
    """The loss at w*: ``h_max`` (largest Hessian eigenvalue of L), ``trace_h`` (tr ∇²L) and
    ``grad_noise`` (tr Cov(∇L_B) of the run's minibatch gradient; 0 for full batch); and
    ``trace_h_draws``, tr ∇²L where the chains went, from the SGLD steps' own moves at the
    acceptance checks (``kernels.sgld_checks``; NaN without checks). At a singular w* (a deep
    linear network at 0, a normal crossing) the curvature at w* can be near 0 while the
    chains' is not: the bias bound takes the larger of the two traces. ``noise_gain``: how much
    more than SGLD the sampler is heated by minibatch noise: 1/f for SGHMC with friction f
    (its injected momentum noise is 2f per step against the gradient noise's (ε/2)·nβ²·c,
    and it does not subtract the latter as Chen et al. 2014 do), 1 otherwise.
    ``grad_noise_draws``: tr Cov(∇L_B) where the chains went, from the acceptance checks
    (``kernels.sgld_checks``: E||∇log p_B||² − E tr ∇²U = nβ²·tr Cov(∇L_B) at stationarity;
    NaN without checks). A model that fits its data exactly has no gradient noise at w* but
    plenty where the chains go (its loss there is λ/nβ above L_n(w*)): on the deep linear
    network of 10⁶ parameters, 580 along the draws against 0 at w*, the larger part of λ̂'s
    inflation. The bias bound takes the larger of the two."""

    h_max: jax.Array
    trace_h: jax.Array
    grad_noise: jax.Array
    trace_h_draws: Any = float("nan")
    noise_gain: Any = 1.0
    grad_noise_draws: Any = float("nan")


class StepBias(NamedTuple):
    """What a step costs at w*: ``stiffness`` s = ε·(nβ·h_max + γ) and ``excess``, the bound
    (ε·nβ/8)·(tr ∇²L + nβ·tr Cov(∇L_B))/(1 − s/4) on λ̂'s inflation, in λ̂'s units (inf from
    s = 4, where SGLD diverges)."""

    stiffness: float
    excess: float


def _hvp(loss_fn: Callable, params: PyTree, batch: PyTree) -> Callable:
    return lambda v: jax.jvp(lambda w: jax.grad(loss_fn)(w, batch), (params,), (v,))[1]


def max_hessian_eigenvalue(
    loss_fn: Callable, params: PyTree, batch: PyTree, *, key: jax.Array, num_iters: int = 30
) -> jax.Array:
    """Largest eigenvalue h_max of ∇²L_B at ``params`` by power iteration on Hessian-vector
    products (forward-over-reverse), from a random start; returns |Rayleigh quotient| (0 where
    the Hessian vanishes, e.g. a deep linear network at w* = 0)."""
    hvp = _hvp(loss_fn, params, batch)

    def normalize(v):  # a zero Hessian maps v to 0: keep it 0 rather than 0/0
        norm = optax.tree.norm(v)
        return jax.tree.map(lambda x: x / jnp.where(norm > 0, norm, 1.0), v)

    def body(v, _):
        return normalize(hvp(v)), None

    start = normalize(tree_normal(key, params))
    v, _ = jax.lax.scan(body, start, None, length=num_iters)
    return jnp.abs(optax.tree.vdot(v, hvp(v)))


def local_geometry(
    loss_fn: Callable,
    params: PyTree,
    data: PyTree,
    key: jax.Array,
    *,
    batch_size: int,
    sample_size: int = 1024,
    num_iters: int = 20,
    num_probes: int = 8,
) -> LocalGeometry:
    """Measure ``LocalGeometry`` at ``params`` (traceable; 2·num_iters Hessian-vector products
    and 2·num_probes minibatch gradients).

    h_max and tr ∇²L are taken on ``sample_size`` evenly strided examples, in one scan whose
    every step applies the Hessian to two vectors at once: the power iteration's (from a fixed
    generic start; h_max = |Rayleigh quotient| after ``num_iters`` steps) and a fresh Rademacher
    probe z = sign of a normal (Hutchinson: tr H = E[zᵀHz], averaged over the ``num_iters``
    probes). tr Cov(∇L_B) = E||g₁ − g₂||²/2 over ``num_probes`` pairs of independent minibatches
    of ``batch_size`` examples drawn as the sampler draws them (with replacement); 0 when
    ``batch_size`` is the whole data set. Every random number comes from the fused Threefry of
    ``jaxslt.noise``: each ``jax.random`` call site compiles its own Threefry loop on CPU (0.6–1.6
    s each, measured); the probes are ``sign_normal``'s signs, the same bits without the erfinv
    (MLP of 48 leaves: this program compiled in 9.6 s instead of 14.0 s). Hessian-vector
    products are central differences of the gradient with a step of 1% of the parameters' RMS
    scale (exact on a quadratic; O(step²) otherwise), so the whole measurement compiles one
    gradient.
    """
    n = jax.tree.leaves(data)[0].shape[0]
    m = min(n, sample_size)
    rows = jnp.arange(m) * (n // m)
    sample = jax.tree.map(lambda x: x[rows], data) if n > sample_size else data
    # central differences of the gradient, Hv ≈ (∇L(w + hv) − ∇L(w − hv))/2h for unit-scale v,
    # exact on a quadratic: one gradient site to compile (a forward-over-reverse product took
    # ~1.2 s more to compile on CPU), mapped over the four points so memory stays one gradient's
    size = sum(x.size for x in jax.tree.leaves(params))
    step = 1e-2 * (1.0 + optax.tree.norm(params) / np.sqrt(size))

    def hvp2(v, z):  # H·v and H·z, v of unit norm, z a ±1 probe (norm √size)
        points = jax.tree.map(
            lambda w, a, b: jnp.stack([w + step * a, w - step * a, w + step * b, w - step * b]),
            params, v, jax.tree.map(lambda x: x / np.sqrt(size), z),
        )  # fmt: skip
        g = jax.lax.map(lambda w: jax.grad(loss_fn)(w, sample), points)
        hv = jax.tree.map(lambda x: (x[0] - x[1]) / (2 * step), g)
        hz = jax.tree.map(lambda x: (x[2] - x[3]) * (np.sqrt(size) / (2 * step)), g)
        return hv, hz

    def normalize(v):  # a zero Hessian maps v to 0: keep it 0 rather than 0/0
        norm = optax.tree.norm(v)
        return jax.tree.map(lambda x: x / jnp.where(norm > 0, norm, 1.0), v)

    def body(carry, t):
        v, _, trace = carry
        z = tree_sign_normal(jax.random.fold_in(key, t), params)
        hv, hz = hvp2(v, z)
        rayleigh = optax.tree.vdot(v, hv).astype(jnp.float32)
        return (normalize(hv), rayleigh, trace + optax.tree.vdot(z, hz).astype(jnp.float32)), None

    leaves, treedef = jax.tree.flatten(params)
    start = normalize(  # generic and deterministic: not orthogonal to any eigenvector by design
        treedef.unflatten(
            [jnp.cos(1.2345 * jnp.arange(x.size, dtype=x.dtype) + i).reshape(x.shape)
             for i, x in enumerate(leaves)]
        )
    )  # fmt: skip
    zero = jnp.zeros((), jnp.float32)
    (_, rayleigh, trace), _ = jax.lax.scan(body, (start, zero, zero), jnp.arange(num_iters))
    h_max, trace_h = jnp.abs(rayleigh), trace / num_iters
    if batch_size >= n:
        grad_noise = jnp.zeros_like(trace_h)
    else:
        words = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
        shape = (num_probes, 2, batch_size)
        hi, lo = threefry2x32(
            words[..., 0], words[..., 1], jnp.ones(shape, jnp.uint32),
            jnp.arange(math.prod(shape), dtype=jnp.uint32).reshape(shape),
        )  # fmt: skip
        batches = ((hi ^ lo) % np.uint32(n)).astype(jnp.int32)
        grad2 = jax.vmap(jax.grad(loss_fn), in_axes=(None, 0))

        def pair(rows):
            g1, g2 = _unstack(grad2(params, jax.tree.map(lambda x: x[rows], data)))
            return 0.5 * optax.tree.norm(optax.tree.sub(g1, g2), squared=True)

        grad_noise = jnp.mean(jax.lax.map(pair, batches)).astype(jnp.float32)
    return LocalGeometry(h_max, trace_h, grad_noise, jnp.full_like(trace_h, jnp.nan))


def _unstack(tree: PyTree) -> tuple[PyTree, PyTree]:
    return jax.tree.map(lambda x: x[0], tree), jax.tree.map(lambda x: x[1], tree)


def _floats(geometry: LocalGeometry) -> tuple[float, float, float]:
    """h_max, the larger of the two traces of ∇²L and of the two gradient noises (at w*,
    along the draws), the noise times the sampler's gain."""
    trace_h = _larger(geometry.trace_h, geometry.trace_h_draws)
    noise = _larger(geometry.grad_noise, geometry.grad_noise_draws) * float(geometry.noise_gain)
    return float(geometry.h_max), trace_h, noise


def _larger(at_center: Any, along_draws: Any) -> float:
    """The measurement at w*, or the one along the draws where it is larger and finite."""
    along = float(along_draws)
    return max(float(at_center), along if math.isfinite(along) else 0.0)


def step_bias(
    geometry: LocalGeometry, *, step_size: float, nbeta: float, localization: float
) -> StepBias:
    """The stiffness s = ε·(nβ·h_max + γ) and the excess bound
    (ε·nβ/8)·(tr ∇²L + nβ·tr Cov(∇L_B))/(1 − s/4) of a step (see the module docstring)."""
    h_max, trace_h, noise = _floats(geometry)
    stiffness = step_size * (nbeta * h_max + localization)
    first_order = step_size * nbeta * (max(trace_h, 0.0) + nbeta * noise) / 8
    excess = first_order / (1 - stiffness / 4) if stiffness < 4 else float("inf")
    return StepBias(stiffness, excess)


def healthy_step(
    geometry: LocalGeometry, *, nbeta: float, localization: float, llc: float
) -> float:
    """The largest ε whose stiffness stays ≤ ``STIFFNESS_LIMIT``/2 and whose excess bound stays
    ≤ ``MAX_RELATIVE_BIAS``/2 of ``llc`` (half the warning limits, so the advice clears them)."""
    h_max, trace_h, noise = _floats(geometry)
    stiff = nbeta * h_max + localization  # stiffness per unit ε
    slope = nbeta * (max(trace_h, 0.0) + nbeta * noise) / 8  # first-order excess per unit ε
    stiffness = HEALTHY_SHARE * STIFFNESS_LIMIT
    limits = [stiffness / stiff if stiff > 0 else float("inf")]
    if llc > 0 and slope > 0:  # at stiffness ≤ the limit above, 1/(1 − s/4) ≤ 1/(1 − 1/8)
        limits.append(HEALTHY_SHARE * MAX_RELATIVE_BIAS * llc * (1 - stiffness / 4) / slope)
    return min(limits)
