"""The validating shell of LLC estimation: ``estimate_llc`` around the traceable core.

``jaxslt.core.sample_llc`` computes λ̂ (its docstring states the estimator); this module
validates every argument before anything compiles (``jaxslt.validation``), resolves defaults and
``step_size="auto"`` (``jaxslt.calibration``), places parameters on a mesh, runs the compiled
core (``sample_llc_jit``) with a progress bar, and applies the divergence policy and the
diagnostics. ``plan_estimate``, ``progress_steps``, ``check_divergence`` and ``finish_estimate``
are those stages, shared with ``jaxslt.trajectory``.

Divergence policy: a chain whose minibatch loss becomes NaN/inf, or that explodes while staying
finite, is flagged (``diverged``, with the first bad step in ``divergence_step``) and excluded
from ``llc_mean``/``llc_std``; its own ``llc_per_chain`` entry is NaN. ``estimate_llc`` warns
when some chains diverged and raises when all did, so a NaN is never returned silently.
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
    auto_chain_batch_size,
    available_memory,
    data_size,
    place_params,
)
from jaxslt.core import (
    DEFAULT_BATCH_SIZE,
    LLCResult,
    restricted_loss,
    sample_llc,
)
from jaxslt.kernels import (
    make_kernel,
    sampler_capabilities,
)
from jaxslt.posterior import default_nbeta, localized_posterior
from jaxslt.progress import progress_bar
from jaxslt.restriction import make_restriction

PyTree = Any
DEFAULT_LOCALIZATION = 100.0


class LLCWarning(RuntimeWarning):
    """A run finished but its diagnostics say the estimate should not be trusted as is."""


STATIC_SETTINGS = (
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
sample_llc_jit = jax.jit(sample_llc, static_argnums=(0,), static_argnames=STATIC_SETTINGS)


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
    plan = plan_estimate(
        loss_fn, params, data, key=key, step_size=step_size, num_chains=num_chains,
        num_draws=num_draws, num_burnin=num_burnin, thinning=thinning, batch_size=batch_size,
        nbeta=nbeta, localization=localization, sampler=sampler,
        sampler_options=sampler_options, eval_batch_size=eval_batch_size,
        acceptance_checks=acceptance_checks, chain_batch_size=chain_batch_size, mesh=mesh,
        compute_dtype=compute_dtype, restrict=restrict, observables=observables,
        observable_draws=observable_draws, param_specs=param_specs,
    )  # fmt: skip
    params = place_params(params, mesh, plan.settings["param_specs"])
    run = functools.partial(sample_llc_jit, loss_fn, params, data, key, **plan.settings)
    with progress_steps(progress, plan.total_steps, f"LLC ({num_chains} chains)") as every:
        result = jax.block_until_ready(run(progress_every=every))
    validation.check_estimate(loss_fn, params, data, result)  # causes other than step_size
    check_divergence(result, plan.settings["step_size"], raise_if_all=True)
    return finish_estimate(result, plan, diagnostics)


class EstimatePlan(NamedTuple):
    settings: dict  # keyword arguments of sample_llc, validated
    total_steps: int  # sampler steps, summed over chain groups, for the progress bar
    calibration: Any


def plan_estimate(loss_fn, params, data, *, key, step_size, num_chains, num_draws, num_burnin,
          thinning, batch_size, nbeta, localization, sampler, sampler_options, eval_batch_size,
          acceptance_checks, chain_batch_size, mesh, compute_dtype, restrict, observables,
          observable_draws, param_specs=None) -> EstimatePlan:  # fmt: skip
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
            (loss_fn, params) if restrict is None else restricted_loss(loss_fn, params, restrict)
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
    capabilities = sampler_capabilities(sampler)
    if capabilities.adapts_during_burnin and num_burnin > 0:
        options = {capabilities.adapts_during_burnin: num_burnin, **options}
    if capabilities.full_batch:
        batch_size = n
    batch_size = min(n, DEFAULT_BATCH_SIZE) if batch_size is None else batch_size
    validation.check_loss_fn(loss_fn, params, data, batch_size)
    if auto:
        chain_batch_size = _auto_chain_batch_size(
            loss_fn, params, data, num_chains=num_chains, batch_size=batch_size,
            sampler=sampler, options=options, mesh=mesh, restrict=restrict,
            checks=acceptance_checks > 0 and capabilities.sgld_transition, observables=observables,
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
    return EstimatePlan(settings, total, calibration)


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


def chain_memory(loss_fn, params, data, *, batch_size, sampler, options, restrict, checks,
                  observables) -> _Memory:  # fmt: skip
    """``_Memory`` of this run; ``benchmarks/memory_model.py`` compares it with XLA's compiled
    memory."""
    sampled_loss, sampled = (
        (loss_fn, params) if restrict is None else restricted_loss(loss_fn, params, restrict)
    )

    def init_state():
        posterior = localized_posterior(sampled_loss, sampled, nbeta=1.0, localization=1.0)
        kernel = make_kernel(sampler, sampled_loss, posterior, tuple(options.items())).kernel
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
    """``chain_batch_size="auto"``: the memory model (``chain_memory``) against the free
    memory of the devices, parameter sizes split over the mesh's ``"model"`` axis."""
    memory = chain_memory(
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
def progress_steps(progress: bool | None, total: int, label: str):
    """Yield ``progress_every`` for ``sample_llc``: 0 (no callback compiled) unless a bar is
    shown; ``None`` shows one on a terminal for runs of 2000 steps or more."""
    show = progress if progress is not None else (total >= 2000 and sys.stderr.isatty())
    if not show:
        yield 0
        return
    with progress_bar(total, label):
        yield max(1, total // 100)


def check_divergence(result: LLCResult, step_size: Any, *, raise_if_all: bool) -> None:
    """The divergence policy: warn (``LLCWarning``) when some chains diverged; raise
    ``FloatingPointError`` naming the step size when all did and ``raise_if_all``."""
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


def finish_estimate(result: LLCResult, plan: EstimatePlan, diagnostics: bool) -> LLCResult:
    """Attach the diagnostics (warning for each failed check) and the calibration."""
    if diagnostics:
        from jaxslt.diagnostics import diagnose

        report = diagnose(result)
        for message in report.warnings:
            if "diverged" not in message:  # already said by check_divergence
                warnings.warn(message, LLCWarning, stacklevel=3)
        result = result._replace(diagnostics=report)
    return result._replace(calibration=plan.calibration)
