"""The localized tempered posterior that LLC estimation samples.

    p(w) ∝ exp( −nβ·L_n(w) − (γ/2)·||w − w*||² )

with L_n the mean loss over the n examples, nβ ("nbeta") the weight on the mean loss and γ
("localization") the strength of the Gaussian localizer centred on the checkpoint w*.
Everything here is a pure function of pytrees; minibatch versions replace L_n by the mean loss
L_B over a minibatch, which is an unbiased estimate of L_n and of its gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxslt.types import PyTree

__all__ = [
    "LocalizedPosterior",
    "LossFn",
    "default_nbeta",
    "full_data_loss",
    "localized_posterior",
    "map_chunks",
    "running_llc",
    "sq_distance",
]

LossFn = Callable[[PyTree, PyTree], jax.Array]


def default_nbeta(n: int) -> float:
    """nβ = n / log n (β* = 1/log n, Watanabe's WBIC temperature), with n the data-set size.

    Args:
      n: the number of examples (at least 2).

    Returns:
      n / log n.

    Raises:
      ValueError: n < 2.

    Examples:
      >>> import math
      >>> from jaxslt import default_nbeta
      >>> round(default_nbeta(1000), 2)
      144.76
      >>> default_nbeta(1000) == 1000 / math.log(1000)
      True
    """
    if n < 2:
        raise ValueError(f"nbeta=None needs at least 2 examples to form n/log n; got n={n}")
    return n / math.log(n)


def sq_distance(w: PyTree, center: PyTree) -> jax.Array:
    """||w − w*||² summed over every leaf, accumulated in float32 or wider."""
    leaves = jax.tree.leaves(
        jax.tree.map(
            lambda a, b: jnp.sum(
                jnp.square((a - b).astype(jnp.promote_types(a.dtype, jnp.float32)))
            ),
            w,
            center,
        )
    )
    return sum(leaves, jnp.zeros((), leaves[0].dtype if leaves else jnp.float32))


class LocalizedPosterior(NamedTuple):
    """Pure functions of (position, minibatch) for the localized tempered posterior.

    p(w) ∝ exp(−nβ·L_n(w) − (γ/2)·||w − w*||²); each function takes a minibatch, on which
    L_B replaces L_n (exact with the full data as the batch).

    Attributes:
      logdensity_fn: ``(w, batch) ->`` −nβ·L_B(w) − (γ/2)·||w − w*||² (unnormalised).
      grad_estimator: ``(w, batch) ->`` ∇ log p estimated on the batch,
        −nβ·∇L_B(w) − γ·(w − w*). This is the form blackjax's SG-MCMC kernels take
        (``blackjax.sgld(grad_estimator)``), with temperature 1: nβ lives in the likelihood
        and γ in the prior.
      value_and_grad: ``(w, batch) ->`` (L_B(w), ∇ log p estimate), fused in one backward
        pass; the loss is what the sampler records in its trace.
      logdensity_from_loss: ``(w, loss) ->`` −nβ·loss − (γ/2)·||w − w*||², for kernels that
        already hold the loss (MALA) and need no second forward pass.
      localizer_grad: ``w ->`` −γ·(w − w*), the localizer's part of the gradient
        (preconditioners subtract it to see the loss gradient alone).
      logdensity_change: ``(w, w′, loss, loss′) ->`` log p(w′) − log p(w) from the two
        losses, taken in differences, −nβ·(loss′ − loss) − (γ/2)·Σ(w′ − w)·(w′ + w − 2w*):
        each of the two log densities holds (γ/2)·||w − w*||², up to ~d/2, whose float32
        rounding their plain difference would keep (the Metropolis ratios of
        ``jaxslt.kernels``).
    """

    logdensity_fn: Callable[[PyTree, PyTree], jax.Array]
    grad_estimator: Callable[[PyTree, PyTree], PyTree]
    value_and_grad: Callable[[PyTree, PyTree], tuple[jax.Array, PyTree]]
    logdensity_from_loss: Callable[[PyTree, jax.Array], jax.Array]
    localizer_grad: Callable[[PyTree], PyTree]
    logdensity_change: Callable[[PyTree, PyTree, jax.Array, jax.Array], jax.Array]


def localized_posterior(
    loss_fn: LossFn, center: PyTree, *, nbeta: float | jax.Array, localization: float | jax.Array
) -> LocalizedPosterior:
    """Build the localized tempered posterior around ``center`` = w*.

    p(w) ∝ exp(−nβ·L_n(w) − (γ/2)·||w − w*||²), as pure functions of (w, minibatch).

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, the mean loss over the batch.
      center: w*, the pytree the localizer pulls towards.
      nbeta: nβ, the weight on the mean loss; may be traced (changing it does not retrace a
        jitted caller).
      localization: γ ≥ 0; may be traced too.

    Returns:
      A ``LocalizedPosterior`` of pure functions (log density, gradient estimate, fused
      value-and-gradient).

    Examples:
      With L(w) = ½||w||² (the batch unused), w* = 0, nβ = 10 and γ = 2, at w = (1, 1):
      log p = −10·1 − (2/2)·2 = −12 and ∇log p = −(10 + 2)·w.

      >>> import jax.numpy as jnp
      >>> from jaxslt import localized_posterior
      >>> loss = lambda w, batch: 0.5 * jnp.sum(w**2)
      >>> post = localized_posterior(loss, jnp.zeros(2), nbeta=10.0, localization=2.0)
      >>> float(post.logdensity_fn(jnp.ones(2), None))
      -12.0
      >>> post.grad_estimator(jnp.ones(2), None).tolist()
      [-12.0, -12.0]
    """

    def logdensity_from_loss(w, loss):
        return -nbeta * loss - 0.5 * localization * sq_distance(w, center)

    def logdensity_fn(w, batch):
        return logdensity_from_loss(w, loss_fn(w, batch))

    def logdensity_change(w, w_new, loss, loss_new):
        def leaf(a, b, c):  # ||b − c||² − ||a − c||² = (b − a)·(b + a − 2c), in float32 or wider
            wide = jnp.promote_types(a.dtype, jnp.float32)
            a, b, c = (x.astype(wide) for x in (a, b, c))
            return jnp.sum((b - a) * (b + a - 2 * c))

        pull = sum(jax.tree.leaves(jax.tree.map(leaf, w, w_new, center)))
        wide = jnp.promote_types(jnp.result_type(loss), jnp.float32)  # bf16 losses subtracted wide
        losses = jnp.asarray(loss_new, wide) - jnp.asarray(loss, wide)
        return -nbeta * losses - 0.5 * localization * pull

    def localizer_grad(w):
        return jax.tree.map(lambda a, b: (-localization * (a - b)).astype(a.dtype), w, center)

    def value_and_grad(w, batch):
        loss, loss_grad = jax.value_and_grad(loss_fn)(w, batch)
        grad = jax.tree.map(
            lambda g, a, b: (-nbeta * g - localization * (a - b)).astype(a.dtype),
            loss_grad,
            w,
            center,
        )
        return loss, grad

    def grad_estimator(w, batch):
        return value_and_grad(w, batch)[1]

    return LocalizedPosterior(
        logdensity_fn, grad_estimator, value_and_grad, logdensity_from_loss, localizer_grad,
        logdensity_change,
    )  # fmt: skip


def running_llc(loss_trace: jax.Array, init_loss: jax.Array, nbeta: jax.Array) -> jax.Array:
    """Running estimate nβ·(Σ_{s≤t} (L_s − L_n(w*)) / t) along the last axis (the draws), the
    per-chain λ̂ after t kept draws; differences are taken before summing, for accuracy."""
    t = jnp.arange(1, loss_trace.shape[-1] + 1)
    excess = loss_trace - jnp.asarray(init_loss)[..., None, None]
    return jnp.asarray(nbeta)[..., None, None] * jnp.cumsum(excess, axis=-1) / t


def map_chunks(fn: Callable[[PyTree], Any], data: PyTree, chunk_size: int) -> tuple[Any, Any]:
    """``fn`` over consecutive chunks of ``chunk_size`` examples (``lax.map``: one chunk live at a
    time). Returns (outputs of the full chunks stacked, output of the shorter last chunk or
    ``None`` when ``chunk_size`` divides n)."""
    n = jax.tree.leaves(data)[0].shape[0]
    num_full = n // chunk_size
    head = jax.tree.map(
        lambda x: x[: num_full * chunk_size].reshape(num_full, chunk_size, *x.shape[1:]), data
    )
    rest = None
    if n % chunk_size:
        rest = fn(jax.tree.map(lambda x: x[num_full * chunk_size :], data))
    return jax.lax.map(fn, head), rest


def full_data_loss(loss_fn: LossFn, params: PyTree, data: PyTree, chunk_size: int) -> jax.Array:
    """L_n(w) = (1/n) Σ_i l_i(w) over all n examples, evaluated in chunks of ``chunk_size``.

    ``loss_fn`` returns a batch mean, so chunk means are recombined weighted by chunk length. Only
    one chunk's forward pass is live at a time (``lax.map``), never the whole data set.
    """
    n = jax.tree.leaves(data)[0].shape[0]
    chunk_size = max(1, min(chunk_size, n))

    def chunk_loss(chunk):
        loss = loss_fn(params, chunk)
        return loss.astype(jnp.promote_types(loss.dtype, jnp.float32))

    full, rest = map_chunks(chunk_loss, data, chunk_size)
    total = jnp.sum(full) * chunk_size
    if rest is not None:
        total = total + rest * (n % chunk_size)
    return total / n
