"""The traceable core of LLC estimation: ``sample_llc`` and the ``LLCResult`` it returns.

    λ̂_c = nβ · ( mean_t L_B(w_t^c) − L_n(w*) )          per chain c, over the kept draws t
    λ̂   = mean_c λ̂_c,   std = across-chain std (ddof=1)   over the chains that did not diverge

No validation, no printing, nothing leaves the device: jit and vmap it freely. The validating
shell is ``jaxslt.estimator.estimate_llc``; ``jaxslt.calibration`` maps it over grid cells.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxslt.chains import Accumulator, data_size, run_chains
from jaxslt.config import DEFAULT_LOCALIZATION, DEFAULTS, SamplingConfig
from jaxslt.curvature import LocalGeometry, local_geometry
from jaxslt.kernels import make_kernel, sampler_capabilities, sgld_checks, state_position
from jaxslt.observables import init_moments, per_example_losses, update_moments
from jaxslt.observables import observables as pool
from jaxslt.posterior import default_nbeta, full_data_loss, localized_posterior, running_llc
from jaxslt.restriction import Restriction, make_restriction
from jaxslt.sharding import param_partition_specs, replicate, shard_params
from jaxslt.types import PyTree

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "EXPLODED_FACTOR",
    "FULL_DATA_BUDGET",
    "FULL_DATA_CHECKS",
    "LLCResult",
    "Schedule",
    "computed_in",
    "flag_exploded",
    "full_data_checks",
    "geometry_at",
    "lower_geometry",
    "make_schedule",
    "program_config",
    "restricted_loss",
    "run_config",
    "sample_llc",
    "sample_llc_jit",
    "traced_schedule",
    "trimmed",
    "with_geometry",
]

DEFAULT_BATCH_SIZE = 256


class LLCResult(NamedTuple):
    """An LLC estimate. A NamedTuple of arrays, hence a pytree that can leave ``jit``/``vmap``.

    λ̂_c = nβ·(mean_t L_B(w_t^c) − L_n(w*)) per chain c over the kept draws t; λ̂ is their mean
    over the chains that did not diverge.

    ``diverged`` covers non-finite chains and exploded ones: finite chains whose λ̂_c exceeds
    ``EXPLODED_FACTOR``·d (d sampled parameters; λ ≤ d/2 at any minimum) or, with three or more
    chains, exceeds the chains' median by more than ``EXPLODED_FACTOR``²·max(|median|, 1).

    Attributes:
      llc_mean: λ̂, the mean of ``llc_per_chain`` over the healthy chains.
      llc_std: the across-chain std of λ̂_c (ddof=1; NaN with fewer than two healthy chains).
      llc_per_chain: λ̂_c, shape (num_chains,); NaN for diverged chains.
      loss_trace: (num_chains, num_draws) minibatch losses L_B(w_t) at the kept draws.
      burnin_loss_trace: (num_chains, num_burnin) minibatch losses during burn-in.
      init_loss: the full-data L_n(w*).
      nbeta: nβ.
      localization: γ.
      step_size: ε.
      diverged: (num_chains,) booleans, the chains left out of the estimate.
      divergence_step: (num_chains,) first bad step of each chain; −1 where it stayed finite.
      accept_rate: (num_chains,) mean Metropolis acceptance after burn-in; NaN for
        unadjusted samplers.
      mala_accept: (num_chains,) mean MALA acceptance probability of the SGLD transitions at
        ``acceptance_checks`` evenly spaced steps after burn-in; NaN for other samplers.
      observables: a ``jaxslt.observables.Observables`` when requested (singular fluctuation,
        WAIC, WBIC, ...); else None.
      diagnostics: the ``jaxslt.Diagnostics`` of the run (``estimate_llc``); None from
        ``sample_llc``.
      calibration: the ``jaxslt.Calibration`` of ``step_size="auto"``; else None.
      geometry: a ``jaxslt.curvature.LocalGeometry`` with ``step_check``: ``estimate_llc``
        measures the loss at w* (h_max, tr ∇²L, minibatch gradient noise) when it diagnoses;
        ``sample_llc`` records only the chains' part (``trace_h_draws``, ``grad_noise_draws``,
        ``noise_gain``; the rest NaN until ``with_geometry(result, geometry_at(...))``); else
        None.
      lowest_excess: (num_chains,) min over evaluated kept draws of nβ·(L_n(w_t) − L_n(w*)),
        the *full-data* excess (never below 0 at a local minimum, where the minibatch trace
        can be), at ``full_data_checks`` evenly spaced draws with ``step_check``, or at the
        observables' draws; None when no draw is evaluated (neither is on, or even one pass
        over the n examples would exceed ``full_data_checks``' budget).
    """

    llc_mean: jax.Array
    llc_std: jax.Array
    llc_per_chain: jax.Array
    loss_trace: jax.Array
    burnin_loss_trace: jax.Array
    init_loss: jax.Array
    nbeta: jax.Array
    localization: jax.Array
    step_size: jax.Array
    diverged: jax.Array
    divergence_step: jax.Array
    accept_rate: jax.Array
    mala_accept: jax.Array
    observables: Any = None
    diagnostics: Any = None
    calibration: Any = None
    geometry: Any = None
    lowest_excess: Any = None

    def running_llc(self) -> jax.Array:
        """nβ·(cumsum_t L(w_t)/t − L_n(w*)) per chain, shape (num_chains, num_draws)."""
        return running_llc(self.loss_trace, self.init_loss, self.nbeta)

    def summary(self) -> str:
        """A few readable lines: the estimate, its spread, the settings, the chains' health."""
        if np.ndim(self.llc_mean) != 0:
            return f"LLCResult(batched: llc_mean shape {np.shape(self.llc_mean)})"
        diverged = np.asarray(self.diverged)
        values = np.asarray(self.llc_per_chain)
        per_chain = ", ".join(f"{v:.4g}" for v in values[:8]) + (", ..." if values.size > 8 else "")
        lines = [
            f"LLC = {float(self.llc_mean):.4g} ± {float(self.llc_std):.2g} (std across "
            f"{int((~diverged).sum())} chains)",
            f"  per chain: [{per_chain}]",
            f"  nβ = {float(self.nbeta):.6g}, γ = {float(self.localization):.4g}, "
            f"ε = {float(self.step_size):.3g}, L_n(w*) = {float(self.init_loss):.6g}",
            f"  draws: {self.loss_trace.shape[-1]} kept per chain after "
            f"{self.burnin_loss_trace.shape[-1]} burn-in steps",
        ]
        accept = np.asarray(self.accept_rate)
        if not np.isnan(accept).all():
            lines.append(f"  acceptance rate: {np.nanmean(accept):.3f} (mean over chains)")
        mala_accept = np.asarray(self.mala_accept)
        if not np.isnan(mala_accept).all():
            lines.append(f"  MALA acceptance of the SGLD steps: {np.nanmean(mala_accept):.3f}")
        if self.calibration is not None:
            lines.append("  step_size, localization and nbeta chosen by jaxslt.calibrate")
        if self.diagnostics is not None:
            lines.append("  diagnostics: " + ("ok" if self.diagnostics.ok else "; ".join(
                self.diagnostics.warnings)))  # fmt: skip
        if diverged.any():
            steps = np.asarray(self.divergence_step)[diverged].tolist()
            lines.append(
                f"  DIVERGED: {int(diverged.sum())} chain(s), first bad step(s) {steps}; "
                "excluded from the estimate (lower step_size)"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()


def sample_llc(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    data: PyTree,
    key: jax.Array,
    *,
    step_size: float | jax.Array,
    nbeta: float | jax.Array | None = None,
    localization: float | jax.Array = DEFAULT_LOCALIZATION,
    config: SamplingConfig = DEFAULTS,
    restrict: Restriction | str | tuple[str, ...] | None = None,
    schedule: Schedule | None = None,
) -> LLCResult:
    """Traceable core of ``estimate_llc``: no validation, no printing; jit and vmap it freely.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` mean loss (static under ``jit``).
      params: w*, any pytree of float arrays (may be traced).
      data: a pytree of arrays with a leading axis of length n (may be traced).
      key: a PRNG key (typed or old-style); it fully determines the result.
      step_size: ε, the noise variance of the SGLD step (traced: changing it never
        recompiles, nor does changing nβ or γ).
      nbeta: nβ, the weight on the mean loss; ``None`` means n / log n.
      localization: γ ≥ 0, the strength of the pull towards w*.
      config: every static setting (``jaxslt.config.SamplingConfig``; one static argument).
        ``chain_batch_size="auto"`` runs all chains at once here (``estimate_llc`` resolves it
        from free memory); ``step_check`` also records the chains' part of the step check's
        ``LocalGeometry`` (``result.geometry``), which ``with_geometry(result, geometry_at(...))``
        completes with the curvature at w* (a separate program, so it compiles once per loss
        and shapes, not per config), from which ``diagnose`` judges ε.
      restrict: a ``jaxslt.Restriction`` (``jaxslt.make_restriction(params, selection)``; a
        pytree whose index arrays may be traced) or glob pattern(s) when not jitted: sample
        only those weights, the others frozen at w* (the chains carry only the sampled part).
      schedule: the run's lengths and check periods (``jaxslt.core.make_schedule``), possibly
        traced; ``None``: ``make_schedule(config, n)``. With a traced schedule, ``config``'s
        ``num_burnin``/``num_draws`` are the program's capacity: one compiled program runs any
        shorter schedule, with the numbers of a program of exactly that length, and its traces
        hold NaN past the schedule's lengths (``trimmed`` cuts them off).

    Returns:
      An ``LLCResult`` (replicated over ``config.mesh``), without diagnostics.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxslt import SamplingConfig, sample_llc_jit
      >>> loss = lambda w, b: jnp.mean((b["x"] @ w - b["y"]) ** 2)
      >>> x = jax.random.normal(jax.random.key(0), (256, 2))
      >>> data = {"x": x, "y": x @ jnp.ones(2)}
      >>> config = SamplingConfig(num_chains=2, num_draws=50, num_burnin=50)
      >>> r = sample_llc_jit(loss, jnp.ones(2), data, jax.random.key(1), step_size=1e-3,
      ...                    localization=10.0, config=config)
      >>> r.llc_per_chain.shape
      (2,)
    """
    num_chains, num_draws, num_burnin, thinning = (
        config.num_chains, config.num_draws, config.num_burnin, config.thinning,
    )  # fmt: skip
    run = make_schedule(config, data_size(data)) if schedule is None else schedule
    sampler, sampler_options = config.sampler, config.sampler_options
    acceptance_checks, mesh = config.acceptance_checks, config.mesh
    eval_batch_size, compute_dtype = config.eval_batch_size, config.compute_dtype
    chain_batch_size = None if config.chain_batch_size == "auto" else config.chain_batch_size
    n = data_size(data)
    loss_fn, params, batch_size = _sampled_problem(
        loss_fn, params, n, batch_size=config.batch_size, compute_dtype=compute_dtype,
        restrict=restrict,
    )  # fmt: skip
    specs = param_partition_specs(params, mesh, config.param_specs)
    params = shard_params(params, mesh, specs)  # w*, hence the localizer, split like the chains
    nbeta = default_nbeta(n) if nbeta is None else nbeta
    init_loss = full_data_loss(loss_fn, params, data, eval_batch_size or batch_size)
    posterior = localized_posterior(loss_fn, params, nbeta=nbeta, localization=localization)
    kernel, capabilities = make_kernel(sampler, loss_fn, posterior, sampler_options)
    check = None
    if acceptance_checks > 0 and capabilities.sgld_transition:

        def check(old, new, batch, eps, info):
            reuse = None if info.grad is None else (info.loss, info.grad)
            return sgld_checks(
                posterior, state_position(old), state_position(new), batch, eps, reuse
            )

    chunk = eval_batch_size or batch_size
    lowest = jnp.full((), jnp.inf, init_loss.dtype)
    accumulate = None
    if config.observables:  # L_n(w_t) comes with the per-example losses: its minimum is free
        accumulate = Accumulator(
            init=lambda: (init_moments(n, init_loss.dtype), lowest),
            update=lambda acc, state: _fold_losses(
                acc, per_example_losses(loss_fn, state_position(state), data, chunk)
            ),
            every=run.evaluate_every,
        )
    elif config.step_check and full_data_checks(num_draws, n, batch_size):
        accumulate = Accumulator(
            init=lambda: lowest,
            update=lambda acc, state: jnp.minimum(
                acc, full_data_loss(loss_fn, state_position(state), data, chunk)
            ),
            every=run.evaluate_every,
        )
    trace = run_chains(
        kernel,
        params,
        data,
        key,
        step_size=step_size,
        num_chains=num_chains,
        num_draws=num_draws,
        num_burnin=num_burnin,
        thinning=thinning,
        batch_size=batch_size,
        progress_every=run.progress_every,
        transition_check=check,
        check_every=run.check_every,
        chain_batch_size=chain_batch_size,
        mesh=mesh,
        accumulate=accumulate,
        param_specs=specs,
        lengths=(run.num_burnin, run.num_draws),
    )
    mala_accept = trace.check_mean
    if check is not None:  # (chains, 2): acceptance, tr ∇²U by the step's own noise
        mala_accept = trace.check_mean[:, 0]
    loss_trace = trace.loss_trace.astype(init_loss.dtype)
    moments, lowest = (None, trace.accumulated) if not config.observables else trace.accumulated
    lowest_excess = None
    if lowest is not None:  # NaN where a chain evaluated no draw
        lowest_excess = jnp.where(
            jnp.isfinite(lowest), nbeta * (lowest - init_loss), jnp.nan
        ).astype(init_loss.dtype)
    nbeta = jnp.asarray(nbeta, init_loss.dtype)
    per_chain = nbeta * (trace.loss_mean.astype(init_loss.dtype) - init_loss)
    divergence_step = flag_exploded(
        trace.divergence_step, per_chain, nbeta * (loss_trace - init_loss), params,
        first_kept=run.num_burnin, thinning=thinning,
    )  # fmt: skip
    diverged = divergence_step >= 0
    healthy = ~diverged
    trace_h_draws = grad_noise_draws = jnp.nan
    if check is not None:  # over the healthy chains: tr ∇²L = (tr ∇²U − γ·d)/nβ and
        # tr Cov(∇L_B) = (E||∇log p_B||² − tr ∇²U)/nβ² (``sgld_checks``)
        size = sum(x.size for x in jax.tree.leaves(params))
        probe, norm = (
            jnp.nanmean(jnp.where(healthy, trace.check_mean[:, i], jnp.nan)) for i in (1, 2)
        )
        trace_h_draws = ((probe - localization * size) / nbeta).astype(jnp.float32)
        grad_noise_draws = ((norm - probe) / nbeta**2).astype(jnp.float32)
        if batch_size >= n:  # full batch: no minibatch noise, whatever the estimate's own noise
            grad_noise_draws = jnp.zeros_like(grad_noise_draws)
    count = jnp.sum(healthy)
    safe = jnp.where(healthy, per_chain, 0.0)
    mean = jnp.where(count > 0, jnp.sum(safe) / jnp.maximum(count, 1), jnp.nan)
    var = jnp.sum(jnp.where(healthy, (per_chain - mean) ** 2, 0.0)) / jnp.maximum(count - 1, 1)
    std = jnp.where(count > 1, jnp.sqrt(var), jnp.nan)
    result = LLCResult(
        llc_mean=mean,
        llc_std=std,
        llc_per_chain=jnp.where(healthy, per_chain, jnp.nan),
        loss_trace=loss_trace,
        burnin_loss_trace=trace.burnin_loss_trace,
        init_loss=init_loss,
        nbeta=nbeta,
        localization=jnp.asarray(localization, init_loss.dtype),
        step_size=jnp.asarray(step_size, init_loss.dtype),
        diverged=diverged,
        divergence_step=divergence_step,
        accept_rate=trace.accept_rate,
        mala_accept=mala_accept,
        observables=None if moments is None else pool(moments, healthy, nbeta),
        geometry=LocalGeometry(
            h_max=jnp.nan, trace_h=jnp.nan, grad_noise=jnp.nan, trace_h_draws=trace_h_draws,
            noise_gain=1.0 if capabilities.noise_gain is None
            else capabilities.noise_gain(dict(sampler_options)),
            grad_noise_draws=grad_noise_draws,
        ) if config.step_check else None,
        lowest_excess=lowest_excess,
    )  # fmt: skip
    return replicate(result, mesh)


class Schedule(NamedTuple):
    """What a run of ``sample_llc`` does, as numbers that may be traced: ``num_burnin`` steps
    then ``num_draws`` kept draws (at most the config's, which size the program), the SGLD
    transition check every ``check_every`` steps after burn-in (``acceptance_checks`` evenly
    spaced), the full-data loss or the observables at every ``evaluate_every``-th kept draw (0:
    none), a progress report every ``progress_every`` steps (0: none; a Python 0 compiles no
    callback). Traced, one compiled program runs every schedule that fits it: calibration's
    cells and the final run of ``step_size="auto"``, with or without a progress bar, share
    one."""

    num_burnin: Any
    num_draws: Any
    check_every: Any
    evaluate_every: Any
    progress_every: Any = 0


def make_schedule(
    config: SamplingConfig, n: int, *, num_burnin: int | None = None, num_draws: int | None = None
) -> Schedule:
    """The ``Schedule`` (Python ints) of ``config`` on n examples, or of a run of ``num_burnin``
    and ``num_draws`` in a program sized by ``config``: the checks' periods follow the lengths
    that run, so a run's numbers do not depend on the program's size."""
    burnin = config.num_burnin if num_burnin is None else num_burnin
    draws = config.num_draws if num_draws is None else num_draws
    check_every = max(1, (draws * config.thinning) // max(config.acceptance_checks, 1))
    batch_size = _minibatch_size(config.batch_size, n)
    evaluate_every = 0
    if config.observables:
        evaluate_every = max(1, draws // max(1, config.observable_draws))
    elif config.step_check and (checks := full_data_checks(draws, n, batch_size)):
        evaluate_every = max(1, draws // checks)
    return Schedule(burnin, draws, check_every, evaluate_every, config.progress_every)


def trimmed(result: LLCResult, run: Schedule) -> LLCResult:
    """``result`` of a program sized for a longer run, cut to ``run``'s lengths (Python ints):
    what a program of exactly that length returns."""
    burnin, draws = run.num_burnin, run.num_draws
    if result.loss_trace.shape[-1] != draws or result.burnin_loss_trace.shape[-1] != burnin:
        result = result._replace(
            loss_trace=result.loss_trace[..., :draws],
            burnin_loss_trace=result.burnin_loss_trace[..., :burnin],
        )
    if not run.evaluate_every:  # no draw evaluated: as when the program compiles no evaluation
        result = result._replace(lowest_excess=None)
    return result


def traced_schedule(run: Schedule, *, callback: bool = True) -> Schedule:
    """``run`` as int32 arrays: arguments of the compiled core, not constants of it. Without
    ``callback``, a progress period of 0 stays a Python 0: no progress callback is compiled
    (with it, the callback is compiled and a period of 0 never reports)."""
    traced = Schedule(*(jnp.asarray(v, jnp.int32) for v in run))
    if not callback and not run.progress_every:
        traced = traced._replace(progress_every=0)
    return traced


def program_config(config: SamplingConfig, capacity: tuple[int, int] | None) -> SamplingConfig:
    """The static config of the program a run of ``config`` runs in, its schedule traced: sized
    for ``capacity`` = (burn-in, draws) when the run fits it (one program for every such run),
    else ``config`` itself (a program of the run's own length; the numbers are the same)."""
    if capacity is None or config.num_burnin > capacity[0] or config.num_draws > capacity[1]:
        return config
    return dataclasses.replace(config, num_burnin=capacity[0], num_draws=capacity[1])


FULL_DATA_CHECKS = 20
FULL_DATA_BUDGET = 0.1


def full_data_checks(num_draws: int, n: int, batch_size: int) -> int:
    """How many kept draws per chain the step check evaluates L_n(w_t) at (``LLCResult``'s
    ``lowest_excess``): ``FULL_DATA_CHECKS``, fewer when their n examples each would pass
    ``FULL_DATA_BUDGET`` (10%) of the examples the draws' minibatches hold (forward passes only,
    against the steps' forward and backward), none when even one would."""
    affordable = int(FULL_DATA_BUDGET * num_draws * batch_size // n)
    return max(0, min(FULL_DATA_CHECKS, num_draws, affordable))


def _fold_losses(acc, losses):
    moments, lowest = acc
    return update_moments(moments, losses), jnp.minimum(lowest, jnp.mean(losses))


def run_config(config: SamplingConfig, n: int) -> SamplingConfig:
    """``config`` as ``estimate_llc`` runs it on n examples (``calibrate`` too, so that its
    cells are ``estimate_llc``'s own program): the sampler's burn-in-adapting option
    (``SamplerCapabilities.adapts_during_burnin``) defaulted to ``num_burnin``; the batch size
    n for a full-batch sampler, ``None`` → min(n, ``DEFAULT_BATCH_SIZE``); the step check on.
    Chain groups are resolved by ``jaxslt.memory.with_chain_groups``."""
    capabilities = sampler_capabilities(config.sampler)
    options, adapting = config.options, capabilities.adapts_during_burnin
    if adapting and config.num_burnin > 0:
        options = {adapting: config.num_burnin, **options}
    batch_size = n if capabilities.full_batch else config.batch_size
    return dataclasses.replace(
        config, sampler_options=options, step_check=True,
        batch_size=min(n, DEFAULT_BATCH_SIZE) if batch_size is None else batch_size,
    )  # fmt: skip


def _sampled_problem(loss_fn, params, n, *, batch_size, compute_dtype, restrict):
    """What the chains (and the step check) see: the loss computed in ``compute_dtype`` and
    restricted to the sampled part, that part of w*, and the minibatch size (None:
    min(n, ``DEFAULT_BATCH_SIZE``))."""
    if compute_dtype is not None:
        loss_fn = computed_in(loss_fn, compute_dtype)
    if restrict is not None:
        loss_fn, params = restricted_loss(loss_fn, params, make_restriction(params, restrict))
    return loss_fn, params, _minibatch_size(batch_size, n)


def _minibatch_size(batch_size: int | None, n: int) -> int:
    """The minibatch the chains draw: ``batch_size``, None → ``DEFAULT_BATCH_SIZE``, at most n."""
    return min(n, DEFAULT_BATCH_SIZE if batch_size is None else batch_size)


sample_llc_jit = jax.jit(sample_llc, static_argnums=(0,), static_argnames=("config",))
"""``sample_llc`` compiled: ``loss_fn`` and ``config`` static, everything else traced (one
compile per loss function, config and array shapes)."""


def geometry_at(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    data: PyTree,
    key: jax.Array,
    *,
    batch_size: int | None,
    compute_dtype: Any = None,
    restrict: Restriction | None = None,
) -> LocalGeometry:
    """The at-w* part of the step check (``LocalGeometry``'s h_max, tr ∇²L and tr Cov(∇L_B))
    for ``sample_llc`` on the same arguments: the same loss (``compute_dtype``, ``restrict``),
    minibatch size and ``key``. A program of its own, compiled once per loss function, shapes
    and batch size (not per sampling config); ``with_geometry`` joins it to a result.

    Measured with ``jaxslt.curvature.local_geometry`` on a key folded from ``key``, so no chain
    number depends on it (a few dozen Hessian-vector products and minibatch gradients on
    4 × batch_size examples). Inside the sampling program it took most of the compile time of
    the extras: 13 of 26 s on the 2-layer in-context transformer of ``examples/``.
    """
    # every argument spelled out, so that callers that leave a default out share the program
    return _geometry_at(loss_fn, params, data, key, batch_size, compute_dtype, restrict)


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _geometry_at(loss_fn, params, data, key, batch_size, compute_dtype, restrict):
    loss_fn, params, batch_size = _sampled_problem(
        loss_fn, params, data_size(data), batch_size=batch_size, compute_dtype=compute_dtype,
        restrict=restrict,
    )  # fmt: skip
    return local_geometry(
        loss_fn, params, data, jax.random.fold_in(key, 7), batch_size=batch_size,
        sample_size=4 * batch_size,
    )  # fmt: skip


def lower_geometry(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    data: PyTree,
    key: jax.Array,
    *,
    batch_size: int | None,
    compute_dtype: Any = None,
    restrict: Restriction | None = None,
) -> jax.stages.Lowered:
    """``geometry_at``'s program on these arguments, traced and lowered, not compiled: its
    ``compile()`` fills the cache that a ``geometry_at`` call on the same arguments then finds
    (so the shell can compile it on another thread while the sampling program compiles)."""
    return _geometry_at.lower(loss_fn, params, data, key, batch_size, compute_dtype, restrict)


def with_geometry(result: LLCResult, at: LocalGeometry) -> LLCResult:
    """``result`` whose step-check geometry (the chains' part, from ``sample_llc`` with
    ``step_check``) is completed by ``at`` (``geometry_at``); fields are broadcast to the
    result's leading axes when it is batched (calibration cells)."""
    chains = result.geometry
    shape = jnp.shape(chains.trace_h_draws)
    h_max, trace_h, grad_noise = (jnp.broadcast_to(x, shape) for x in at[:3])
    geometry = chains._replace(h_max=h_max, trace_h=trace_h, grad_noise=grad_noise)
    return result._replace(geometry=geometry)


EXPLODED_FACTOR = 10.0


def flag_exploded(
    divergence_step: jax.Array,
    per_chain: jax.Array,
    excess: jax.Array,
    params: PyTree,
    *,
    first_kept: int,
    thinning: int,
) -> jax.Array:
    """``divergence_step`` (chains,) with finite but exploded chains flagged too (the rule in
    ``LLCResult``'s docstring; ``per_chain`` = λ̂_c, ``excess`` (chains, draws) = nβ·(L_B(w_t)
    − L_n(w*)), d = the size of ``params``): at their first kept draw whose excess passes the
    bound, else at burn-in's end. A chain already non-finite keeps its step."""
    dim = sum(x.size for x in jax.tree.leaves(params))
    bound = jnp.asarray(EXPLODED_FACTOR * dim, per_chain.dtype)
    finite = jnp.isfinite(per_chain)
    exploded = finite & (per_chain > bound)
    if per_chain.shape[0] >= 3:
        median = jnp.nanmedian(jnp.where(finite, per_chain, jnp.nan))
        spread = EXPLODED_FACTOR**2 * jnp.maximum(jnp.abs(median), 1.0)
        exploded = exploded | (finite & (per_chain - median > spread))
        bound = jnp.minimum(bound, median + spread)
    over = excess > bound
    first = first_kept + thinning * jnp.where(over.any(axis=1), jnp.argmax(over, axis=1), 0)
    return jnp.where(
        exploded & (divergence_step < 0), first, divergence_step
    )  # host-local values on every process of a multi-host mesh


def restricted_loss(loss_fn: Callable, center: PyTree, restrict: Restriction) -> tuple:
    """The loss of the sampled part v (the rest frozen at w*) and v* = the part of w*."""

    def loss_v(free, batch):
        return loss_fn(restrict.scatter(center, free), batch)

    return loss_v, restrict.gather(center)


def computed_in(loss_fn: Callable, dtype: Any) -> Callable:
    """loss_fn evaluated with float params and data cast to ``dtype`` (e.g. bfloat16), the loss
    returned in float32. Gradients flow back through the casts into the float32 chain state."""

    def cast(tree):
        return jax.tree.map(
            lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
        )

    def wrapped(params, batch):
        return loss_fn(cast(params), cast(batch)).astype(jnp.float32)

    return wrapped
