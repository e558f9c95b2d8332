"""Sampling kernels with blackjax's ``init``/``step`` interface, plus a loss in the step info.

Every kernel here is a ``SamplingKernel(init, step)``:

    state = kernel.init(position, rng_key, minibatch)
    state, info = kernel.step(rng_key, state, minibatch, step_size)

``info.loss`` is the minibatch loss L_B(w_t) at the position *before* the update, on the same
batch the gradient used: the loss trace LLC estimation averages. ``info.accept_prob`` is the
Metropolis acceptance probability for adjusted kernels (None otherwise).

``step_size`` is always ε, jaxslt's SGLD noise variance. Kernels with momentum use the step
h = √(ε/2) and a dimensionless ``friction`` f ∈ (0, 1] (the momentum's decay per step), chosen
so that f = 1 is exactly SGLD with step size ε. blackjax kernels get blackjax's h = ε/2.
All noise is drawn per pytree leaf (``jaxslt.noise.tree_normal``: ``jax.random.normal``'s
numbers, fused into the update), in each leaf's dtype and sharding; blackjax's own kernels
flatten the tree instead (fine for small models only).

``sampler=`` names resolve through a registry (``SAMPLERS``, ``register_sampler``): each entry
is a factory ``(loss_fn, posterior, **options) -> SamplingKernel`` with its
``SamplerCapabilities``, which is all the estimator asks of a sampler (full batch or not, MALA
checks or not, an option set to the burn-in, its minibatch-noise gain); no other module tests a
sampler's name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxslt.noise import tree_normal
from jaxslt.posterior import LocalizedPosterior
from jaxslt.types import PyTree

__all__ = [
    "DEFAULT_FRICTION",
    "SAMPLERS",
    "BlackjaxState",
    "MALAState",
    "RMSPropSGLDState",
    "ResolvedKernel",
    "SGHMCState",
    "SGLDState",
    "SGNHTState",
    "SamplerCapabilities",
    "SamplingKernel",
    "StepInfo",
    "from_blackjax",
    "langevin_log_ratio",
    "make_kernel",
    "mala",
    "register_sampler",
    "rmsprop_sgld",
    "sampler_capabilities",
    "sghmc",
    "sgld",
    "sgld_acceptance",
    "sgld_checks",
    "sgnht",
    "state_position",
    "unregister_sampler",
]


class StepInfo(NamedTuple):
    """What one transition reports.

    Attributes:
      loss: L_B(w_t), the minibatch loss at the position before the update (the trace).
      accept_prob: the Metropolis acceptance probability, for adjusted kernels; else None.
      grad: ∇log p(w_t) on the batch where the kernel has it (reused by in-loop checks; XLA
        drops it when nothing reads it); else None.
    """

    loss: jax.Array
    accept_prob: jax.Array | None = None
    grad: PyTree = None


class SamplingKernel(NamedTuple):
    """A sampler in blackjax's ``init``/``step`` form, with the loss in the step info.

    Attributes:
      init: ``init(position, rng_key, minibatch) -> state``.
      step: ``step(rng_key, state, minibatch, step_size) -> (state, StepInfo)``; ``step_size``
        is ε, jaxslt's SGLD noise variance.
    """

    init: Callable[..., Any]
    step: Callable[[jax.Array, Any, PyTree, jax.Array], tuple[Any, StepInfo]]


def _axpy(tree: PyTree, *terms: tuple[Any, PyTree]) -> PyTree:
    """tree + Σ c·t over (c, t) terms, leafwise, keeping each leaf's dtype."""

    def leaf(w, *ts):
        out = w
        for (c, _), t in zip(terms, ts, strict=True):
            out = out + c * t
        return out.astype(w.dtype)

    return jax.tree.map(leaf, tree, *(t for _, t in terms))


class SGLDState(NamedTuple):
    position: PyTree


def sgld(posterior: LocalizedPosterior) -> SamplingKernel:
    """Stochastic-gradient Langevin dynamics (Welling & Teh 2011) in jaxslt's convention:

        w ← w + (ε/2)·ĝ(w) + N(0, ε·I),   ĝ = −nβ·∇L_B(w) − γ·(w − w*)

    i.e. blackjax's x + h·∇log p + √(2h)·ξ with h = ε/2. The loss and the gradient come from one
    fused ``value_and_grad``.

    Args:
      posterior: the ``LocalizedPosterior`` to sample (``jaxslt.localized_posterior``).

    Returns:
      A ``SamplingKernel`` (``init``, ``step``).
    """

    def init(position, rng_key=None, minibatch=None) -> SGLDState:
        del rng_key, minibatch
        return SGLDState(position)

    def step(rng_key, state: SGLDState, minibatch, step_size):
        loss, grad = posterior.value_and_grad(state.position, minibatch)
        noise = tree_normal(rng_key, state.position)
        position = _axpy(state.position, (0.5 * step_size, grad), (jnp.sqrt(step_size), noise))
        return SGLDState(position), StepInfo(loss, grad=grad)

    return SamplingKernel(init, step)


