"""The stages of one estimate, around the compiled core: validate → resolve → place → run →
divergence policy → diagnose.

``resolve`` validates every argument (before anything compiles: ``jaxslt.validation``), resolves
defaults and ``step_size="auto"`` (``jaxslt.calibration``) and returns a ``Plan``: the resolved
``SamplingConfig`` (one static argument) and the traced scalars ε, nβ, γ cast to the chains'
dtype. ``run`` places w* on the mesh and runs the compiled core with a progress bar;
``check_divergence`` applies the divergence policy and ``finish`` the diagnostics.
``estimate_llc`` is these stages in order; ``llc_trajectory`` resolves once and runs every
checkpoint through the same plan.

Divergence policy: a chain whose minibatch loss becomes NaN/inf, or that explodes while staying
finite, is flagged (``diverged``, with the first bad step in ``divergence_step``) and excluded
from ``llc_mean``/``llc_std``; its own ``llc_per_chain`` entry is NaN. Some chains diverged: a
warning; all of them: ``FloatingPointError``, so a NaN is never returned silently.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxslt import validation
from jaxslt.calibration import (
    MAX_DRAWS_FACTOR,
    TARGET_MC_ERROR,
    Calibration,
    calibrate,
    relaxed_burnin,
)
from jaxslt.chains import data_size
from jaxslt.config import DEFAULT_LOCALIZATION, SamplingConfig
from jaxslt.core import (
    LLCResult,
    geometry_at,
    lower_geometry,
    make_schedule,
    program_config,
    restricted_loss,
    run_config,
    sample_llc_jit,
    traced_schedule,
    trimmed,
    with_geometry,
)
from jaxslt.curvature import LocalGeometry, healthy_step
from jaxslt.memory import with_chain_groups
from jaxslt.posterior import default_nbeta
from jaxslt.progress import progress_steps
from jaxslt.restriction import Restriction, make_restriction
from jaxslt.sharding import place_params
from jaxslt.types import PyTree

__all__ = [
    "LLCWarning",
    "Plan",
    "check_divergence",
    "finish",
    "resolve",
    "retry_auto_step",
    "run",
]


# one worker: a program compiles there while the caller's thread traces and compiles another
_COMPILER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxslt-compile")


class LLCWarning(RuntimeWarning):
    """A run finished but its diagnostics say the estimate should not be trusted as is."""


class Plan(NamedTuple):
    """A validated, resolved estimate, ready to run: ``config`` (static, with ``"auto"``s,
    batch size, sampler options and placement resolved), the traced scalars ``step_size``,
    ``nbeta``, ``localization`` (arrays in the chains' dtype), ``restrict`` (a
    ``Restriction`` or None) and ``calibration`` (of ``step_size="auto"``, else None)."""

    config: SamplingConfig
    step_size: jax.Array
    nbeta: jax.Array
    localization: jax.Array
    restrict: Restriction | None = None
    calibration: Calibration | None = None

    @property
    def capacity(self) -> tuple[int, int] | None:
        """(burn-in, draws) of the compiled program to run in when the run fits it: the
        calibration's (``step_size="auto"`` compiles no sampler program of its own), else
        None (a program of the run's own length; the numbers are the same either way)."""
        return None if self.calibration is None else self.calibration.capacity

    @property
    def total_steps(self) -> int:
        """Sampler steps summed over chain groups (what a progress bar counts)."""
        return self.config.total_steps * self.config.chain_groups

    @property
    def traced(self) -> dict[str, Any]:
        """The traced arguments of the compiled core: ε, nβ, γ and the restriction."""
        return dict(step_size=self.step_size, nbeta=self.nbeta, localization=self.localization,
                    restrict=self.restrict)  # fmt: skip

    def sample(
        self, loss_fn: Callable, params: PyTree, data: PyTree, key: jax.Array, progress_every=0
    ) -> LLCResult:
        """The compiled core on this plan (``params`` already placed), the run's lengths and
        progress period traced (``jaxslt.core.Schedule``) in a program of ``capacity`` when
        they fit it (the calibration's: a progress bar or none, the same program)."""
        run = make_schedule(self.config, data_size(data))._replace(progress_every=progress_every)
        # an auto plan compiles the progress callback, as the calibration's program does
        schedule = traced_schedule(run, callback=self.capacity is not None)
        result = sample_llc_jit(
            loss_fn, params, data, key, config=program_config(self.config, self.capacity),
            schedule=schedule, **self.traced,
        )  # fmt: skip
        return trimmed(result, run)

    def measure(
        self, loss_fn: Callable, params: PyTree, data: PyTree, key: jax.Array
    ) -> LocalGeometry:
        """The step check's curvature at w* for this plan's loss, batch and key
        (``jaxslt.core.geometry_at``: its own program, shared by every config)."""
        return geometry_at(loss_fn, params, data, key, **self._geometry_settings)

    def compile_measure(
        self, loss_fn: Callable, params: PyTree, data: PyTree, key: jax.Array
    ) -> Future:
        """``measure``'s program traced here and compiled on a worker thread (XLA releases the
        GIL while it compiles), so that it compiles while the sampling program does; the future
        resolves once it is compiled, and ``measure`` then finds it compiled."""
        lowered = lower_geometry(loss_fn, params, data, key, **self._geometry_settings)
        return _COMPILER.submit(lowered.compile)

    @property
    def _geometry_settings(self) -> dict[str, Any]:
        config = self.config
        return dict(batch_size=config.batch_size, compute_dtype=config.compute_dtype,
                    restrict=self.restrict)  # fmt: skip


def resolve(
    loss_fn: Callable,
    params: PyTree,
    data: PyTree,
    key: jax.Array,
    step_size: Any,
    config: SamplingConfig,
    *,
    nbeta: Any = None,
    localization: Any = None,
    restrict: Any = None,
    progress: bool | None = False,
) -> Plan:
    """Validate everything (before anything compiles), resolve defaults and ``"auto"``; the
    arguments are ``estimate_llc``'s (``config`` holds its static settings; ``key`` is already
    checked and typed by ``validation.check_key``, so that an old-style key compiles nothing
    of its own); ``progress`` is for ``step_size="auto"``'s calibration cells."""
    n = validation.check_data(data)
    validation.check_params(params)
    config = dataclasses.replace(
        config, compute_dtype=validation.check_compute_dtype(config.compute_dtype)
    )
    if restrict is not None:
        restrict = make_restriction(params, restrict)
    validation.check_observables(config.observables, config.observable_draws)
    options = validation.check_sampler(  # "auto" changes neither sampler nor batch size
        config.sampler, config.sampler_options, batch_size=config.batch_size, n=n
    )
    validation.check_optional_settings(nbeta=nbeta, localization=localization)  # before "auto"
    calibration = None
    if isinstance(step_size, str):
        if step_size != "auto":
            raise TypeError(f'step_size must be a number or "auto"; got {step_size!r}')
        calibration, config = _calibrate(loss_fn, params, data, key, config, nbeta=nbeta,
                                         localization=localization, restrict=restrict,
                                         progress=progress)  # fmt: skip
        rec = calibration.recommended
        step_size, localization, nbeta = rec["step_size"], rec["localization"], rec["nbeta"]
    localization = DEFAULT_LOCALIZATION if localization is None else localization
    validation.check_settings(
        n=n, step_size=step_size, num_chains=config.num_chains, num_draws=config.num_draws,
        num_burnin=config.num_burnin, thinning=config.thinning, batch_size=config.batch_size,
        nbeta=nbeta, localization=localization, eval_batch_size=config.eval_batch_size,
    )  # fmt: skip
    validation.check_chain_groups(
        num_chains=config.num_chains, acceptance_checks=config.acceptance_checks,
        chain_batch_size=config.chain_batch_size,
    )  # fmt: skip
    validation.check_mesh(
        config.mesh, config.num_chains,
        None if config.chain_batch_size == "auto" else config.chain_batch_size,
        config.param_specs,
    )  # fmt: skip
    param_specs = validation.check_param_specs(
        config.param_specs, params, config.mesh, restricted=restrict is not None
    )
    config = run_config(
        dataclasses.replace(config, sampler_options=options, param_specs=param_specs), n
    )
    validation.check_loss_fn(loss_fn, params, data, config.batch_size)
    config = with_chain_groups(loss_fn, params, data, config, restrict=restrict)
    scalars = validation.cast_settings(  # in the chains' dtype, checked there
        params, step_size=step_size, localization=localization,
        nbeta=default_nbeta(n) if nbeta is None else nbeta,
    )  # fmt: skip
    return Plan(config, **scalars, restrict=restrict, calibration=calibration)


def _calibrate(loss_fn, params, data, key, config, *, nbeta, localization, restrict, progress):
    """``step_size="auto"``: ``calibrate`` on a key folded from ``key``; the calibration and
    ``config`` with at least the burn-in and draws it recommends. Its cautions are warned."""
    cal_loss, cal_params = (
        (loss_fn, params) if restrict is None else restricted_loss(loss_fn, params, restrict)
    )
    sampler = config.sampler
    calibration = calibrate(
        cal_loss, cal_params, data, key=jax.random.fold_in(key, 1),
        num_chains=config.num_chains, batch_size=config.batch_size,
        sampler=sampler if isinstance(sampler, str) else "sgld",
        sampler_options=config.options if isinstance(sampler, str) else None,
        **({} if localization is None else {"localizations": [localization]}),
        **({} if nbeta is None else {"nbetas": [nbeta]}), progress=progress,
    )  # fmt: skip
    if not calibration.recommended:
        raise RuntimeError(f"step_size='auto' found no usable setting:\n{calibration}")
    rec = calibration.recommended
    config = dataclasses.replace(
        config,
        num_burnin=max(config.num_burnin, rec["num_burnin"]),
        num_draws=max(config.num_draws, rec["num_draws"]),
    )
    for caution in calibration.cautions:
        warnings.warn(f"step_size='auto': {caution}", LLCWarning, stacklevel=4)
    expected = calibration.mc_error * math.sqrt(rec["num_draws"] / config.num_draws)
    if expected > 1.05 * TARGET_MC_ERROR:  # the cap on auto's draws bound
        needed = math.ceil(config.num_draws * (expected / TARGET_MC_ERROR) ** 2)
        warnings.warn(
            f"step_size='auto': the final run's {config.num_draws} draws (at most "
            f"{MAX_DRAWS_FACTOR}× the calibration's) give a Monte-Carlo SE near {expected:.1%} "
            f"of λ̂, not the {TARGET_MC_ERROR:.1%} auto aims for; num_draws={needed} would",
            LLCWarning,
            stacklevel=4,
        )
    return calibration, config


def retry_auto_step(result: LLCResult, plan: Plan) -> tuple[LLCResult, Plan | None]:
    """``step_size="auto"``: when the final run fails its own step check (its chains, longer
    than the calibration's, reached stiffer ground: bias bound > ``MAX_RELATIVE_BIAS``·λ̂ or
    stiffness > ``STIFFNESS_LIMIT``), the plan of one rerun at the step its own geometry calls
    healthy (``curvature.healthy_step``: half both limits), with burn-in ≥ 5/(εγ) and the
    draws scaled by the steps' ratio (the mixing time of the flat directions is ∝ 1/ε); the
    calibration's explanation says so; None when the run passes (or no smaller step helps).
    Returned with ``result``, its diagnostics attached (``finish`` reuses them).
    ``result`` must carry its measured geometry."""
    from jaxslt.diagnostics import STEP_SIZE, diagnose

    report = diagnose(result)
    result = result._replace(diagnostics=report)
    if STEP_SIZE not in report.codes:
        return result, None
    eps, gamma, nbeta = (float(v) for v in (plan.step_size, plan.localization, plan.nbeta))
    safe = healthy_step(result.geometry, nbeta=nbeta, localization=gamma, llc=report.llc)
    if not 0 < safe < eps:
        return result, None
    config = plan.config
    burnin = max(config.num_burnin, relaxed_burnin(safe, gamma))
    config = dataclasses.replace(
        config, num_burnin=burnin, num_draws=math.ceil(config.num_draws * eps / safe)
    )
    found = next(issue.message for issue in report.issues if issue.code == STEP_SIZE)
    calibration = dataclasses.replace(
        plan.calibration,
        explanation=f"{plan.calibration.explanation}\nFinal run at ε = {eps:.3g} failed its own "
        f"step check ({found}); rerun at ε = {safe:.3g} with {burnin} burn-in steps and "
        f"{config.num_draws} draws.",
        recommended=plan.calibration.recommended
        | {"step_size": safe, "num_burnin": burnin, "num_draws": config.num_draws},
    )
    step = jax.numpy.asarray(safe, dtype=plan.step_size.dtype)  # the chains' dtype, as resolved
    return result, plan._replace(config=config, step_size=step, calibration=calibration)


def run(
    loss_fn: Callable,
    params: PyTree,
    data: PyTree,
    key: jax.Array,
    plan: Plan,
    *,
    progress: bool | None,
    label: str,
    measure: bool = True,
) -> LLCResult:
    """Place w* on the plan's mesh and run the compiled core, with a progress bar when asked;
    with ``measure`` (the run will be diagnosed) complete the step check's geometry
    (``Plan.measure``). Blocks until the result is ready."""
    params = place_params(params, plan.config.mesh, plan.config.param_specs)
    measure = measure and plan.config.step_check  # the run records its part of the geometry
    compiled = plan.compile_measure(loss_fn, params, data, key) if measure else None
    with progress_steps(progress, plan.total_steps, label) as every:
        result = plan.sample(loss_fn, params, data, key, every)
    if measure:
        compiled.result()
        result = with_geometry(result, plan.measure(loss_fn, params, data, key))
    return jax.block_until_ready(result)


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


def finish(result: LLCResult, plan: Plan, diagnostics: bool) -> LLCResult:
    """Attach the diagnostics (an ``LLCWarning`` for each failed check; those already attached
    to ``result`` are reused) and the calibration."""
    if diagnostics:
        from jaxslt.diagnostics import DIVERGED, diagnose

        report = diagnose(result) if result.diagnostics is None else result.diagnostics
        for issue in report.issues:
            if issue.code != DIVERGED:  # already said by check_divergence
                warnings.warn(issue.message, LLCWarning, stacklevel=3)
        result = result._replace(diagnostics=report)
    return result._replace(calibration=plan.calibration)
