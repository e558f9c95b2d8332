"""The LLC estimator: a traceable core (``sample_llc``) and its validating shell (``estimate_llc``).

    λ̂_c = nβ · ( mean_t L_B(w_t^c) − L_n(w*) )          per chain c, over the kept draws t
    λ̂   = mean_c λ̂_c,   std = across-chain std (ddof=1)   over the chains that did not diverge

with w_t^c the draws of SGLD (or another kernel) on the localized tempered posterior
p(w) ∝ exp(−nβ·L_n(w) − γ/2·||w − w*||²), burn-in excluded, and L_n(w*) the full-data loss at
the checkpoint, computed in chunks.

Divergence policy: a chain whose minibatch loss becomes NaN/inf is flagged (``diverged``, with
the first bad step in ``divergence_step``) and excluded from ``llc_mean``/``llc_std``; its own
``llc_per_chain`` entry is NaN. ``estimate_llc`` warns when some chains diverged and raises when
all did, so a NaN is never returned silently.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxslt import validation
from jaxslt.chains import (
    Accumulator,
    auto_chain_batch_size,
    available_memory,
    data_size,
    param_partition_specs,
    place_params,
    replicate,
    run_chains,
    shard_params,
)
from jaxslt.curvature import local_geometry
from jaxslt.kernels import (
    DEFAULT_FRICTION,
    FULL_BATCH_SAMPLERS,
    SGLD_SAMPLERS,
    make_kernel,
    sgld_checks,
    state_position,
)
from jaxslt.observables import init_moments, per_example_losses, update_moments
from jaxslt.observables import observables as pool
from jaxslt.posterior import default_nbeta, full_data_loss, localized_posterior, running_llc
from jaxslt.progress import progress_bar
from jaxslt.restriction import Restriction, make_restriction

PyTree = Any
DEFAULT_BATCH_SIZE = 256
DEFAULT_LOCALIZATION = 100.0


class LLCWarning(RuntimeWarning):
    """A run finished but its diagnostics say the estimate should not be trusted as is."""


class LLCResult(NamedTuple):
    """An LLC estimate. A NamedTuple of arrays, hence a pytree that can leave ``jit``/``vmap``.

    Fields: ``llc_mean``, ``llc_std`` (ddof=1; NaN with fewer than two healthy chains),
    ``llc_per_chain`` (num_chains,), ``loss_trace`` (num_chains, num_draws) of minibatch losses
    at the kept draws, ``burnin_loss_trace`` (num_chains, num_burnin), ``init_loss`` (full-data
    L_n(w*)), ``nbeta``, ``localization``, ``step_size``, ``diverged`` (num_chains,),
    ``divergence_step`` (num_chains,; −1 where the chain stayed finite) and ``accept_rate``
    (num_chains,; mean Metropolis acceptance after burn-in, NaN for unadjusted samplers),
    ``mala_accept`` (num_chains,; mean MALA acceptance probability of the SGLD transitions at
    ``acceptance_checks`` evenly spaced steps after burn-in; NaN for other samplers),
    ``observables`` (a ``jaxslt.observables.Observables`` when requested: singular fluctuation,
    WAIC, WBIC, ...; else None), ``geometry`` (a ``jaxslt.curvature.LocalGeometry`` of the
    loss at w* with ``step_check``: h_max, tr ∇²L, minibatch gradient noise; else None).

    ``diverged`` covers non-finite chains and exploded ones: finite chains whose λ̂_c exceeds
    ``EXPLODED_FACTOR``·d (d sampled parameters; λ ≤ d/2 at any minimum) or, with three or more
    chains, exceeds the chains' median by more than ``EXPLODED_FACTOR``²·max(|median|, 1).
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
    localization: float | jax.Array = 100.0,
    num_chains: int = 4,
    num_draws: int = 1000,
    num_burnin: int = 500,
    thinning: int = 1,
    batch_size: int | None = None,
    sampler: str | Callable = "sgld",
    sampler_options: Mapping[str, Any] | tuple = (),
    eval_batch_size: int | None = None,
    acceptance_checks: int = 50,
    chain_batch_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    compute_dtype: Any = None,
    progress_every: int = 0,
    restrict: Restriction | str | tuple[str, ...] | None = None,
    observables: bool = False,
    observable_draws: int = 100,
    param_specs: PyTree | tuple | None = None,
    step_check: bool = False,
) -> LLCResult:
    """Traceable core of ``estimate_llc``: no validation, no printing; jit and vmap it freely.

    Integer settings, ``sampler``, ``restrict`` and ``loss_fn`` shape the program (static under
    ``jit``); ``params``, ``data``, ``key``, ``step_size``, ``nbeta`` and ``localization`` may
    be traced. ``nbeta=None`` means n / log n with n the leading-axis length of ``data``.
    ``restrict``: a ``jaxslt.Restriction`` (``jaxslt.make_restriction(params, selection)``; a
    pytree whose index arrays may be traced) or glob pattern(s) when not jitted: sample only
    those weights, the others frozen at w* (the chains carry only the sampled part).
    ``param_specs``: how the sampled parameters (and w*) split over ``mesh``'s ``"model"`` axis
    (see ``jaxslt.chains.param_partition_specs``; under ``jit`` a flat tuple in leaf order;
    ``None`` = the automatic rule). Outputs are replicated over ``mesh``.
    ``step_check``: also measure the loss's ``LocalGeometry`` at w* (``result.geometry``; a
    few dozen Hessian-vector products and minibatch gradients, on a key folded from ``key``
    so the chains' numbers do not change), from which ``diagnose`` judges the step size.
    """
    n = data_size(data)
    if compute_dtype is not None:
        loss_fn = _computed_in(loss_fn, compute_dtype)
    if restrict is not None:
        loss_fn, params = _restricted(loss_fn, params, make_restriction(params, restrict))
    specs = param_partition_specs(params, mesh, param_specs)
    params = shard_params(params, mesh, specs)  # w*, hence the localizer, split like the chains
    batch_size = min(n, DEFAULT_BATCH_SIZE if batch_size is None else batch_size)
    nbeta = default_nbeta(n) if nbeta is None else nbeta
    init_loss = full_data_loss(loss_fn, params, data, eval_batch_size or batch_size)
    posterior = localized_posterior(loss_fn, params, nbeta=nbeta, localization=localization)
    kernel = make_kernel(sampler, loss_fn, posterior, sampler_options)
    check = None
    if acceptance_checks > 0 and sampler in SGLD_SAMPLERS:

        def check(old, new, batch, eps, info):
            reuse = None if info.grad is None else (info.loss, info.grad)
            return sgld_checks(
                posterior, state_position(old), state_position(new), batch, eps, reuse
            )

    accumulate = None
    if observables:
        chunk = eval_batch_size or batch_size
        accumulate = Accumulator(
            init=lambda: init_moments(n, init_loss.dtype),
            update=lambda acc, state: update_moments(
                acc, per_example_losses(loss_fn, state_position(state), data, chunk)
            ),
            every=max(1, num_draws // max(1, observable_draws)),
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
        progress_every=progress_every,
        transition_check=check,
        check_every=max(1, (num_draws * thinning) // max(acceptance_checks, 1)),
        chain_batch_size=chain_batch_size,
        mesh=mesh,
        accumulate=accumulate,
        param_specs=specs,
    )
    mala_accept = trace.check_mean
    if check is not None:  # (chains, 2): acceptance, tr ∇²U by the step's own noise
        mala_accept = trace.check_mean[:, 0]
    loss_trace = trace.loss_trace.astype(init_loss.dtype)
    nbeta = jnp.asarray(nbeta, init_loss.dtype)
    per_chain = nbeta * (jnp.mean(loss_trace, axis=1) - init_loss)
    divergence_step = flag_exploded(
        trace.divergence_step, per_chain, nbeta * (loss_trace - init_loss), params,
        first_kept=num_burnin, thinning=thinning,
    )  # fmt: skip
    diverged = divergence_step >= 0
    healthy = ~diverged
    trace_h_draws = jnp.nan
    if check is not None:  # tr ∇²L = (tr ∇²U − γ·d)/nβ, over the healthy chains
        size = sum(x.size for x in jax.tree.leaves(params))
        probe = jnp.nanmean(jnp.where(healthy, trace.check_mean[:, 1], jnp.nan))
        trace_h_draws = ((probe - localization * size) / nbeta).astype(jnp.float32)
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
        observables=None if accumulate is None else pool(trace.accumulated, healthy, nbeta),
        geometry=local_geometry(
            loss_fn, params, data, jax.random.fold_in(key, 7), batch_size=batch_size,
            sample_size=4 * batch_size,
        )._replace(
            trace_h_draws=trace_h_draws,
            noise_gain=1.0 / dict(sampler_options).get("friction", DEFAULT_FRICTION)
            if sampler == "sghmc" else 1.0,
        ) if step_check else None,
    )  # fmt: skip
    return replicate(result, mesh)


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


def _restricted(loss_fn: Callable, center: PyTree, restrict: Restriction) -> tuple:
    """The loss of the sampled part v (the rest frozen at w*) and v* = the part of w*."""

    def loss_v(free, batch):
        return loss_fn(restrict.scatter(center, free), batch)

    return loss_v, restrict.gather(center)


def _computed_in(loss_fn: Callable, dtype: Any) -> Callable:
    """loss_fn evaluated with float params and data cast to ``dtype`` (e.g. bfloat16), the loss
    returned in float32. Gradients flow back through the casts into the float32 chain state."""

    def cast(tree):
        return jax.tree.map(
            lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
        )

    def wrapped(params, batch):
        return loss_fn(cast(params), cast(batch)).astype(jnp.float32)

    return wrapped


_STATIC = (
    "num_chains",
    "num_draws",
    "num_burnin",
    "thinning",
    "batch_size",
    "sampler",
    "sampler_options",
    "eval_batch_size",
    "acceptance_checks",
    "chain_batch_size",
    "mesh",
    "compute_dtype",
    "progress_every",
    "observables",
    "observable_draws",
    "param_specs",
    "step_check",
)
_sample_llc_jit = jax.jit(sample_llc, static_argnums=(0,), static_argnames=_STATIC)


def estimate_llc(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    data: PyTree,
    *,
    key: jax.Array,
    step_size: float | Literal["auto"],
    num_chains: int = 4,
    num_draws: int = 1000,
    num_burnin: int = 500,
    thinning: int = 1,
    batch_size: int | None = None,
    nbeta: float | None = None,
    localization: float | None = None,
    sampler: str | Callable = "sgld",
    sampler_options: Mapping[str, Any] | None = None,
    eval_batch_size: int | None = None,
    acceptance_checks: int = 50,
    chain_batch_size: int | Literal["auto"] | None = "auto",
    mesh: jax.sharding.Mesh | None = None,
    param_specs: Any = None,
    compute_dtype: Any = None,
    restrict: Any = None,
    observables: bool = False,
    observable_draws: int = 100,
    diagnostics: bool = True,
    progress: bool | None = None,
) -> LLCResult:
    """Estimate the local learning coefficient λ(w*) of ``params`` = w* under ``loss_fn``.

    Samples p(w) ∝ exp(−nβ·L_n(w) − γ/2·||w − w*||²) with ``num_chains`` chains (vmapped, steps
    scanned, one compiled program) and returns λ̂ = nβ·(E[L_B(w_t)] − L_n(w*)) averaged over the
    ``num_draws`` kept draws of each chain (every ``thinning``-th step after ``num_burnin``
    burn-in steps) and over the chains that did not diverge.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` mean loss over the batch. Keep the same
        function object across calls to reuse the compiled program.
      params: w*, any pytree of float arrays (Flax Linen variables, NNX State, plain dicts, ...).
      data: a pytree of arrays sharing a leading axis of length n.
      key: a PRNG key; it fully determines the result.
      step_size: ε, the noise variance of the SGLD step w ← w + (ε/2)∇log p + N(0, ε), or
        ``"auto"``: run ``jaxslt.calibrate`` first (on a key folded from ``key``) and use the
        step size, localization (unless given), nβ (unless given) and at least the burn-in it
        recommends; ``result.calibration`` holds the table and the reasons.
      nbeta: nβ, the weight on the mean loss; ``None`` means n / log n (n = len(data)).
      localization: γ ≥ 0; ``None`` means 100 (or the calibrated value with ``"auto"``).
      batch_size: minibatch size, drawn i.i.d. with replacement per chain and step; ``n`` means
        full-batch; ``None`` means min(n, 256).
      sampler: ``"sgld"``, ``"rmsprop_sgld"``, ``"sghmc"``, ``"sgnht"``, ``"mala"`` (full-batch,
        Metropolis-adjusted; ``batch_size`` must be None or n), ``"blackjax_sgld"``,
        ``"blackjax_sghmc"``, ``"blackjax_sgnht"``, or a factory
        ``(loss_fn, posterior, **options) -> SamplingKernel``. See ``jaxslt.kernels``.
      sampler_options: keyword arguments of the sampler (e.g. ``{"friction": 0.1}`` for sghmc;
        ``rmsprop_sgld``'s ``adapt_steps`` defaults to ``num_burnin``).
      eval_batch_size: chunk size for the full-data L_n(w*) (default ``batch_size``).
      acceptance_checks: at how many evenly spaced steps after burn-in to evaluate the MALA
        acceptance of SGLD transitions (``result.mala_accept``; one extra gradient each);
        0 disables it.
      chain_batch_size: run the chains in groups of this many (a divisor of ``num_chains``),
        one group after another, so that at most this many chain states are live at once;
        same result as all chains at once. A live SGLD chain holds its state and its gradient
        (2 copies of the parameters; the noise is fused into the update), about 3 more while
        ``acceptance_checks`` are on (the previous position and both gradients). ``None``: all
        chains vmapped. ``"auto"``: all chains vmapped if that fits in 80% of the free device
        (or host) memory by this count, otherwise the largest group that does
        (``chains.auto_chain_batch_size``).
      mesh: a ``jax.sharding.Mesh`` (build it with ``AxisType.Auto`` axes) with a ``"chain"``
        axis, a ``"model"`` axis, or both. Each group's chains are spread over ``"chain"``
        (group size a multiple of its size); each parameter leaf of the chain states, its
        gradient and w* are split over ``"model"`` as ``param_specs`` says; data are
        replicated. Works across processes after ``jax.distributed.initialize()`` (a global
        mesh): every process gets the whole result. Same result as on one device, to float
        rounding.
      param_specs: one ``jax.sharding.PartitionSpec`` (or None = replicated) per leaf of
        ``params``, as a pytree of the same structure (e.g. from
        ``flax.linen.get_partition_spec``) or a list in ``jax.tree.leaves(params)`` order;
        never name ``"chain"``. ``None``: split every leaf of at least
        ``jaxslt.chains.MIN_SHARDED_SIZE`` (2**14) elements along its largest dimension
        divisible by the ``"model"`` axis size; replicate the rest.
      restrict: weight-refined LLC λ(w*; V): sample only the weights V selected by glob
        pattern(s) over ``jaxslt.tree_paths(params)`` (``"params/block_0/attn/**"``), a
        predicate ``(path, leaf) -> bool | bool array`` or a boolean mask pytree (per leaf or
        per element, e.g. one head of a packed attention kernel); the others stay frozen at
        w* (no drift, no noise). λ̂ = nβ·(E[L_n(u*, v)] − L_n(w*)). See ``jaxslt.restriction``.
      observables: also compute the functional variance, singular fluctuation, WAIC, WBIC and
        Bayes/Gibbs training losses (``result.observables``; ``jaxslt.observables``) from
        per-example losses on the full data at ``observable_draws`` evenly spaced kept draws
        per chain (one full-data forward pass each, in chunks of ``eval_batch_size``).
      diagnostics: diagnose the run (``result.diagnostics``: R-hat, ESS, MALA acceptance,
        drift, divergences) and warn (``LLCWarning``) for each failed check, naming the cause
        and the remedy.
      progress: show a progress bar; ``None`` shows one on a terminal only.

    Data-refined LLC λ(w*; q'): pass the other data set (e.g. one slice) as ``data``; it is
    used both for sampling and for L_n(w*), and nβ defaults to its own n / log n (pass
    ``nbeta`` to keep the full data's). w* need not minimise the slice's loss, so values can
    be negative.

    Raises ValueError/TypeError for bad arguments (before anything compiles) and
    FloatingPointError if every chain diverged. Warns when some chains diverged.
    """
    validation.check_diagnostics(
        diagnostics, num_draws=num_draws, num_chains=num_chains, progress=progress
    )
    plan = _plan(
        loss_fn, params, data, key=key, step_size=step_size, num_chains=num_chains,
        num_draws=num_draws, num_burnin=num_burnin, thinning=thinning, batch_size=batch_size,
        nbeta=nbeta, localization=localization, sampler=sampler,
        sampler_options=sampler_options, eval_batch_size=eval_batch_size,
        acceptance_checks=acceptance_checks, chain_batch_size=chain_batch_size, mesh=mesh,
        compute_dtype=compute_dtype, restrict=restrict, observables=observables,
        observable_draws=observable_draws, param_specs=param_specs,
    )  # fmt: skip
    params = place_params(params, mesh, plan.settings["param_specs"])
    run = functools.partial(_sample_llc_jit, loss_fn, params, data, key, **plan.settings)
    with _progress(progress, plan.total_steps, f"LLC ({num_chains} chains)") as every:
        result = jax.block_until_ready(run(progress_every=every))
    validation.check_estimate(loss_fn, params, data, result)  # causes other than step_size
    _check_divergence(result, plan.settings["step_size"], raise_if_all=True)
    return _finish(result, plan, diagnostics)


class _Plan(NamedTuple):
    settings: dict  # keyword arguments of sample_llc, validated
    total_steps: int  # sampler steps, summed over chain groups, for the progress bar
    calibration: Any


def _plan(loss_fn, params, data, *, key, step_size, num_chains, num_draws, num_burnin,
          thinning, batch_size, nbeta, localization, sampler, sampler_options, eval_batch_size,
          acceptance_checks, chain_batch_size, mesh, compute_dtype, restrict, observables,
          observable_draws, param_specs=None) -> _Plan:  # fmt: skip
    """Validate everything (before anything compiles), resolve defaults and ``"auto"``, and
    return the keyword arguments of ``sample_llc``."""
    n = validation.check_data(data)
    validation.check_params(params)
    validation.check_key(key)
    compute_dtype = validation.check_compute_dtype(compute_dtype)
    if restrict is not None:
        restrict = make_restriction(params, restrict)
    if not isinstance(observables, bool):
        raise TypeError(f"observables must be True or False; got {observables!r}")
    if observables:
        validation.check_positive_int(
            "observable_draws", observable_draws, "the number of kept draws per chain at "
            "which to evaluate per-example losses on the full data"
        )  # fmt: skip
    validation.check_sampler(sampler, sampler_options, batch_size=batch_size, n=n)
    validation.check_optional_settings(nbeta=nbeta, localization=localization)  # before "auto"
    calibration = None
    if isinstance(step_size, str):
        if step_size != "auto":
            raise TypeError(f'step_size must be a number or "auto"; got {step_size!r}')
        from jaxslt.calibration import calibrate

        cal_loss, cal_params = (
            (loss_fn, params) if restrict is None else _restricted(loss_fn, params, restrict)
        )
        calibration = calibrate(
            cal_loss, cal_params, data, key=jax.random.fold_in(key, 1), num_chains=num_chains,
            batch_size=batch_size, sampler=sampler if isinstance(sampler, str) else "sgld",
            **({} if localization is None else {"localizations": [localization]}),
            **({} if nbeta is None else {"nbetas": [nbeta]}),
        )  # fmt: skip
        if not calibration.recommended:
            raise RuntimeError(f"step_size='auto' found no usable setting:\n{calibration}")
        rec = calibration.recommended
        step_size, localization, nbeta = rec["step_size"], rec["localization"], rec["nbeta"]
        num_burnin = max(num_burnin, rec["num_burnin"])
        num_draws = max(num_draws, rec["num_draws"])
        for caution in calibration.cautions:
            warnings.warn(f"step_size='auto': {caution}", LLCWarning, stacklevel=4)
    localization = DEFAULT_LOCALIZATION if localization is None else localization
    validation.check_settings(
        n=n,
        step_size=step_size,
        num_chains=num_chains,
        num_draws=num_draws,
        num_burnin=num_burnin,
        thinning=thinning,
        batch_size=batch_size,
        nbeta=nbeta,
        localization=localization,
        eval_batch_size=eval_batch_size,
    )
    validation.check_chain_groups(
        num_chains=num_chains, acceptance_checks=acceptance_checks,
        chain_batch_size=chain_batch_size,
    )  # fmt: skip
    auto = chain_batch_size == "auto"
    validation.check_mesh(mesh, num_chains, None if auto else chain_batch_size, param_specs)
    param_specs = validation.check_param_specs(
        param_specs, params, mesh, restricted=restrict is not None
    )
    options = validation.check_sampler(sampler, sampler_options, batch_size=batch_size, n=n)
    if sampler == "rmsprop_sgld" and num_burnin > 0:
        options = {"adapt_steps": num_burnin, **options}
    if sampler in FULL_BATCH_SAMPLERS:
        batch_size = n
    batch_size = min(n, DEFAULT_BATCH_SIZE) if batch_size is None else batch_size
    validation.check_loss_fn(loss_fn, params, data, batch_size)
    if auto:
        chain_batch_size = _auto_chain_batch_size(
            loss_fn, params, data, num_chains=num_chains, batch_size=batch_size,
            sampler=sampler, options=options, mesh=mesh, restrict=restrict,
            checks=acceptance_checks > 0 and sampler in SGLD_SAMPLERS, observables=observables,
        )  # fmt: skip
    total = num_burnin + num_draws * thinning
    if chain_batch_size:
        total *= num_chains // min(chain_batch_size, num_chains)
    settings = dict(
        **validation.cast_settings(  # in the chains' dtype, checked there
            params,
            step_size=step_size,
            localization=localization,
            nbeta=default_nbeta(n) if nbeta is None else nbeta,
        ),
        num_chains=num_chains,
        num_draws=num_draws,
        num_burnin=num_burnin,
        thinning=thinning,
        batch_size=batch_size,
        sampler=sampler,
        sampler_options=tuple(sorted(options.items())),
        eval_batch_size=eval_batch_size,
        acceptance_checks=acceptance_checks,
        chain_batch_size=chain_batch_size,
        mesh=mesh,
        compute_dtype=compute_dtype,
        restrict=restrict,
        observables=observables,
        observable_draws=observable_draws,
        param_specs=param_specs,
        step_check=True,
    )
    return _Plan(settings, total, calibration)


def _nbytes(tree: PyTree) -> int:
    return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


class _Memory(NamedTuple):
    """The memory model on one device without a mesh, in bytes: ``chain`` per live chain (its
    kernel state, one gradient, what an acceptance check holds, per-example moments for
    observables); ``params`` fixed and split with the parameters (w*, one working copy of the
    sampled part); ``data`` fixed and replicated."""

    chain: int
    params: int
    data: int


def _chain_memory(loss_fn, params, data, *, batch_size, sampler, options, restrict, checks,
                  observables) -> _Memory:  # fmt: skip
    """``_Memory`` of this run; ``benchmarks/memory_model.py`` compares it with XLA's compiled
    memory."""
    sampled_loss, sampled = (
        (loss_fn, params) if restrict is None else _restricted(loss_fn, params, restrict)
    )

    def init_state():
        posterior = localized_posterior(sampled_loss, sampled, nbeta=1.0, localization=1.0)
        kernel = make_kernel(sampler, sampled_loss, posterior, tuple(options.items()))
        batch = jax.tree.map(lambda x: x[:batch_size], data)
        return kernel.init(sampled, jax.random.key(0), batch)

    state_bytes, param_bytes = _nbytes(jax.eval_shape(init_state)), _nbytes(sampled)
    # one gradient; at an acceptance check XLA also holds the previous position, its gradient
    # and the new gradient: ~2.7 more copies (benchmarks/memory_model.py)
    chain_bytes = state_bytes + param_bytes * (4 if checks else 1)
    if observables:
        chain_bytes += 3 * 4 * data_size(data)  # running mean, M2 and log-sum-exp per example
    return _Memory(chain_bytes, _nbytes(params) + param_bytes, _nbytes(data))


def _auto_chain_batch_size(loss_fn, params, data, *, num_chains, batch_size, sampler, options,
                           mesh, restrict, checks, observables) -> int | None:  # fmt: skip
    """``chain_batch_size="auto"``: the memory model (``_chain_memory``) against the free
    memory of the devices, parameter sizes split over the mesh's ``"model"`` axis."""
    memory = _chain_memory(
        loss_fn, params, data, batch_size=batch_size, sampler=sampler, options=options,
        restrict=restrict, checks=checks, observables=observables,
    )  # fmt: skip
    shape = dict(mesh.shape) if mesh is not None else {}
    model = shape.get("model", 1)
    devices = mesh.devices.flat if mesh is not None else jax.local_devices()[:1]
    free = [available_memory(d) for d in devices if d.process_index == jax.process_index()]
    return auto_chain_batch_size(
        num_chains,
        chain_bytes=memory.chain // model,
        fixed_bytes=memory.params // model + memory.data,
        available=None if not free or None in free else min(free),
        chain_axis=shape.get("chain", 1),
    )


@contextlib.contextmanager
def _progress(progress: bool | None, total: int, label: str):
    """Yield ``progress_every`` for ``sample_llc``: 0 (no callback compiled) unless a bar is
    shown; ``None`` shows one on a terminal for runs of 2000 steps or more."""
    show = progress if progress is not None else (total >= 2000 and sys.stderr.isatty())
    if not show:
        yield 0
        return
    with progress_bar(total, label):
        yield max(1, total // 100)


def _check_divergence(result: LLCResult, step_size: Any, *, raise_if_all: bool) -> None:
    diverged = np.asarray(result.diverged)
    num_chains = diverged.size
    step_size = float(step_size)
    if diverged.all() and raise_if_all:
        raise FloatingPointError(
            f"all {num_chains} chains diverged (first non-finite loss at steps "
            f"{np.asarray(result.divergence_step).tolist()}); lower step_size (now {step_size:g}) "
            "or check the loss for NaN at w*"
        )
    if diverged.any():
        warnings.warn(
            f"{int(diverged.sum())} of {num_chains} chains diverged and were excluded from the "
            f"estimate; lower step_size (now {step_size:g})",
            LLCWarning,
            stacklevel=3,
        )


def _finish(result: LLCResult, plan: _Plan, diagnostics: bool) -> LLCResult:
    """Attach the diagnostics (warning for each failed check) and the calibration."""
    if diagnostics:
        from jaxslt.diagnostics import diagnose

        report = diagnose(result)
        for message in report.warnings:
            if "diverged" not in message:  # already said by _check_divergence
                warnings.warn(message, LLCWarning, stacklevel=3)
        result = result._replace(diagnostics=report)
    return result._replace(calibration=plan.calibration)