class RMSPropSGLDState(NamedTuple):
    position: PyTree
    square_avg: PyTree
    count: jax.Array


def rmsprop_sgld(
    posterior: LocalizedPosterior,
    *,
    decay: float = 0.99,
    eps: float = 1.0,
    adapt_steps: int | None = None,
) -> SamplingKernel:
    """Preconditioned SGLD (pSGLD, Li et al. 2016) with an RMSProp diagonal preconditioner:

        v ← decay·v + (1 − decay)·(nβ∇L_B)²,   G = 1 / (√(v / (1 − decay^t)) + eps)
        w ← w + (ε/2)·G·ĝ(w) + N(0, ε·G)

    The moments see the tempered loss gradient only, not the localizer (docs/method.md §3.2). Noise
    variance per coordinate is ε·G ≤ ε/eps: with the default eps = 1 no coordinate gets a larger
    step than plain SGLD with ``step_size`` (G ≈ 1/|nβ∇L| where the gradient is large). A small
    eps (e.g. 1e-8) lets G explode at a minimum, where the loss gradient is near zero.
    A preconditioner that moves with w needs a correction term Σ_j ∂G_ij/∂w_j that pSGLD drops;
    with ``adapt_steps = k`` the moments adapt during the first k steps (set it to the burn-in:
    ``estimate_llc`` does) and are frozen afterwards, so the kept draws come from Langevin
    dynamics with a constant preconditioner, which needs no correction. ``None`` adapts forever.

    Args:
      posterior: the ``LocalizedPosterior`` to sample (``jaxslt.localized_posterior``).
      decay: the moments' decay per step.
      eps: added to √v̂ in G; it bounds G ≤ 1/eps.
      adapt_steps: adapt the moments during the first ``adapt_steps`` steps, then freeze
        them; ``None`` adapts forever.

    Returns:
      A ``SamplingKernel`` (``init``, ``step``).
    """

    def init(position, rng_key=None, minibatch=None) -> RMSPropSGLDState:
        del rng_key, minibatch
        zeros = jax.tree.map(lambda w: jnp.zeros(w.shape, jnp.promote_types(w.dtype, "float32")),
                             position)  # fmt: skip
        return RMSPropSGLDState(position, zeros, jnp.zeros((), jnp.int32))

    def step(rng_key, state: RMSPropSGLDState, minibatch, step_size):
        loss, grad = posterior.value_and_grad(state.position, minibatch)
        localizer = posterior.localizer_grad(state.position)
        adapting = True if adapt_steps is None else state.count < adapt_steps
        count = jnp.where(adapting, state.count + 1, state.count)

        def moment(v, g, lg):
            loss_grad = (g - lg).astype(v.dtype)
            return jnp.where(adapting, decay * v + (1 - decay) * loss_grad**2, v)

        square_avg = jax.tree.map(moment, state.square_avg, grad, localizer)
        correction = 1 - decay ** count.astype(jnp.float32)
        precond = jax.tree.map(lambda v: 1 / (jnp.sqrt(v / correction) + eps), square_avg)
        noise = tree_normal(rng_key, state.position)
        position = jax.tree.map(
            lambda w, g, p, z: (w + 0.5 * step_size * p * g + jnp.sqrt(step_size * p) * z).astype(
                w.dtype
            ),
            state.position,
            grad,
            precond,
            noise,
        )
        return RMSPropSGLDState(position, square_avg, count), StepInfo(loss)

    return SamplingKernel(init, step)


class SGHMCState(NamedTuple):
    position: PyTree
    momentum: PyTree


DEFAULT_FRICTION = 0.1  # sghmc's and sgnht's f


