"""``estimate_llc``: the public one-call LLC estimate, a flat keyword interface over the stages
of ``jaxslt.plan`` (validate → resolve → place → run → divergence policy → diagnose) around the
compiled core ``jaxslt.core.sample_llc`` (whose docstring states the estimator).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax

from jaxslt import plan as stages
from jaxslt import validation
from jaxslt.config import DEFAULTS, SamplingConfig
from jaxslt.core import LLCResult
from jaxslt.plan import LLCWarning
from jaxslt.types import PyTree

__all__ = ["LLCWarning", "estimate_llc"]


def estimate_llc(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    data: PyTree,
    *,
    key: jax.Array,
    step_size: float | Literal["auto"],
    num_chains: int = DEFAULTS.num_chains,
    num_draws: int = DEFAULTS.num_draws,
    num_burnin: int = DEFAULTS.num_burnin,
    thinning: int = DEFAULTS.thinning,
    batch_size: int | None = DEFAULTS.batch_size,
    nbeta: float | None = None,
    localization: float | None = None,
    sampler: str | Callable = DEFAULTS.sampler,
    sampler_options: Mapping[str, Any] | None = None,
    eval_batch_size: int | None = DEFAULTS.eval_batch_size,
    acceptance_checks: int = DEFAULTS.acceptance_checks,
    chain_batch_size: int | Literal["auto"] | None = DEFAULTS.chain_batch_size,
    mesh: jax.sharding.Mesh | None = DEFAULTS.mesh,
    param_specs: Any = DEFAULTS.param_specs,
    compute_dtype: Any = DEFAULTS.compute_dtype,
    restrict: Any = None,
    observables: bool = DEFAULTS.observables,
    observable_draws: int = DEFAULTS.observable_draws,
    diagnostics: bool = True,
    progress: bool | None = None,
) -> LLCResult:
    """Estimate the local learning coefficient λ(w*) of ``params`` = w* under ``loss_fn``.

    Samples p(w) ∝ exp(−nβ·L_n(w) − γ/2·||w − w*||²) with ``num_chains`` chains (vmapped, steps
    scanned, one compiled program) and returns λ̂ = nβ·(E[L_B(w_t)] − L_n(w*)) averaged over the
    ``num_draws`` kept draws of each chain (every ``thinning``-th step after ``num_burnin``
    burn-in steps) and over the chains that did not diverge.

    Data-refined LLC λ(w*; q'): pass the other data set (e.g. one slice) as ``data``; it is
    used both for sampling and for L_n(w*), and nβ defaults to its own n / log n (pass
    ``nbeta`` to keep the full data's). w* need not minimise the slice's loss, so values can
    be negative.

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
      num_chains: independent chains, all started at w*.
      num_draws: kept draws per chain (after burn-in and thinning).
      num_burnin: steps per chain discarded before the first kept draw.
      thinning: keep every ``thinning``-th step after burn-in.
      batch_size: minibatch size, drawn i.i.d. with replacement per chain and step; ``n`` means
        full-batch; ``None`` means min(n, 256).
      nbeta: nβ, the weight on the mean loss; ``None`` means n / log n (n = len(data)).
      localization: γ ≥ 0; ``None`` means 100 (or the calibrated value with ``"auto"``).
      sampler: ``"sgld"``, ``"rmsprop_sgld"``, ``"sghmc"``, ``"sgnht"``, ``"mala"`` (full-batch,
        Metropolis-adjusted; ``batch_size`` must be None or n), ``"blackjax_sgld"``,
        ``"blackjax_sghmc"``, ``"blackjax_sgnht"``, a name added with
        ``jaxslt.register_sampler``, or a factory
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
        (``jaxslt.memory.auto_chain_batch_size``).
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
        ``jaxslt.sharding.MIN_SHARDED_SIZE`` (2**14) elements along its largest dimension
        divisible by the ``"model"`` axis size; replicate the rest.
      compute_dtype: a float dtype (e.g. ``jnp.bfloat16``) to evaluate the loss and its
        gradient in (params and data cast to it, the loss returned in float32, the chain
        state kept in the params' dtype); ``None`` computes in the params' own dtype.
      restrict: weight-refined LLC λ(w*; V): sample only the weights V selected by glob
        pattern(s) over ``jaxslt.tree_paths(params)`` (``"params/block_0/attn/**"``), a
        predicate ``(path, leaf) -> bool | bool array`` or a boolean mask pytree (per leaf or
        per element, e.g. one head of a packed attention kernel); the others stay frozen at
        w* (no drift, no noise). λ̂ = nβ·(E[L_n(u*, v)] − L_n(w*)). See ``jaxslt.restriction``.
      observables: also compute the functional variance, singular fluctuation, WAIC, WBIC and
        Bayes/Gibbs training losses (``result.observables``; ``jaxslt.observables``) from
        per-example losses on the full data at ``observable_draws`` evenly spaced kept draws
        per chain (one full-data forward pass each, in chunks of ``eval_batch_size``).
      observable_draws: at how many kept draws per chain the observables are evaluated.
      diagnostics: diagnose the run (``result.diagnostics``: R-hat, ESS, MALA acceptance,
        drift, divergences) and warn (``LLCWarning``) for each failed check, naming the cause
        and the remedy.
      progress: show a progress bar; ``None`` shows one on a terminal only.

    Returns:
      An ``LLCResult``: λ̂ (``llc_mean``) and its spread, the traces, the settings used, and
      with ``diagnostics`` its ``Diagnostics``.

    Raises:
      ValueError: a bad argument (named, with the fix), before anything compiles.
      TypeError: an argument of the wrong type, before anything compiles.
      FloatingPointError: every chain diverged.

    Warns:
      LLCWarning: some chains diverged (they are left out), or, with ``diagnostics``, a check
        failed (its cause and remedy in the message).

    Examples:
      A regular model with d = 2 parameters, whose λ is d/2 = 1 (at finite nβ and γ the
      estimate is a little lower):

      >>> import jax, jax.numpy as jnp
      >>> import jaxslt
      >>> loss = lambda w, b: 0.5 * jnp.mean((b["x"] @ w - b["y"]) ** 2)
      >>> x = jax.random.normal(jax.random.key(0), (256, 2))
      >>> w_star = jnp.array([1.0, -1.0])
      >>> data = {"x": x, "y": x @ w_star}
      >>> result = jaxslt.estimate_llc(loss, w_star, data, key=jax.random.key(1),
      ...                              step_size=1e-3, localization=10.0, num_chains=4,
      ...                              num_draws=200, num_burnin=100, diagnostics=False)
      >>> result.llc_per_chain.shape
      (4,)
      >>> 0.3 < float(result.llc_mean) < 1.5
      True
    """
    key = validation.check_key(key)  # old-style keys share the typed key's program
    validation.check_diagnostics(
        diagnostics, num_draws=num_draws, num_chains=num_chains, progress=progress
    )
    config = SamplingConfig(
        num_chains=num_chains, num_draws=num_draws, num_burnin=num_burnin, thinning=thinning,
        batch_size=batch_size, eval_batch_size=eval_batch_size, sampler=sampler,
        sampler_options=sampler_options, acceptance_checks=acceptance_checks,
        observables=observables, observable_draws=observable_draws,
        chain_batch_size=chain_batch_size, mesh=mesh, param_specs=param_specs,
        compute_dtype=compute_dtype,
    )  # fmt: skip
    plan = stages.resolve(
        loss_fn, params, data, key, step_size, config, nbeta=nbeta, localization=localization,
        restrict=restrict, progress=progress,
    )  # fmt: skip
    label = f"LLC ({num_chains} chains)"
    result = stages.run(
        loss_fn, params, data, key, plan, progress=progress, label=label, measure=diagnostics
    )
    if plan.calibration is not None and diagnostics:
        # auto's final run must pass its own step check: else one rerun at its healthy step
        result, retry = stages.retry_auto_step(result, plan)
        if retry is not None:
            plan = retry
            result = stages.run(
                loss_fn, params, data, key, plan, progress=progress, label=label, measure=True
            )
    validation.check_estimate(loss_fn, params, data, result)  # causes other than step_size
    stages.check_divergence(result, plan.step_size, raise_if_all=True)
    return stages.finish(result, plan, diagnostics)
