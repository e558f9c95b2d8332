"""Sampling kernels with blackjax's ``init``/``step`` interface, plus a loss in the step info.

Every kernel here is a ``SamplingKernel(init, step)``:

    state = kernel.init(position, rng_key)
    state, info = kernel.step(rng_key, state, minibatch, step_size)

``info.loss`` is the minibatch loss L_B(w_t) at the position *before* the update, on the same
batch the gradient used: the loss trace LLC estimation averages. ``step_size`` is always ε, the
noise variance of an SGLD step (jaxslt's convention); kernels that speak blackjax's language get
its h = ε/2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import blackjax
import jax
import jax.numpy as jnp
import optax

from jaxslt.posterior import LocalizedPosterior

PyTree = Any


class StepInfo(NamedTuple):
    """What one transition reports: ``loss`` = L_B(w_t) before the update."""

    loss: jax.Array


class SamplingKernel(NamedTuple):
    """``init(position, rng_key) -> state``; ``step(rng_key, state, minibatch, step_size)``."""

    init: Callable[[PyTree, jax.Array], Any]
    step: Callable[[jax.Array, Any, PyTree, jax.Array], tuple[Any, StepInfo]]


class SGLDState(NamedTuple):
    position: PyTree


def sgld(posterior: LocalizedPosterior) -> SamplingKernel:
    """Stochastic-gradient Langevin dynamics (Welling & Teh 2011) in jaxslt's convention:

        w ← w + (ε/2)·ĝ(w) + N(0, ε·I),   ĝ = −nβ·∇L_B(w) − γ·(w − w*)

    i.e. blackjax's x + h·∇log p + sqrt(2h)·ξ with h = ε/2. The Gaussian noise is drawn per pytree
    leaf (``optax.tree.random_like``) in each leaf's own dtype and sharding, so sharded or bf16
    parameters are never flattened into one vector (blackjax's own sgld ravels the tree). The
    loss and the gradient come from one fused ``value_and_grad``.
    """

    def init(position: PyTree, rng_key: jax.Array | None = None) -> SGLDState:
        del rng_key
        return SGLDState(position)

    def step(rng_key, state: SGLDState, minibatch, step_size):
        loss, grad = posterior.value_and_grad(state.position, minibatch)
        noise = optax.tree.random_like(rng_key, state.position, jax.random.normal)
        half = 0.5 * step_size
        scale = jnp.sqrt(step_size)
        position = jax.tree.map(
            lambda w, g, z: (w + half * g + scale * z).astype(w.dtype),
            state.position,
            grad,
            noise,
        )
        return SGLDState(position), StepInfo(loss)

    return SamplingKernel(init, step)


class BlackjaxState(NamedTuple):
    """A blackjax SG-MCMC state (a bare position for sgld/sghmc, SGNHTState for sgnht)."""

    inner: Any


def _position(inner: Any) -> PyTree:
    return inner.position if hasattr(inner, "position") else inner


def from_blackjax(
    algorithm: Callable[..., Any], loss_fn: Callable, posterior: LocalizedPosterior, **kwargs
) -> SamplingKernel:
    """Run one of blackjax's SG-MCMC algorithms (``blackjax.sgld``, ``sghmc``, ``sgnht``) here.

    blackjax's step returns no loss, so the trace costs one extra forward pass on the batch;
    the step gets h = ε/2. Its noise is drawn by flattening the whole pytree (see module notes):
    fine for small models, not for sharded or bf16 ones — prefer jaxslt's own ``sgld`` there.
    """
    alg = algorithm(posterior.grad_estimator, **kwargs)

    def init(position: PyTree, rng_key: jax.Array) -> BlackjaxState:
        try:
            return BlackjaxState(alg.init(position, rng_key))
        except TypeError:  # sgld's init takes the position only
            return BlackjaxState(alg.init(position))

    def step(rng_key, state: BlackjaxState, minibatch, step_size):
        loss = loss_fn(_position(state.inner), minibatch)
        inner = alg.step(rng_key, state.inner, minibatch, 0.5 * step_size)
        return BlackjaxState(inner), StepInfo(loss)

    return SamplingKernel(init, step)


def _blackjax(name: str) -> Callable[[Callable, LocalizedPosterior], SamplingKernel]:
    def factory(loss_fn: Callable, posterior: LocalizedPosterior) -> SamplingKernel:
        return from_blackjax(getattr(blackjax, name), loss_fn, posterior)

    factory.__name__ = f"blackjax_{name}"
    return factory


SAMPLERS: dict[str, Callable[[Callable, LocalizedPosterior], SamplingKernel]] = {
    "sgld": lambda loss_fn, posterior: sgld(posterior),
    "blackjax_sgld": _blackjax("sgld"),
    "blackjax_sghmc": _blackjax("sghmc"),
    "blackjax_sgnht": _blackjax("sgnht"),
}


def make_kernel(sampler: str | Callable, loss_fn: Callable, posterior: LocalizedPosterior):
    """Resolve ``sampler`` (a name in ``SAMPLERS`` or a factory ``(loss_fn, posterior) ->
    SamplingKernel``) into a kernel for this posterior."""
    factory = SAMPLERS[sampler] if isinstance(sampler, str) else sampler
    return factory(loss_fn, posterior)