def sghmc(posterior: LocalizedPosterior, *, friction: float = DEFAULT_FRICTION) -> SamplingKernel:
    """Stochastic-gradient Hamiltonian Monte Carlo (Chen et al. 2014), symplectic-Euler form:

        p ← (1 − f)·p + h·ĝ(w) + √(2f)·ξ,   w ← w + h·p,   h = √(ε/2)

    with unit-mass momentum (p ~ N(0, I) at init) and friction f per step. f = 1 is exactly
    SGLD with step ε; smaller f lets momentum carry the chain further per gradient. Written here
    rather than wrapping ``blackjax.sghmc``, which resamples the momentum every step (so it needs
    many inner integration steps per recorded draw) and flattens the pytree for its noise.

    Minibatch noise heats it (Chen et al. 2014 subtract an estimate B̂ of the gradient noise
    from the injected noise; this kernel does not): per step the gradient noise adds
    (ε/2)·nβ²·c to the momentum's 2f, so its share of the bias is 1/f times SGLD's. Measured on
    the regular linear-Gaussian model (d = 8, n = 5000, batch 500, γ = 1, ε = 1e-4, f = 0.1,
    8 chains): 4.98 against SGLD's 4.06 and the exact 3.99 (+25%). ``estimate_llc``'s step
    check counts that share (``LocalGeometry.noise_gain`` = 1/f) and warns (docs/method.md §3.3).

    Args:
      posterior: the ``LocalizedPosterior`` to sample (``jaxslt.localized_posterior``).
      friction: f ∈ (0, 1], the momentum's decay per step (1 = SGLD).

    Returns:
      A ``SamplingKernel`` (``init``, ``step``).
    """

    def init(position, rng_key, minibatch=None) -> SGHMCState:
        del minibatch
        return SGHMCState(position, tree_normal(rng_key, position))

    def step(rng_key, state: SGHMCState, minibatch, step_size):
        loss, grad = posterior.value_and_grad(state.position, minibatch)
        h = jnp.sqrt(0.5 * step_size)
        noise = tree_normal(rng_key, state.momentum)
        momentum = _axpy(state.momentum, (-friction, state.momentum), (h, grad),
                         (jnp.sqrt(2 * friction), noise))  # fmt: skip
        position = _axpy(state.position, (h, momentum))
        return SGHMCState(position, momentum), StepInfo(loss)

    return SamplingKernel(init, step)


class SGNHTState(NamedTuple):
    position: PyTree
    momentum: PyTree
    thermostat: jax.Array


def sgnht(posterior: LocalizedPosterior, *, friction: float = DEFAULT_FRICTION) -> SamplingKernel:
    """Stochastic-gradient Nosé–Hoover thermostat (Ding et al. 2014):

        p ← (1 − ζ)·p + h·ĝ(w) + √(2f)·η,   w ← w + h·p,   ζ ← ζ + h²·(T̂ − 1)

    with h = √(ε/2), d the number of parameters and ζ = ξh the thermostat in per-step units,
    starting at the injected-noise friction f (Ding et al.'s ξ₀ = A). The thermostat is a real
    dynamical variable: it rises while the kinetic temperature T̂ exceeds 1 (e.g. heated by
    minibatch gradient noise) and falls while it is below, so the temperature self-corrects.
    T̂ = (1 − ζ/2)·pᵀp/d, not Ding et al.'s pᵀp/d: with friction ζ per step the discrete
    momentum of a chain at unit temperature has variance 1/(1 − ζ/2) (the stationary solution
    of p ← (1 − ζ)p + √(2ζ)η), and thermostatting pᵀp/d to 1 would cool the positions by that
    factor (5% at ζ = 0.1). (blackjax's ``sgnht`` flattens the tree for its noise.)

    Args:
      posterior: the ``LocalizedPosterior`` to sample (``jaxslt.localized_posterior``).
      friction: f, the injected noise's friction and the thermostat's starting value.

    Returns:
      A ``SamplingKernel`` (``init``, ``step``).
    """

    def init(position, rng_key, minibatch=None) -> SGNHTState:
        del minibatch
        return SGNHTState(
            position, tree_normal(rng_key, position), jnp.asarray(friction, jnp.float32)
        )

    def step(rng_key, state: SGNHTState, minibatch, step_size):
        loss, grad = posterior.value_and_grad(state.position, minibatch)
        h = jnp.sqrt(0.5 * step_size)
        noise = tree_normal(rng_key, state.momentum)
        momentum = _axpy(state.momentum, (-state.thermostat, state.momentum), (h, grad),
                         (jnp.sqrt(2 * friction), noise))  # fmt: skip
        position = _axpy(state.position, (h, momentum))
        kinetic = sum(jnp.sum(jnp.square(p.astype(jnp.float32))) for p in jax.tree.leaves(momentum))
        size = sum(p.size for p in jax.tree.leaves(momentum))
        temperature = (1 - 0.5 * state.thermostat) * kinetic / size
        thermostat = (state.thermostat + 0.5 * step_size * (temperature - 1)).astype(
            state.thermostat.dtype
        )  # float32 whatever the dtype of ε (float64 with x64 and float64 params)
        return SGNHTState(position, momentum, thermostat), StepInfo(loss)

    return SamplingKernel(init, step)


class MALAState(NamedTuple):
    position: PyTree
    loss: jax.Array
    grad: PyTree


def mala(posterior: LocalizedPosterior) -> SamplingKernel:
    """Metropolis-adjusted Langevin (full batch): an exact sampler of the localized posterior.

    Proposal w' = w + (ε/2)·∇log p(w) + N(0, ε·I) (the SGLD step), accepted with probability
    min(1, p(w')q(w|w') / (p(w)q(w'|w))), log q(w'|w) = −||w' − w − (ε/2)∇log p(w)||²/(2ε).
    The minibatch must be the full data set (``estimate_llc`` enforces it): a minibatch log
    density would make the test target the wrong distribution. One value-and-gradient per step;
    the current point's values are carried in the state. A non-finite proposal is rejected.
    Not a wrapper of ``blackjax.mala``: that one closes over a position-only log density (no
    batch argument for this runner) and flattens the pytree for its noise.

    Args:
      posterior: the ``LocalizedPosterior`` to sample (``jaxslt.localized_posterior``).

    Returns:
      A ``SamplingKernel`` (``init``, ``step``).
    """

    def init(position, rng_key=None, minibatch=None) -> MALAState:
        del rng_key
        return MALAState(position, *posterior.value_and_grad(position, minibatch))

    def step(rng_key, state: MALAState, minibatch, step_size):
        key_prop, key_accept = jax.random.split(rng_key)
        noise = tree_normal(key_prop, state.position)
        proposal = _axpy(state.position, (0.5 * step_size, state.grad),
                         (jnp.sqrt(step_size), noise))  # fmt: skip
        loss, grad = posterior.value_and_grad(proposal, minibatch)
        accept_prob = _accept(
            langevin_log_ratio(posterior, state.position, proposal, step_size,
                               (state.loss, state.grad), (loss, grad))
        )  # fmt: skip
        accept = jax.random.uniform(key_accept) < accept_prob
        new = MALAState(proposal, loss, grad)
        state_out = jax.tree.map(lambda a, b: jnp.where(accept, a, b), new, state)
        return state_out, StepInfo(state.loss, accept_prob)

    return SamplingKernel(init, step)


def langevin_log_ratio(
    posterior: LocalizedPosterior,
    old: PyTree,
    new: PyTree,
    step_size,
    old_value_and_grad: tuple[jax.Array, PyTree],
    new_value_and_grad: tuple[jax.Array, PyTree],
) -> jax.Array:
    """log [p(w′)·q(w|w′) / (p(w)·q(w′|w))] for the Langevin proposal w → w′, with
    log q(w′|w) = −||w′ − w − (ε/2)·g||²/(2ε), g = ∇log p(w) and g′ = ∇log p(w′) on the batch.
    Taken in differences, δ = w′ − w:

        log p(w′) − log p(w) − δ·(g + g′)/2 − (ε/8)·(||g′||² − ||g||²)

    (exact algebra), the first term by ``LocalizedPosterior.logdensity_change``. Every term is
    small, where the direct form subtracts two float32 sums of about d/2 (||√ε·ξ||²/(2ε)) and
    two localizer terms: that rounds the ratio by ~1e-7·d, e.g. −0.125 (α 0.88 for an exact
    1.0) at d = 3·10⁶ (docs/method.md §5.3). float32 or wider."""
    (loss0, g0), (loss1, g1) = old_value_and_grad, new_value_and_grad
    move = optax.tree.sub(new, old)
    terms = _langevin_terms(move, g0), _langevin_terms(move, g1)
    return _log_ratio(posterior, old, new, step_size, (loss0, loss1), *terms)


def _langevin_terms(move: PyTree, grad: PyTree) -> tuple[jax.Array, jax.Array]:
    """One end's share of the Langevin log ratio: (δ·g, ||g||²), in float32 or wider."""
    return _vdot(move, grad), _vdot(grad, grad)


def _log_ratio(posterior, old, new, step_size, losses, terms0, terms1) -> jax.Array:
    """``langevin_log_ratio`` from each end's (δ·g, ||g||²) and the two losses."""
    (along0, norm0), (along1, norm1) = terms0, terms1
    change = posterior.logdensity_change(old, new, *losses)
    return change - 0.5 * (along0 + along1) - 0.125 * step_size * (norm1 - norm0)


def _vdot(a: PyTree, b: PyTree) -> jax.Array:
    """a·b over every leaf, in float32 or wider."""

    def leaf(x, y):
        wide = jnp.promote_types(x.dtype, jnp.float32)
        return jnp.vdot(x.astype(wide), y.astype(wide))

    return sum(leaf(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _accept(log_ratio: jax.Array) -> jax.Array:
    """min(1, exp(log_ratio)); 0 where it is not finite (a non-finite proposal is rejected)."""
    return jnp.where(jnp.isfinite(log_ratio), jnp.minimum(1.0, jnp.exp(log_ratio)), 0.0)


def sgld_acceptance(
    posterior: LocalizedPosterior,
    old: PyTree,
    new: PyTree,
    minibatch: PyTree,
    step_size,
    old_value_and_grad: tuple[jax.Array, PyTree] | None = None,
    new_value_and_grad: tuple[jax.Array, PyTree] | None = None,
) -> jax.Array:
    """MALA acceptance probability of an SGLD transition w → w′ (docs/method.md §5.3), on its batch:

        U = nβ·L_B + (γ/2)·||w − w*||²,   log q(w′|w) = −||w′ − w + (ε/2)∇U(w)||² / (2ε),
        α = min(1, exp(U(w) − U(w′) + log q(w|w′) − log q(w′|w))),

    the log ratio taken in differences (``langevin_log_ratio``). A healthy chain sits near 0.9;
    low values mean ε is too large for the local curvature. Costs one value-and-gradient on
    the batch at w′, plus one at w unless the step's own (loss, gradient) is passed as
    ``old_value_and_grad``.
    """
    if old_value_and_grad is None:
        old_value_and_grad = posterior.value_and_grad(old, minibatch)
    if new_value_and_grad is None:
        new_value_and_grad = posterior.value_and_grad(new, minibatch)
    return _accept(
        langevin_log_ratio(posterior, old, new, step_size, old_value_and_grad, new_value_and_grad)
    )


def sgld_checks(
    posterior: LocalizedPosterior,
    old: PyTree,
    new: PyTree,
    minibatch: PyTree,
    step_size,
    old_value_and_grad: tuple[jax.Array, PyTree] | None = None,
) -> jax.Array:
    """[α, q, ||g||²]: the MALA acceptance α of an SGLD transition w → w′ (``sgld_acceptance``),
    q = −(w′ − w)·(∇log p(w′) − ∇log p(w))/ε, the step's curvature along its own move, and the
    squared norm of the step's own minibatch gradient g = ∇log p_B(w). With
    w′ − w = (ε/2)∇log p + √ε·ξ, q ≈ ξᵀ∇²U ξ, so its mean over checks is Hutchinson's estimate
    of tr ∇²U = nβ·tr ∇²L_B + γ·d where the chain is; and since E||∇U||² = E tr ∇²U at
    stationarity (integration by parts), E[||g||² − q]/nβ² is tr Cov(∇L_B) where the chain is,
    exactly for SGLD on a quadratic at any ε (docs/method.md §4).

    Everything the old gradient enters is reduced before the new one is computed (an
    optimization barrier orders them), so a check holds w, w′ and one gradient at a time."""
    if old_value_and_grad is None:
        old_value_and_grad = posterior.value_and_grad(old, minibatch)
    loss0, g0 = old_value_and_grad
    move = optax.tree.sub(new, old)
    terms0 = _langevin_terms(move, g0)
    new, terms0 = jax.lax.optimization_barrier((new, terms0))
    loss1, g1 = posterior.value_and_grad(new, minibatch)
    terms1 = _langevin_terms(move, g1)
    log_ratio = _log_ratio(posterior, old, new, step_size, (loss0, loss1), terms0, terms1)
    curvature = -(terms1[0] - terms0[0]) / step_size
    return jnp.stack(
        [_accept(log_ratio).astype(jnp.float32), curvature.astype(jnp.float32),
         terms0[1].astype(jnp.float32)]
    )  # fmt: skip


def state_position(state: Any) -> PyTree:
    """The position of any kernel state here (jaxslt's or a wrapped blackjax one)."""
    return _position(state.inner) if isinstance(state, BlackjaxState) else state.position


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
    the step gets h = ε/2. Its noise is drawn by flattening the whole pytree: fine for small
    models, not for sharded or bf16 ones (use jaxslt's own kernels there). ``blackjax.sghmc``
    runs ``num_integration_steps`` (default 10) gradient steps per recorded draw.

    Args:
      algorithm: the blackjax algorithm, e.g. ``blackjax.sghmc``.
      loss_fn: ``loss_fn(params, batch) -> scalar``, for the trace's loss.
      posterior: the ``LocalizedPosterior`` to sample (``jaxslt.localized_posterior``).
      **kwargs (Any): keyword arguments of ``algorithm`` (besides the gradient estimator).

    Returns:
      A ``SamplingKernel`` (``init``, ``step``).
    """
    alg = algorithm(posterior.grad_estimator, **kwargs)
    takes_key = "rng_key" in inspect.signature(alg.init).parameters

    def init(position, rng_key, minibatch=None) -> BlackjaxState:
        del minibatch
        return BlackjaxState(alg.init(position, rng_key) if takes_key else alg.init(position))

    def step(rng_key, state: BlackjaxState, minibatch, step_size):
        loss = loss_fn(_position(state.inner), minibatch)
        inner = alg.step(rng_key, state.inner, minibatch, 0.5 * step_size)
        return BlackjaxState(inner), StepInfo(loss)

    return SamplingKernel(init, step)


def _from_posterior(kernel: Callable[..., SamplingKernel]) -> Callable[..., SamplingKernel]:
    def factory(loss_fn: Callable, posterior: LocalizedPosterior, **options) -> SamplingKernel:
        del loss_fn
        return kernel(posterior, **options)

    factory.__signature__ = inspect.signature(kernel)  # options are checked against this
    return factory


class _Blackjax:
    """The factory of ``sampler="blackjax_<name>"``. blackjax (~1 s to import, with the SciPy
    parts it pulls in) is imported when the sampler is used or its options are checked, not
    when jaxslt is."""

    def __init__(self, name: str):
        self.name = name

    @property
    def __signature__(self) -> inspect.Signature:  # options are checked against this
        import blackjax

        return inspect.signature(getattr(blackjax.sgmcmc, self.name).as_top_level_api)

    def __call__(self, loss_fn: Callable, posterior: LocalizedPosterior, **options):
        import blackjax

        return from_blackjax(getattr(blackjax, self.name), loss_fn, posterior, **options)


def _blackjax(name: str) -> Callable[..., SamplingKernel]:
    return _Blackjax(name)


class SamplerCapabilities(NamedTuple):
    """What ``estimate_llc`` may assume about a sampler, declared when it is registered
    (``register_sampler``) or on a factory as its attribute ``capabilities``. All off by default:
    a sampler gets a check or a special handling only by declaring it.

    Attributes:
      full_batch: its kernel needs the exact density (e.g. a Metropolis test on the full
        data): ``estimate_llc`` runs it with ``batch_size = n`` and rejects any other batch
        size.
      sgld_transition: each step is w′ = w + (ε/2)·∇log p(w) + N(0, ε·I) on the step's batch
        and its state has ``.position`` (``state_position``), so the in-loop MALA acceptance
        and curvature checks (``sgld_checks``: ``result.mala_accept``,
        ``geometry.trace_h_draws``) are meaningful. A step that reports its gradient
        (``StepInfo.grad``) saves one gradient per check.
      adapts_during_burnin: the name of an option that ``estimate_llc`` sets to
        ``num_burnin`` unless the user gives it (rmsprop_sgld's ``"adapt_steps"``: the
        preconditioner adapts during burn-in and is frozen for the kept draws).
      noise_gain: ``options -> float``, how many times SGLD's share of the minibatch-noise
        heating this sampler has with these ``sampler_options`` (as given, defaults not filled
        in); the step check multiplies the gradient-noise term of its bias bound by it
        (``LocalGeometry.noise_gain``; sghmc: 1/friction). None means 1.
    """

    full_batch: bool = False
    sgld_transition: bool = False
    adapts_during_burnin: str | None = None
    noise_gain: Callable[[Mapping[str, Any]], float] | None = None


def _sghmc_noise_gain(options: Mapping[str, Any]) -> float:
    """SGHMC's momentum noise is 2f per step against the gradient noise's (ε/2)·nβ²·c, which it
    does not subtract: 1/f times SGLD's share (``sghmc``'s docstring)."""
    return 1.0 / options.get("friction", DEFAULT_FRICTION)


def _blackjax_sghmc_noise_gain(options: Mapping[str, Any]) -> float:
    """``blackjax.sghmc`` (Ma et al. 2015 scaling) at step h: the momentum gets √(2αh)·ξ and the
    gradient noise h·(ĝ − g), so the heating's share is h·c/(2α) against SGLD's (ε/4)·c at
    h = ε/2: 1/α times SGLD's (α = 0.01 by default: 100×; its ``beta``, an estimate of the
    gradient noise that it subtracts, is not counted, so with beta the figure is an upper
    bound). Derived as for ``sghmc`` (whose 1/f was measured), not measured itself: on the
    regular linear-Gaussian model (d = 8, batch 500, γ = 1, ε = 1e-4) its chains at α = 0.01
    had not equilibrated after 2,000 × 10 steps (λ̂ 0.48 against the exact 3.99), which its
    diagnostics flag."""
    import blackjax

    api = blackjax.sgmcmc.sghmc.as_top_level_api  # its default alpha, whatever the version
    return 1.0 / options.get("alpha", inspect.signature(api).parameters["alpha"].default)


# the registry: name -> factory and name -> capabilities, changed only by register_sampler /
# unregister_sampler; the built-in entries below cannot be removed
_FACTORIES: dict[str, Callable[..., SamplingKernel]] = {
    "sgld": _from_posterior(sgld),
    "rmsprop_sgld": _from_posterior(rmsprop_sgld),
    "sghmc": _from_posterior(sghmc),
    "sgnht": _from_posterior(sgnht),
    "mala": _from_posterior(mala),
    "blackjax_sgld": _blackjax("sgld"),
    "blackjax_sghmc": _blackjax("sghmc"),
    "blackjax_sgnht": _blackjax("sgnht"),
}
_CAPABILITIES: dict[str, SamplerCapabilities] = {
    "sgld": SamplerCapabilities(sgld_transition=True),
    "rmsprop_sgld": SamplerCapabilities(adapts_during_burnin="adapt_steps"),
    "sghmc": SamplerCapabilities(noise_gain=_sghmc_noise_gain),
    "sgnht": SamplerCapabilities(),  # its thermostat absorbs the minibatch heating
    "mala": SamplerCapabilities(full_batch=True),
    "blackjax_sgld": SamplerCapabilities(sgld_transition=True),
    "blackjax_sghmc": SamplerCapabilities(noise_gain=_blackjax_sghmc_noise_gain),
    "blackjax_sgnht": SamplerCapabilities(),
}
_BUILTIN = frozenset(_FACTORIES)
_RETIRED: dict[str, tuple[Callable[..., SamplingKernel], SamplerCapabilities]] = {}
"""Unregistered names and their last entry: registering one again with another entry must
clear the compiled programs cached under the name."""

SAMPLERS: Mapping[str, Callable[..., SamplingKernel]] = MappingProxyType(_FACTORIES)
"""The registered samplers, name -> factory ``(loss_fn, posterior, **options) ->
SamplingKernel``: a read-only live view (add one with ``register_sampler``)."""


def register_sampler(
    name: str,
    factory: Callable[..., SamplingKernel],
    capabilities: SamplerCapabilities | None = None,
    *,
    overwrite: bool = False,
) -> None:
    """Make ``sampler=name`` mean ``factory`` in ``estimate_llc``, ``sample_llc`` and studies.

    ``factory(loss_fn, posterior, **options) -> SamplingKernel``; ``sampler_options`` are
    checked against its signature. ``capabilities`` (a ``SamplerCapabilities``; default: the
    factory's own ``capabilities`` attribute, else none) declares which checks and handling
    apply, e.g. ``SamplerCapabilities(sgld_transition=True)`` for an SGLD variant whose steps
    the MALA acceptance check should judge. A name already registered (a built-in one
    included) raises unless ``overwrite=True`` or it is the same registration again; built-in
    names can be overwritten but not unregistered. Compiled estimators are cached under the
    sampler's name, so giving a name that was ever registered a different factory or
    capabilities clears JAX's compilation caches (``jax.clear_caches``): the next runs
    recompile. Registering a new name, the same entry again, or unregistering clears nothing.

    Args:
      name: the name ``sampler=`` will take.
      factory: ``factory(loss_fn, posterior, **options) -> SamplingKernel``.
      capabilities: what the estimator may assume about it; ``None``: the factory's own
        ``capabilities`` attribute, else none.
      overwrite: replace an existing registration of ``name``.

    Raises:
      ValueError: ``name`` is taken (and ``overwrite`` is False), or ``capabilities`` names an
        option the factory does not take.
      TypeError: a bad name, factory, ``overwrite`` or ``capabilities``.

    Examples:
      An SGLD variant (here plain SGLD), declared an SGLD transition so that the MALA
      acceptance check judges its steps:

      >>> import jaxslt
      >>> from jaxslt.kernels import unregister_sampler
      >>> def my_sgld(loss_fn, posterior):
      ...     return jaxslt.sgld(posterior)
      >>> caps = jaxslt.SamplerCapabilities(sgld_transition=True)
      >>> jaxslt.register_sampler("my_sgld", my_sgld, caps)
      >>> "my_sgld" in jaxslt.SAMPLERS  # now estimate_llc(..., sampler="my_sgld") works
      True
      >>> unregister_sampler("my_sgld")
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string; got {name!r}")
    if not callable(factory):
        raise TypeError(
            "factory must be callable as factory(loss_fn, posterior, **options) -> "
            f"SamplingKernel; got {factory!r}"
        )
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be True or False; got {overwrite!r}")
    if capabilities is None:
        capabilities = sampler_capabilities(factory)
    _check_capabilities(capabilities, factory)
    if _FACTORIES.get(name) is factory and _CAPABILITIES[name] == capabilities:
        return  # the same registration again (e.g. a notebook cell run twice)
    if name in _FACTORIES and not overwrite:
        kind = "a built-in sampler" if name in _BUILTIN else "already registered"
        raise ValueError(
            f"sampler {name!r} is {kind}; pass overwrite=True to replace it, or choose another name"
        )
    if name in _FACTORIES:
        before = (_FACTORIES[name], _CAPABILITIES[name])
    else:
        before = _RETIRED.pop(name, None)
    _FACTORIES[name] = factory
    _CAPABILITIES[name] = capabilities
    # programs compiled for an earlier entry of this name are cached under the same static name
    if before is not None and before != (factory, capabilities):
        jax.clear_caches()


def unregister_sampler(name: str) -> None:
    """Remove a sampler added by ``register_sampler`` (built-in ones cannot be removed)."""
    if name in _BUILTIN:
        raise ValueError(f"sampler {name!r} is built in and cannot be unregistered")
    if name not in _FACTORIES:
        raise KeyError(f"no sampler {name!r} is registered")
    # programs compiled for it stay cached but unreachable (an unknown name is refused before
    # anything compiles) until the name is registered again, with another entry: then
    # register_sampler clears the caches
    _RETIRED[name] = (_FACTORIES.pop(name), _CAPABILITIES.pop(name))


def _check_capabilities(capabilities: Any, factory: Callable) -> None:
    if not isinstance(capabilities, SamplerCapabilities):
        raise TypeError(f"capabilities must be a jaxslt.SamplerCapabilities; got {capabilities!r}")
    for field in ("full_batch", "sgld_transition"):
        if not isinstance(getattr(capabilities, field), bool):
            raise TypeError(
                f"capabilities.{field} must be True or False; got {getattr(capabilities, field)!r}"
            )
    option = capabilities.adapts_during_burnin
    if option is not None:
        if not isinstance(option, str) or not option:
            raise TypeError(
                f"capabilities.adapts_during_burnin must be an option name or None; got {option!r}"
            )
        try:
            inspect.signature(factory).bind_partial(None, **{option: 0})
        except TypeError:
            raise ValueError(
                f"capabilities.adapts_during_burnin={option!r} is not an option of the factory "
                f"{inspect.signature(factory)!s}"
            ) from None
        except ValueError:  # no signature to check against (some builtins)
            pass
    if capabilities.noise_gain is not None and not callable(capabilities.noise_gain):
        raise TypeError(
            "capabilities.noise_gain must be None or callable as noise_gain(options) -> float; "
            f"got {capabilities.noise_gain!r}"
        )


def sampler_capabilities(sampler: str | Callable) -> SamplerCapabilities:
    """The capabilities of ``sampler``: a registered name's, or for a factory its attribute
    ``capabilities`` if it has one, else those it was registered with (by identity), else
    none (``SamplerCapabilities()``)."""
    if isinstance(sampler, str):
        if sampler not in _CAPABILITIES:
            raise ValueError(f"sampler={sampler!r} is unknown; choose one of {sorted(_FACTORIES)}")
        return _CAPABILITIES[sampler]
    own = getattr(sampler, "capabilities", None)
    if own is not None:
        if not isinstance(own, SamplerCapabilities):
            raise TypeError(
                f"the sampler factory's attribute capabilities must be a "
                f"jaxslt.SamplerCapabilities; got {own!r}"
            )
        return own
    for name, factory in _FACTORIES.items():
        if factory is sampler:
            return _CAPABILITIES[name]
    return SamplerCapabilities()


class ResolvedKernel(NamedTuple):
    """``make_kernel``'s answer: the kernel and what the estimator may assume about it."""

    kernel: SamplingKernel
    capabilities: SamplerCapabilities


def make_kernel(
    sampler: str | Callable,
    loss_fn: Callable,
    posterior: LocalizedPosterior,
    options: Mapping[str, Any] | tuple = (),
) -> ResolvedKernel:
    """Resolve ``sampler`` (a name in ``SAMPLERS`` or a factory ``(loss_fn, posterior,
    **options) -> SamplingKernel``) into a kernel for this posterior, with its capabilities
    (``sampler_capabilities``)."""
    factory = _FACTORIES[sampler] if isinstance(sampler, str) else sampler
    kernel = factory(loss_fn, posterior, **dict(options))
    return ResolvedKernel(kernel, sampler_capabilities(sampler))
