"""Choosing ε, γ (and nβ) by a documented procedure instead of by eye.

``calibrate`` runs short chains on a grid of step_size × localization (× nbeta) — every cell in
one compiled program, ``estimate_llc``'s own (cells one at a time, so the final run compiles
nothing and no compile depends on the number of cells; or ``cell_batch_size``
cells vmapped at once), all cells sharing the key (common random numbers, so differences
between cells are not noise; a cell is exactly the ``estimate_llc`` run of its settings on that
key) — and diagnoses each cell. The derived grid does not run the cells that cannot qualify:
those whose burn-in is short of ``MIN_RELAXATIONS`` relaxation times or whose stiffness at w*
exceeds ``MAX_MARGIN`` (the rule would refuse them unseen), and, running the steps of each γ in
increasing order, those above a cell whose bias bound scaled ∝ ε predicts more than
``SKIP_BIAS_FACTOR`` × the healthy limit (or whose chains diverged). A raised burn-in serves the
smallest steps: each cell runs its own ``MIN_RELAXATIONS`` relaxation times (at least
``num_burnin``). When no cell can qualify (a stiff model whose healthy steps need more burn-in
than ``MAX_CALIBRATION_BURNIN`` at every γ), none runs: the explanation names the explicit grid
and burn-in that would let one be judged, and ``step_size="auto"`` raises it after the pilot.

The default step sizes come from pilot chains: the curvature at w* alone misleads at singular
points (a normal crossing or a deep linear network at 0 has h_max ≈ 0 there), so a pilot at
γ_min, as long as a cell, measures tr ∇²L where the chains go and its λ̂, and the grid is
``PILOT_GRID`` (0.1× to 3×) times the pilot's healthy step (``curvature.healthy_step``: bias
bound ≤ 5% of λ̂, stiffness ≤ ½).

Recommendation rule (``Calibration.recommended``, explained in ``Calibration.explanation``):

1. a cell is *healthy* when no chain diverged, the MALA acceptance of its SGLD steps is ≥ 0.8,
   its diagnostics raise no issue about R-hat, drift (still rising/falling), a non-minimum
   or the float resolution (the issue codes in ``_DISQUALIFYING``; ESS and the Monte-Carlo
   error are low by design in short runs and enter through the standard errors),
   its stiffness at w* is ε·(nβ·h_max + γ) ≤ ``MAX_MARGIN`` = ½, and its bias
   bound (``jaxslt.curvature``: discretisation plus minibatch noise on the quadratic model of
   the loss where the chains went) is ≤ 5% of λ̂ — half the limit at which the final run's own
   diagnostics warn, so the recommended run passes them — and its burn-in covers
   ``MIN_RELAXATIONS`` = 3 relaxation times 1/(εγ) of the flat directions (otherwise its chains
   had not spread yet, and neither their λ̂ nor their curvature predicts the long run; small γ
   then needs a longer calibration, ``num_burnin``; with the default step grid, calibration
   raises its burn-in, up to ``MAX_CALIBRATION_BURNIN``, so that the largest γ can qualify at
   the pilot's step scale);
2. for each γ, the healthy estimates are extrapolated linearly to ε → 0 (weighted least squares
   in ε with within-chain standard errors nβ·sd/√ESS, ESS for the mean, ``Diagnostics.llc_se``,
   defined for one chain too; discretisation bias is O(ε)), giving λ̂₀ ± se₀;
3. γ: the smallest localization with a healthy cell (a larger γ pulls the estimate down by
   confining degenerate directions); when the next healthy γ gives a clearly different λ̂, or
   no other γ is healthy, a caution says that λ̂ may still move with γ (``estimate_llc`` warns
   it);
4. ε: at that γ, the largest healthy step whose estimate agrees with λ̂₀ within
   max(2·√(se² + se₀²), 5%·|λ̂₀|) ("flat in ε"): the fastest-mixing step without visible bias
   (with a single healthy step, that step, and a caution);
5. the final run's error budget (``TARGET_BIAS``, ``TARGET_MC_ERROR``: 2% and 2.5% of λ̂, so
   that its error stays within 10% at 3 SE; on large models, whose Monte-Carlo error is
   negligible, the bias bound is the whole error budget): ε is the chosen cell's, lowered to
   where its bias bound, ∝ ε to first order, is 2% of λ̂; burn-in: at least 5/(ε·γ) steps (flat
   directions relax in ~1/(εγ) steps; docs/method.md §4); draws: at least twice the
   calibration's burn-in, and enough that the final run's Monte-Carlo SE (scaled from the chosen
   cell's as 1/√draws) is ≤ 2.5% of λ̂ (at most ``MAX_DRAWS_FACTOR`` × the calibration's draws),
   times the ratio of the chosen cell's step to the final one (mixing ∝ 1/ε); burn-in at most
   ``MAX_BURNIN_FACTOR`` × the calibration's.

The pilot, the cells and a final run that fits ``Calibration.capacity`` run in one compiled
program: its lengths are traced (``jaxslt.core.Schedule``), and a run's numbers do not depend on
the program's size, so auto compiles one sampler program whatever lengths it settles on.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxslt import validation
from jaxslt.config import SamplingConfig
from jaxslt.core import (
    LLCResult,
    Schedule,
    geometry_at,
    make_schedule,
    program_config,
    run_config,
    sample_llc,
    sample_llc_jit,
    traced_schedule,
    trimmed,
    with_geometry,
)
from jaxslt.curvature import (
    HEALTHY_SHARE,
    MAX_RELATIVE_BIAS,
    STIFFNESS_LIMIT,
    healthy_step,
)
from jaxslt.diagnostics import (
    DIVERGED,
    FLOAT_RESOLUTION,
    MALA_LOW,
    NOT_MINIMUM,
    RHAT,
    TREND_FALLING,
    TREND_RISING,
)
from jaxslt.memory import with_chain_groups
from jaxslt.posterior import default_nbeta
from jaxslt.progress import progress_steps
from jaxslt.types import PyTree

__all__ = [
    "MAX_BURNIN_FACTOR",
    "MAX_CALIBRATION_BURNIN",
    "MAX_DRAWS_FACTOR",
    "MAX_MARGIN",
    "MAX_STEP_CUT",
    "MIN_RELAXATIONS",
    "PILOT_GRID",
    "SKIP_BIAS_FACTOR",
    "TARGET_BIAS",
    "TARGET_MC_ERROR",
    "TRACE_BUDGET",
    "Calibration",
    "Grid",
    "calibrate",
    "extrapolate",
    "program_capacity",
    "recommend",
    "run_grid",
]

MAX_MARGIN = HEALTHY_SHARE * STIFFNESS_LIMIT  # ε·(nβ·h_max + γ) at w*; see the module docstring
HEALTHY_BIAS = HEALTHY_SHARE * MAX_RELATIVE_BIAS  # a healthy cell's bias bound, share of |λ̂|
BURNIN_RELAXATIONS = 5.0  # a recommended burn-in covers this many relaxation times 1/(εγ)
MIN_RELAXATIONS = 3.0  # burn-in·ε·γ of a healthy cell: flat directions within e⁻³ of equilibrium
MAX_CALIBRATION_BURNIN = 20_000  # the most calibration raises its burn-in to, to reach that
# a derived grid's step is not run when the bias bound of the step below it, scaled ∝ ε,
# exceeds this many times the healthy limit (the bound grows faster than ε: measured 2.1–2.4×
# per doubling of ε on the README demo's deep linear network)
SKIP_BIAS_FACTOR = 1.2
GAMMA_PROBE = 3.0  # with one healthy γ, λ̂ is also measured at this multiple of it (flat in γ?)
# the final run's error budget, relative to |λ̂|: its discretisation bias bound and its
# Monte-Carlo SE, so that |error| ≤ 10% at 3 SE; the bias is the whole error of a large model
# (1e6-parameter DLN: SE 0.01%, bias +2.4% at a 2.5% bound), so its bound is held to 2%
TARGET_BIAS = 0.02
TARGET_MC_ERROR = 0.025
# the recommended draws are at most this many times the calibration's. It binds only where λ̂
# is small against its SE (normal crossings (1,2), (2,2): seconds a run); at 20 the (2,2)
# runs missed 10% twice in 6 keys (benchmarks/results/auto-cpu.md)
MAX_DRAWS_FACTOR = 50
MAX_BURNIN_FACTOR = 100  # the recommended burn-in is at most this many times the calibration's
# the final run's step is at most this many times smaller than its cell's: a healthy cell's
# bias bound is at most HEALTHY_SHARE·MAX_RELATIVE_BIAS of λ̂, the final run's TARGET_BIAS
MAX_STEP_CUT = HEALTHY_BIAS / TARGET_BIAS
TRACE_BUDGET = 2**28  # bytes of loss traces a calibration's program may hold (float32)
# diagnostics issues (their codes) that disqualify a cell. Not ESS nor the Monte-Carlo error:
# short calibration runs are noisy by design (with one chain, every cell of a regular model
# was refused for a 12% MC error); their error enters the rule through the SEs, and the draws
# recommended are sized for the final run (``recommend``). Not the step check either: that is
# the margin and bias rule of ``recommend``.
_DISQUALIFYING = frozenset(
    {DIVERGED, NOT_MINIMUM, MALA_LOW, TREND_RISING, TREND_FALLING, RHAT, FLOAT_RESOLUTION}
)


class Grid(NamedTuple):
    """A calibration grid, one entry per cell: its ``step_size``, ``localization`` and
    ``nbeta``; ``burnin``, the burn-in it ran (None: the calibration's, every cell); ``ran``
    (None: every cell ran); ``skipped``: cell index → why it did not run, when not for a
    burn-in short of ``MIN_RELAXATIONS`` relaxation times 1/(εγ)."""

    step_size: np.ndarray
    localization: np.ndarray
    nbeta: np.ndarray
    burnin: np.ndarray | None = None
    ran: np.ndarray | None = None
    skipped: dict[int, str] | None = None


@dataclass(eq=False)
class Calibration:
    """Result of ``calibrate``: the grid's table and the settings the module's rule chose.

    Attributes:
      table: a pandas DataFrame, one row per cell: its settings (``step_size``,
        ``localization``, ``nbeta``, ``num_burnin``: with the default step grid each cell
        runs ``MIN_RELAXATIONS`` relaxation times 1/(εγ), at least ``calibrate``'s
        ``num_burnin``), estimate (``llc_mean``, ``llc_std``, ``llc_se``), checks
        (``mala_accept``, ``rhat``, ``ess``, ``trend``, ``diverged``, ``margin``,
        ``bias_bound``, ``issues``), verdict ``ok``, ``ran`` (False: refused unseen, as
        its burn-in is too short to judge it, its stiffness at w* too high, or the cell at the
        next smaller step predicts its failure; ``issues`` says which), ``selected`` and
        ``probe`` (True for the one cell run beyond the grid: with a single healthy γ,
        ``GAMMA_PROBE``·γ at the chosen step, to see whether λ̂ still moves with γ).
      recommended: keyword arguments for ``estimate_llc`` (``step_size``, ``localization``,
        ``nbeta``, ``num_burnin``, ``num_draws``); empty when no cell is healthy.
      explanation: the reasons, one line per step of the rule.
      extrapolation: γ → (λ̂₀, se₀), the ε → 0 estimate per localization.
      h_max: the largest Hessian eigenvalue of L at w* (power iteration).
      results: the grid's ``LLCResult``, batched over cells.
      cautions: what the rule could not check (flatness in ε or γ), also in ``explanation``.
      mc_error: the Monte-Carlo SE the recommended run is expected to reach, relative to
        |λ̂| (``TARGET_MC_ERROR`` unless the cap on its draws binds; NaN without one).
      capacity: (burn-in, draws) that the cells' compiled program holds
        (``program_capacity``): the final run of ``step_size="auto"`` runs in it when it fits,
        so it compiles no sampler program of its own (``jaxslt.core.Schedule``).
    """

    table: Any
    recommended: dict[str, Any]
    explanation: str
    extrapolation: dict[float, tuple[float, float]] = field(default_factory=dict)
    h_max: float = math.nan
    results: LLCResult | None = None
    cautions: tuple[str, ...] = ()
    mc_error: float = math.nan
    capacity: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"Calibration(recommended={self.recommended})\n{self.explanation}"


jax.tree_util.register_static(Calibration)


def extrapolate(eps: np.ndarray, est: np.ndarray, se: np.ndarray) -> tuple[float, float]:
    """Weighted least squares est ≈ λ₀ + c·ε; returns (λ₀, se(λ₀)). Needs ≥ 2 distinct ε."""
    w = 1.0 / np.maximum(se, 1e-12) ** 2
    design = np.stack([np.ones_like(eps), eps], axis=1)
    cov = np.linalg.inv(design.T @ (w[:, None] * design))
    coef = cov @ design.T @ (w * est)
    return float(coef[0]), float(np.sqrt(cov[0, 0]))


def _paired_se(results, i: int, j: int) -> float:
    """Standard error of λ̂_i − λ̂_j for two cells run on the same key: their chains share
    every noise draw, so the difference is measured chain by chain (d = nβ_i·L_i − nβ_j·L_j
    along each trace, SE = sd(d)/√ESS(d), ESS from ArviZ), far more precisely than the two
    SEs combined as if independent."""
    import arviz as az

    traces, nbetas, diverged = (np.asarray(results.loss_trace, np.float64),
                                np.asarray(results.nbeta, np.float64),
                                np.asarray(results.diverged))  # fmt: skip
    healthy = ~(diverged[i] | diverged[j])
    d = nbetas[i] * traces[i][healthy] - nbetas[j] * traces[j][healthy]
    if d.size < 4 or not np.std(d) > 0:
        return 0.0
    return float(np.std(d) / math.sqrt(max(float(az.ess(d, method="mean")), 1.0)))


def _check_flat_in_gamma(
    table,
    results,
    estimates: dict,
    gammas: list,
    cautions: list[str],
    num_burnin: int,
    notes: list[str],
) -> None:
    """Is λ̂ flat in γ at the chosen (smallest healthy) γ? A larger γ confines the degenerate
    directions more and lowers λ̂ (docs/method.md §6); if the next healthy γ gives a clearly
    different value, the localizer still shapes the estimate at the chosen one too. When they
    agree, and λ̂ moves with γ to first order (λ̂(γ) ≈ λ̂(0) − cγ), the localizer's pull at γ₀
    is γ₀/(γ₁ − γ₀) times their difference: half of it for the probe γ₁ = 3γ₀. When they agree
    but smaller γ of the grid could not be judged, that is no evidence either: λ̂ plateaus in
    γ once the localizer confines the degenerate directions. The cautions name the burn-in that
    would let the next smaller γ be judged at the chosen step."""
    g0 = gammas[0]
    smaller = sorted(g for g in set(table.localization) if 0 < g < g0)
    how = "try smaller localizations with a longer burn-in"
    if smaller:
        g, step = smaller[-1], table.step_size[estimates[g0][0]]
        needed = math.ceil(MIN_RELAXATIONS / (step * g))
        if needed > num_burnin:
            how = (
                f"γ = {g:g} needs calibrate(..., num_burnin ≥ {needed}) to be judged: "
                f"{MIN_RELAXATIONS:g} relaxation times 1/(εγ) at the step chosen here, more "
                "if its healthy steps are smaller"
            )
    if len(gammas) < 2:
        cautions.append(
            f"only γ = {g0:g} had healthy cells, so whether λ̂ still moves with γ is "
            f"unknown; the localizer may pull λ̂ down ({how})"
        )
        return
    g1 = gammas[1]
    i0, i1 = estimates[g0][0], estimates[g1][0]
    a, b = table.llc_mean[i0], table.llc_mean[i1]
    tol = max(2 * _paired_se(results, i0, i1), 0.05 * abs(a))
    change = (b - a) / abs(a)
    notes.append(
        f"γ = {g1:g}: λ̂ = {b:.4g} against {a:.4g} at γ = {g0:g} ({change:+.1%}; "
        f"{'within' if abs(a - b) <= tol else 'beyond'} the tolerance {tol:.2g} of flat in γ)."
    )
    if abs(a - b) <= tol and smaller:
        # λ̂ also plateaus in γ once the localizer confines every degenerate direction (a
        # deep linear network: −4% from γ = 100 to 300, where γ = 100 sits 34% below γ → 0)
        cautions.append(
            f"λ̂ is flat from γ = {g0:g} to {g1:g} ({change:+.1%}), but γ = "
            f"{', '.join(f'{g:g}' for g in smaller)} could not be judged, and a localizer "
            "that already confines the degenerate directions is flat in γ too: how far "
            f"γ = {g0:g} pulls λ̂ below its unlocalized value is unknown ({how})"
        )
    if abs(a - b) > tol:
        pull = -change * g0 / (g1 - g0)  # λ̂(γ) ≈ λ̂(0) − cγ between g0 and g1
        if pull > 0:
            # a convex decreasing λ̂(γ) lies above its secant's extension: the pull is larger
            size = (
                f"if λ̂ is convex in γ, as for a quadratic loss, the localizer puts λ̂ at "
                f"γ = {g0:g} at least {pull:.0%} below its unlocalized value (the secant's "
                "extrapolation to γ = 0)"
            )
        else:
            size = "a localizer alone lowers λ̂ as γ grows, so the chains may not be equilibrated"
        cautions.append(
            f"λ̂ still moves with the localization: {a:.4g} at γ = {g0:g} against {b:.4g} at "
            f"γ = {g1:g} ({change:+.0%}); {size} ({how})"
        )


# the default grid, in units of the pilot's healthy step (bias bound ≤ 5% of λ̂, stiffness ≤ ½)
PILOT_GRID = np.geomspace(0.1, 3.0, 6)


def _pilot_step(pilot, diagnose, h_max, nbeta, gamma, max_tries=6) -> tuple[float, list[str]]:
    """The step scale of the default grid: ``curvature.healthy_step`` measured where short
    pilot chains go (the curvature at a singular w* can be ~0 while the chains' is not).
    Starts from stiffness 0.1 at w*; a pilot with a diverged chain retries 10× smaller, and
    one whose healthy step is far below its own retries at that step."""
    eps = 0.1 / (nbeta * h_max + gamma) if nbeta * h_max + gamma > 0 else 1e-3
    log = []
    for _ in range(max_tries):
        cell = jax.tree.map(np.asarray, pilot(eps, gamma, nbeta))
        if np.asarray(cell.diverged).any():
            log.append(f"pilot at ε = {eps:.3g} diverged")
            eps /= 10
            continue
        llc = diagnose(cell).llc
        safe = healthy_step(cell.geometry, nbeta=nbeta, localization=gamma, llc=llc)
        log.append(f"pilot at ε = {eps:.3g}: λ̂ = {llc:.4g}, healthy step {safe:.3g}")
        if safe >= eps / 3 or not math.isfinite(safe):
            return (safe if math.isfinite(safe) else eps), log
        eps = safe
    return eps, log


def _cells_grid(step_sizes, localizations, nbetas):
    grid = np.array(np.meshgrid(step_sizes, localizations, nbetas, indexing="ij")).reshape(3, -1)
    return grid[0], grid[1], grid[2]


def calibrate(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    data: PyTree,
    *,
    key: jax.Array,
    step_sizes: Sequence[float] | None = None,
    localizations: Sequence[float] = (1.0, 10.0, 100.0),
    nbetas: Sequence[float] | None = None,
    num_chains: int = 4,
    num_draws: int = 2000,
    num_burnin: int = 1000,
    batch_size: int | None = None,
    sampler: str = "sgld",
    sampler_options: dict[str, Any] | None = None,
    cell_batch_size: int | None = None,
    progress: bool | None = None,
) -> Calibration:
    """Run short chains on a grid and recommend ``step_size``, ``localization`` (and ``nbeta``
    when several are given) for ``estimate_llc`` by the rule in this module's docstring.

    Every cell of the step_size × localization × nbeta grid runs in one compiled program, on
    the same key (common random numbers).

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` mean loss, as for ``estimate_llc``.
      params: w*, any pytree of float arrays.
      data: a pytree of arrays sharing a leading axis of length n.
      key: a PRNG key; it fully determines the result.
      step_sizes: the ε of the grid; ``None`` derives them from pilot chains at the smallest
        localization: ``PILOT_GRID`` (0.1× to 3×) times the pilot's healthy step (and raises
        the burn-in, up to ``MAX_CALIBRATION_BURNIN``, so that the largest γ can qualify),
        running only the cells that can qualify, one at a time in increasing ε per γ.
      localizations: the γ of the grid (≥ 0).
      nbetas: the nβ of the grid; ``None`` uses n / log n only.
      num_chains: chains per cell.
      num_draws: kept draws per chain.
      num_burnin: burn-in steps per chain (with the derived grid, the least: each cell runs
        ``MIN_RELAXATIONS`` relaxation times 1/(εγ), up to the raised burn-in).
      batch_size: minibatch size; ``None`` means min(n, 256), or n for a full-batch sampler
        (``SamplerCapabilities.full_batch``, e.g. ``"mala"``), as in ``estimate_llc``.
      sampler: a sampler name, as for ``estimate_llc``.
      sampler_options: the sampler's keyword arguments, as for ``estimate_llc`` (an option
        that adapts during burn-in, rmsprop_sgld's ``adapt_steps``, defaults to each run's
        burn-in there too).
      cell_batch_size: how many cells run at once, vmapped (faster for small models on an
        accelerator, at that many times the memory; a group runs its longest burn-in, and
        no step is left unrun for the bias its neighbour predicts); ``None``: one at a time,
        in ``estimate_llc``'s own program.
      progress: a progress bar for each cell run one at a time (the pilot's and the probe's
        too; in the compiled program's callback, which it compiles anyway); ``None`` shows one
        on a terminal for cells of 2000 steps or more.

    Returns:
      A ``Calibration``: ``recommended`` (pass it as ``estimate_llc(..., **recommended)``;
      empty when no cell is healthy), ``table``, ``explanation``, ``extrapolation``.

    Raises:
      ValueError: a bad argument or grid, before anything compiles.
      TypeError: an argument of the wrong type.

    Examples:
      >>> import jax
      >>> import jaxslt
      >>> from jaxslt import problems
      >>> p = problems.regular_linear_gaussian(2, key=jax.random.key(0), num_examples=256)
      >>> cal = jaxslt.calibrate(p.loss_fn, p.params, p.data, key=jax.random.key(1),
      ...                        step_sizes=[3e-4, 1e-3], localizations=[10.0],
      ...                        num_chains=2, num_draws=200, num_burnin=100)
      >>> cal.table[["step_size", "localization"]].values.tolist()  # one row per cell
      [[0.0003, 10.0], [0.001, 10.0]]
      >>> isinstance(cal.recommended, dict)  # empty when no cell qualifies
      True
    """
    from jaxslt.diagnostics import diagnose

    n = validation.check_data(data)
    validation.check_params(params)
    key = validation.check_key(key)  # old-style keys share the typed key's program
    options = validation.check_sampler(  # before any compile
        sampler, sampler_options, batch_size=batch_size, n=n
    )
    if cell_batch_size is not None:
        validation.check_positive_int("cell_batch_size", cell_batch_size, "cells run at once")
    # the batch size estimate_llc runs (n for a full-batch sampler, e.g. MALA: exact density)
    batch_size = run_config(SamplingConfig(sampler=sampler, batch_size=batch_size), n).batch_size

    capacity = program_capacity(num_chains, num_burnin, num_draws)

    @functools.cache
    def sampling(burnin: int, draws: int) -> tuple[SamplingConfig, Schedule]:
        """The program estimate_llc runs for a run that fits ``capacity``, and this run's
        schedule in it."""
        config = SamplingConfig(
            num_chains=num_chains, num_draws=draws, num_burnin=burnin, batch_size=batch_size,
            sampler=sampler, sampler_options=options,
        )  # fmt: skip
        config = run_config(config, n)  # a burn-in-adapting sampler's option: this burn-in
        program = program_config(with_chain_groups(loss_fn, params, data, config), capacity)
        return program, make_schedule(config, n)

    dtype = validation.setting_dtype(params)

    def run_cell(sampled, cell_key, eps, gamma, nbeta, label="cell") -> LLCResult:
        """One cell, in estimate_llc's own program (the same key for every cell), with a
        progress bar when asked."""
        program, run = sampled
        total = (run.num_burnin + run.num_draws) * program.chain_groups
        desc = f"calibration {label}: ε = {eps:.3g}, γ = {gamma:g}"
        with progress_steps(progress, total, desc) as every:
            result = jax.block_until_ready(sample_llc_jit(
                loss_fn, params, data, cell_key, config=program, restrict=None,
                schedule=traced_schedule(run._replace(progress_every=every)),
                **validation.cast_settings(params, step_size=eps, nbeta=nbeta, localization=gamma),
            ))  # fmt: skip
        return trimmed(result, run)

    def run_vmapped(eps, gam, nbs, burnins, group) -> LLCResult:
        """Cells ``group`` at once, vmapped (padded to whole groups, so no compile depends on
        the number of cells), each group at its burn-in; burn-in traces NaN past a cell's."""

        def vmapped(i):
            program, run = sampling(int(burnins[i[0]]), num_draws)
            return _padded_burnin(trimmed(run_grid(
                loss_fn, params, data, key, jnp.asarray(eps[i], dtype),
                jnp.asarray(gam[i], dtype), jnp.asarray(nbs[i], dtype), config=program,
                schedule=traced_schedule(run),
            ), run), width=int(burnins.max()))  # fmt: skip

        return with_geometry(_in_groups(vmapped, len(eps), group), at)

    nbetas = (
        [default_nbeta(n)]
        if nbetas is None
        else validation.check_grid("nbetas", nbetas, allow_zero=False)
    )
    localizations = validation.check_grid("localizations", localizations, allow_zero=True)
    if step_sizes is not None:
        step_sizes = validation.check_grid("step_sizes", step_sizes, allow_zero=False)
    for gamma in localizations:  # every step size is checked in the chains' dtype below
        validation.check_settings(
            n=n, step_size=1.0 if step_sizes is None else min(step_sizes), num_chains=num_chains,
            num_draws=num_draws, num_burnin=num_burnin, thinning=1, batch_size=batch_size,
            nbeta=nbetas[0], localization=gamma, eval_batch_size=None,
        )  # fmt: skip
    validation.check_loss_fn(loss_fn, params, data, batch_size)
    # the curvature at w* is the same for every cell and for the pilot (same w*, batch and
    # key): measured once, by the program estimate_llc's own step check uses (h_max included)
    at = geometry_at(loss_fn, params, data, key, batch_size=batch_size)
    h_max = float(at.h_max)
    validation.check_curvature(h_max)
    pilots: list[str] = []
    derived = step_sizes is None
    floor = num_burnin  # the least burn-in of a derived grid's cell
    if derived:
        # the pilot is a cell of the grid's own length (one program serves both, and the
        # final run, whatever their lengths); on small models a compile costs more than the
        # longer pilot
        pilot_key, piloted = jax.random.fold_in(key, 3), sampling(num_burnin, num_draws)

        def pilot(eps, gamma, nbeta):
            cell = run_cell(piloted, pilot_key, eps, gamma, nbeta, "pilot")
            validation.check_init_loss(cell.init_loss)  # the loss's fault: before any retry
            return with_geometry(cell, at)

        scale, pilots = _pilot_step(pilot, diagnose, h_max, max(nbetas), min(localizations))
        step_sizes = list(scale * PILOT_GRID)
        # burn-in long enough that at the largest γ the steps from 0.4× the pilot's scale cover
        # MIN_RELAXATIONS relaxation times, so at least that γ can be judged (capped)
        needed = math.ceil(
            MIN_RELAXATIONS / (PILOT_GRID[2] * scale * max(max(localizations), 1e-12))
        )
        if needed > num_burnin and MAX_CALIBRATION_BURNIN > num_burnin:  # never lowered
            longer = min(needed, MAX_CALIBRATION_BURNIN)
            pilots.append(
                f"burn-in raised from {num_burnin} to up to {longer} to equilibrate (each cell "
                f"{MIN_RELAXATIONS:g} relaxation times 1/(εγ), at least {num_burnin})"
            )
            floor, num_burnin = num_burnin, longer
    step_sizes = [float(e) for e in step_sizes]
    if not step_sizes or min(step_sizes) <= 0:
        raise ValueError(f"step_sizes must be positive; got {step_sizes}")

    eps, gam, nbs = _cells_grid(step_sizes, localizations, nbetas)
    for e, g, b in zip(eps, gam, nbs, strict=True):  # each cell representable in the chains' dtype
        validation.cast_settings(params, step_size=e, nbeta=b, localization=g)
    # the derived grid skips the cells the rule would refuse before seeing them (burn-in short
    # of MIN_RELAXATIONS relaxation times): on the README demo's DLN 11 of its 18 cells; an
    # explicit grid runs every cell (its λ̂ may interest the user)
    # (a derived grid runs no cell that cannot qualify, not even when none can: on a stiff
    # model such a cell costs as much as the final run, and the table says what would qualify)
    ran = eps * gam * num_burnin >= MIN_RELAXATIONS if derived else np.ones(len(eps), bool)
    burnins = np.full(len(eps), num_burnin)
    skipped: dict[int, str] = {}
    if derived:
        # a raised burn-in serves the smallest steps: each cell runs only its own
        # MIN_RELAXATIONS relaxation times (at least the floor), in the one program whose
        # lengths are traced
        burnins = np.array(
            [_cell_burnin(e, g, floor, num_burnin) for e, g in zip(eps, gam, strict=True)]
        )
        # a cell stiffer than MAX_MARGIN at w* cannot qualify (the margin is known unrun)
        stiff = ran & (_stiffness(eps, gam, nbs, h_max) > MAX_MARGIN)
        for i in np.flatnonzero(stiff):
            skipped[int(i)] = f"its stiffness ε·(nβ·h_max + γ) at w* exceeds {MAX_MARGIN:g}"
        ran &= ~stiff
        # cells vmapped together share one schedule: the longest in their group
        burnins[ran] = _group_max(burnins[ran], cell_batch_size or 1)
    group = cell_batch_size or 1
    if not ran.any():  # a derived grid none of whose cells can qualify: the table says why
        results = None
    elif group == 1:
        # one at a time, the steps of each (nβ, γ) in increasing order: in the derived grid a
        # step is not run when the cell below it shows it cannot qualify
        # (``_larger_steps_fail``: its bias bound scaled ∝ ε, or divergence)
        cells: dict[int, LLCResult] = {}
        stopped: dict[tuple[float, float], str] = {}
        order = sorted(np.flatnonzero(ran), key=lambda i: (nbs[i], gam[i], eps[i]))
        for k, (i, after) in enumerate(zip(order, [*order[1:], None], strict=True)):
            if (nbs[i], gam[i]) in stopped:
                skipped[int(i)] = stopped[nbs[i], gam[i]]
                continue
            sampled, label = sampling(int(burnins[i]), num_draws), f"cell {k + 1}/{len(order)}"
            cell = run_cell(sampled, key, eps[i], gam[i], nbs[i], label)
            cells[int(i)] = cell = with_geometry(cell, at)
            if derived and after is not None and (nbs[after], gam[after]) == (nbs[i], gam[i]):
                row = _cell_row(jax.tree.map(np.asarray, cell), diagnose, eps[i], gam[i],
                                nbs[i], h_max, int(burnins[i]))  # fmt: skip
                reason = _larger_steps_fail(row, eps[after])
                if reason:
                    stopped[nbs[i], gam[i]] = reason
        ran[list(skipped)] = False
        width = int(burnins[ran].max())
        results = jax.tree.map(
            lambda *x: jnp.stack(x),
            *(_padded_burnin(cells[i], width=width) for i in np.flatnonzero(ran)),
        )
    else:
        results = run_vmapped(eps[ran], gam[ran], nbs[ran], burnins[ran], group)
    if results is not None:
        validation.check_init_loss(results.init_loss[0])  # the loss's fault, not the grid's

    def probe(e, g, b):  # one more cell, in the grid's program; burn-in ≤ the chosen cell's
        burnin = _cell_burnin(e, g, floor, num_burnin) if derived else num_burnin
        cell = run_cell(sampling(burnin, num_draws), key, e, g, b, "probe")
        width = results.burnin_loss_trace.shape[-1]
        return with_geometry(_padded_burnin(cell, width=width), at), burnin

    if results is not None:
        results = _scatter_cells(results, ran)
    calibration = recommend(
        results, Grid(eps, gam, nbs, burnins, ran, skipped), diagnose, h_max, num_burnin,
        num_draws, probe=probe,
    )  # fmt: skip
    if pilots:
        calibration.explanation = "\n".join(
            ["Default step grid: " + "; ".join(pilots) + ".", calibration.explanation]
        )
    calibration.capacity = capacity
    return calibration


def program_capacity(num_chains: int, num_burnin: int, num_draws: int) -> tuple[int, int]:
    """(burn-in, draws) of the one program calibration compiles (estimate_llc's own, its
    lengths traced: ``jaxslt.core.Schedule``), so that the pilot, every cell, a raised burn-in
    and the final run it recommends all run in it: the longest final run the rule can
    recommend (burn-in ``MAX_BURNIN_FACTOR``× the calibration's, at least
    ``MAX_CALIBRATION_BURNIN``; draws ``MAX_DRAWS_FACTOR``·``MAX_STEP_CUT``× its draws and
    twice the largest calibration burn-in), scaled down to hold at most ``TRACE_BUDGET`` bytes
    of traces (a final run that does not fit compiles a program of its own)."""
    burnin = max(MAX_CALIBRATION_BURNIN, MAX_BURNIN_FACTOR * num_burnin)
    draws = max(
        math.ceil(MAX_DRAWS_FACTOR * MAX_STEP_CUT * num_draws),
        2 * max(MAX_CALIBRATION_BURNIN, num_burnin),
    )
    scale = min(1.0, TRACE_BUDGET / (4 * num_chains * (burnin + draws)))
    return max(num_burnin, int(burnin * scale)), max(num_draws, int(draws * scale))


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("config",))
def run_grid(loss_fn, params, data, key, eps, gam, nbs, *, config, schedule=None):
    """``sample_llc`` with ``config`` (a ``SamplingConfig``) and ``schedule`` (a
    ``jaxslt.core.Schedule``, or None) for every cell (ε, γ, nβ) given, vmapped in one compiled
    program, all on the same ``key`` (common random numbers); with the chains' part of the step
    check's ``LocalGeometry`` per cell (``calibrate`` joins the curvature at w*, the same for
    every cell, with ``jaxslt.core.with_geometry``)."""

    def cell(e, g, b):
        return sample_llc(
            loss_fn, params, data, key, step_size=e, nbeta=b, localization=g, config=config,
            schedule=schedule,
        )  # fmt: skip

    return jax.vmap(cell)(eps, gam, nbs)


def _in_groups(run: Callable, count: int, size: int) -> LLCResult:
    """``run(cells)`` for cells ``0 … count-1`` in groups of exactly ``size`` (the last padded
    with copies of its last cell, whose results are dropped), concatenated in order."""
    cells = np.arange(count)
    padded = np.concatenate([cells, np.repeat(cells[-1:], -count % size)])
    parts = [run(padded[i : i + size]) for i in range(0, len(padded), size)]
    joined = parts[0] if len(parts) == 1 else jax.tree.map(lambda *x: jnp.concatenate(x), *parts)
    return jax.tree.map(lambda x: x[:count], joined)


def _stiffness(step_size, localization, nbeta, h_max):
    """A cell's stiffness at w*, ε·(nβ·h_max + γ): healthy at most ``MAX_MARGIN``."""
    return step_size * (nbeta * h_max + localization)


def _cell_burnin(step_size: float, localization: float, floor: int, cap: int) -> int:
    """A derived grid's cell burn-in: ``MIN_RELAXATIONS`` relaxation times 1/(εγ) of the flat
    directions, at least ``floor`` and at most ``cap`` (the calibration's raised burn-in)."""
    if localization <= 0:
        return cap
    return int(min(max(floor, _judged_burnin(step_size, localization)), cap))


def _judged_burnin(step_size: float, localization: float) -> int:
    """The least burn-in that covers ``MIN_RELAXATIONS`` relaxation times 1/(εγ) (γ > 0): a
    hair above the quotient, so that ε·γ·burn-in ≥ MIN_RELAXATIONS survives float rounding."""
    return math.ceil(MIN_RELAXATIONS / (step_size * localization) * (1 + 1e-9))


def _larger_steps_fail(row: dict[str, Any], step: float) -> str | None:
    """Why the cell at the next larger ``step`` (same γ, nβ) cannot qualify, from the table
    ``row`` of the cell below it, or None: a chain of it diverged, or its bias bound, scaled
    ∝ ε (its first order; measured growth is faster, so the scaling errs toward running),
    exceeds ``SKIP_BIAS_FACTOR`` × the healthy limit."""
    if row["diverged"]:
        return f"the cell at ε = {row['step_size']:.3g} below it had diverged chains"
    limit = HEALTHY_BIAS * abs(row["llc_mean"])
    predicted = row["bias_bound"] * step / row["step_size"]
    if predicted > SKIP_BIAS_FACTOR * limit:
        return (
            f"the bias bound of the cell at ε = {row['step_size']:.3g} below it, scaled ∝ ε, "
            f"predicts {predicted / abs(row['llc_mean']):.1%} of λ̂ here, above the healthy "
            f"{HEALTHY_BIAS:.0%}"
        )
    return None


def _padded_burnin(result: LLCResult, *, width: int) -> LLCResult:
    """``result`` with its burn-in trace NaN-padded to ``width`` steps (cells of different
    burn-ins, stacked)."""
    trace = result.burnin_loss_trace
    pad = [(0, 0)] * (trace.ndim - 1) + [(0, width - trace.shape[-1])]
    return result._replace(burnin_loss_trace=jnp.pad(trace, pad, constant_values=jnp.nan))


def _group_max(values: np.ndarray, size: int) -> np.ndarray:
    """Each entry replaced by the largest in its group of ``size`` consecutive entries."""
    out = values.copy()
    for i in range(0, len(values), size):
        out[i : i + size] = values[i : i + size].max()
    return out


def _unrun_row(eps, gamma, nbeta, h_max, burnin, why) -> dict[str, Any]:
    """The table row of a cell refused before it ran, and ``why``."""
    nan = math.nan
    return dict(
        step_size=float(eps), localization=float(gamma), nbeta=float(nbeta), num_burnin=burnin,
        llc_mean=nan, llc_std=nan, llc_se=nan, mala_accept=nan, rhat=nan, ess=nan, trend=nan,
        diverged=0, ok=False, ran=False, margin=float(_stiffness(eps, gamma, nbeta, h_max)),
        bias_bound=nan,
        issues=f"not run: {why}",
    )  # fmt: skip


def _nothing_ran(table, num_burnin: int) -> str:
    """What to do when no cell of a derived grid could qualify, so none ran: an explicit grid
    (the derived grid's steps within the stiffness margin, at the γ where the flat directions
    relax fastest) with the burn-in that covers ``MIN_RELAXATIONS`` relaxation times 1/(εγ)
    at its largest step."""
    calm = table[(table.margin <= MAX_MARGIN) & (table.localization > 0)]
    if calm.empty:
        return (
            "No cell ran: every step of the grid is stiffer than the margin at w*; pass "
            "smaller step_sizes."
        )
    gamma = float(calm.localization[(calm.step_size * calm.localization).idxmax()])
    steps = sorted({float(f"{e:.3g}") for e in calm.step_size[calm.localization == gamma]})
    needed = _judged_burnin(steps[-1], gamma)
    return (
        f"No cell ran: none could qualify within {num_burnin} burn-in steps (the flat "
        f"directions relax in 1/(εγ) steps, {1 / (steps[-1] * gamma):.3g} at best: ε = "
        f"{steps[-1]:.3g}, γ = {gamma:g}), so none was run. calibrate(..., step_sizes="
        f"{steps}, localizations=[{gamma:g}], num_burnin={needed}) would let them be judged, "
        "and passing its recommended settings to estimate_llc runs at least that long too; a "
        "larger localization relaxes the flat directions faster, but confines them more."
    )


def relaxed_burnin(step_size: float, localization: float) -> int:
    """Burn-in steps that cover ``BURNIN_RELAXATIONS`` relaxation times 1/(εγ) of the flat
    directions, which only the localizer confines (docs/method.md §4); 0 without one."""
    if localization <= 0:
        return 0
    return math.ceil(BURNIN_RELAXATIONS / (step_size * localization))


def _cell_row(cell, diagnose, eps, gamma, nbeta, h_max, num_burnin) -> dict[str, Any]:
    """The table row of one cell that ran (host arrays): its estimate, checks and verdict."""
    relaxations = float(eps * gamma * num_burnin)
    diag = diagnose(cell)
    bad = [issue.message for issue in diag.issues if issue.code in _DISQUALIFYING]
    if cell.diverged.any() and DIVERGED not in diag.codes:
        bad.append(f"{int(cell.diverged.sum())} chain(s) diverged")
    margin = float(_stiffness(eps, gamma, nbeta, h_max))
    # the final run's own step check (diagnostics) must pass with room to spare
    biased = not diag.bias_bound <= HEALTHY_BIAS * abs(diag.llc)
    # a cell whose burn-in is short of MIN_RELAXATIONS relaxation times 1/(εγ) of the flat
    # directions measured chains that had not yet spread: neither its λ̂ nor the curvature
    # its chains saw predicts the long run (measured: a DLN cell at γ = 1 passed at a 5%
    # bias bound, and the recommended 100,000-step run then showed 23%)
    if relaxations < MIN_RELAXATIONS:
        bad.append(
            f"burn-in {num_burnin} is {relaxations:.2g} relaxation times 1/(εγ), short of "
            f"{MIN_RELAXATIONS:g}: not equilibrated"
        )
    se = diag.llc_se  # within-chain Monte-Carlo SE (defined for one chain too)
    accept = (
        float(np.nanmean(cell.mala_accept)) if not np.isnan(cell.mala_accept).all() else math.nan
    )
    return dict(
        step_size=float(eps), localization=float(gamma), nbeta=float(nbeta),
        num_burnin=int(num_burnin), llc_mean=float(cell.llc_mean),
        llc_std=float(cell.llc_std), llc_se=se,
        mala_accept=accept, rhat=diag.rhat, ess=diag.ess_bulk, trend=diag.trend,
        diverged=int(cell.diverged.sum()),
        ok=not bad and margin <= MAX_MARGIN and not biased and math.isfinite(se), ran=True,
        margin=margin, bias_bound=diag.bias_bound, issues="; ".join(bad),
    )  # fmt: skip


def _scatter_cells(results: LLCResult, ran: np.ndarray) -> LLCResult:
    """``results`` of the cells that ran, spread over the whole grid: a cell that did not run
    holds NaN (integers: -1, flags: False), so ``Calibration.results[i]`` is row i's."""

    def spread(x):
        x = np.asarray(x)
        fill = np.nan if x.dtype.kind == "f" else (False if x.dtype.kind == "b" else -1)
        full = np.full((ran.size, *x.shape[1:]), fill, x.dtype)
        full[ran] = x
        return full

    return jax.tree.map(spread, results)


def _final_step(row) -> float:
    """The chosen cell's ε, lowered (if need be) to where its bias bound — to first order
    ∝ ε (``jaxslt.curvature``) — is ``TARGET_BIAS``·|λ̂|."""
    step, allowed = float(row.step_size), TARGET_BIAS * abs(float(row.llc_mean))
    if allowed > 0 and row.bias_bound > allowed:
        return step * allowed / float(row.bias_bound)
    return step


def _recommended_draws(row, num_draws: int, num_burnin: int, slower: float) -> tuple[int, float]:
    """Draws per chain for the final run, whose step is ``slower`` times smaller than the chosen
    cell's (its chains mix ∝ 1/ε, so its SE at equal draws is √slower times the cell's): at
    least twice the calibration's burn-in, and enough that its Monte-Carlo SE, scaled from the
    cell's (SE ∝ 1/√draws at the same number of chains), is ``TARGET_MC_ERROR``·|λ̂|; at most
    ``MAX_DRAWS_FACTOR``·slower × the calibration's draws. Returned with the SE it is expected
    to reach, relative to |λ̂| (above ``TARGET_MC_ERROR`` when that cap binds)."""
    target = TARGET_MC_ERROR * abs(row.llc_mean)
    cap = MAX_DRAWS_FACTOR * num_draws * slower
    needed = num_draws * slower * (row.llc_se / target) ** 2 if target > 0 else math.inf
    needed = min(needed, cap) if math.isfinite(needed) else num_draws
    draws = int(max(num_draws, 2 * num_burnin, math.ceil(needed)))
    relative = row.llc_se * math.sqrt(num_draws * slower / draws) / abs(row.llc_mean)
    return draws, relative if math.isfinite(relative) else math.nan


def recommend(
    results: Any,
    grid: Grid,
    diagnose: Callable,
    h_max: float,
    num_burnin: int,
    num_draws: int,
    *,
    probe: Callable | None = None,
) -> Calibration:
    """The recommendation rule of this module's docstring applied to the ``results`` of the
    cells of ``grid`` (batched over cells), each cell judged by ``diagnose``; ``num_burnin``
    is the calibration's burn-in (the most a cell ran; the final run's rules scale from it),
    ``num_draws`` its draws. ``probe(ε, γ, nβ)`` runs one more cell (an ``LLCResult`` and its
    burn-in): with it, when a single γ is healthy, the cell at ``GAMMA_PROBE``·γ and the
    chosen step is run and judged too (its row is appended to the table and its result to
    ``results``). Returns the ``Calibration`` (table, recommended settings, explanation,
    ε → 0 extrapolations, cautions). Host-side bookkeeping apart from the probe, unit-tested
    on synthetic tables."""
    import pandas as pd

    eps, gam, nbs = grid.step_size, grid.localization, grid.nbeta
    burnins = np.full(len(eps), num_burnin) if grid.burnin is None else grid.burnin
    rows = []
    for i in range(len(eps)):
        if grid.ran is not None and not grid.ran[i]:
            relaxations = float(eps[i] * gam[i] * num_burnin)
            why = (grid.skipped or {}).get(i) or (
                f"its burn-in would be {relaxations:.2g} relaxation times 1/(εγ), short of "
                f"{MIN_RELAXATIONS:g}"
            )
            rows.append(_unrun_row(eps[i], gam[i], nbs[i], h_max, num_burnin, why))
            continue
        cell = jax.tree.map(lambda x, i=i: np.asarray(x[i]), results)
        rows.append(_cell_row(cell, diagnose, eps[i], gam[i], nbs[i], h_max, int(burnins[i])))
    table = pd.DataFrame(rows)
    table["selected"] = False
    table["probe"] = False
    extrapolation: dict[float, tuple[float, float]] = {}
    notes = [f"h_max = {h_max:.4g} (power iteration on the Hessian of L at w*)."]
    cautions: list[str] = []
    chosen = None
    for nbeta in sorted(set(nbs)):
        estimates = {}  # γ → (λ̂ at the step chosen for that γ, its SE)
        for gamma in sorted(set(gam)):
            sub = table[(table.localization == gamma) & (table.nbeta == nbeta) & table.ok]
            if sub.empty:
                at = table[(table.localization == gamma) & (table.nbeta == nbeta)]
                calm = at[at.margin <= MAX_MARGIN]
                if not at.ran.any() and gamma > 0 and calm.empty:
                    notes.append(
                        f"γ = {gamma:g}: not run, every step of the grid is stiffer than "
                        f"{MAX_MARGIN:g} at w*."
                    )
                elif not at.ran.any() and gamma > 0:  # refused unseen: say what would do
                    needed = _judged_burnin(calm.step_size.max(), gamma)
                    notes.append(
                        f"γ = {gamma:g}: not run, the burn-in ({num_burnin} steps) is short of "
                        f"{MIN_RELAXATIONS:g} relaxation times 1/(εγ) at every step of the grid "
                        f"(num_burnin ≥ {needed} would let it be judged)."
                    )
                else:
                    notes.append(f"γ = {gamma:g}: no healthy cell.")
                continue
            if sub.step_size.nunique() < 2:
                best = sub.step_size.idxmax()
                notes.append(
                    f"γ = {gamma:g}: one healthy step only, so flatness in ε is unchecked "
                    f"(λ̂ = {sub.llc_mean[best]:.4g} ± {sub.llc_se[best]:.2g})."
                )
                estimates[gamma] = (best, False)
                continue
            lam0, se0 = extrapolate(sub.step_size.to_numpy(), sub.llc_mean.to_numpy(),
                                     sub.llc_se.to_numpy())  # fmt: skip
            extrapolation[gamma] = (lam0, se0)
            tol = np.maximum(2 * np.hypot(sub.llc_se, se0), 0.05 * abs(lam0))
            flat = sub[np.abs(sub.llc_mean - lam0) <= tol]
            notes.append(
                f"γ = {gamma:g}: ε → 0 extrapolation λ̂₀ = {lam0:.4g} ± {se0:.2g}; "
                f"{len(flat)} of {len(sub)} healthy steps agree with it."
            )
            if len(flat):
                estimates[gamma] = (flat.step_size.idxmax(), True)
        if estimates:
            gammas = sorted(estimates)
            chosen, converged = estimates[gammas[0]]
            if not converged:
                cautions.append(
                    f"calibration found a single healthy step at γ = {gammas[0]:g}, so it could "
                    "not check that λ̂ is flat in ε; a longer calibration (num_burnin, "
                    "num_draws) or a finer step grid would"
                )
            if len(gammas) == 1 and gammas[0] > 0 and probe is not None:
                # one healthy γ: probe a larger one at the chosen step (it relaxes faster, so
                # the calibration's burn-in covers it) to see whether λ̂ still moves with γ
                row = table.loc[chosen]
                g1 = GAMMA_PROBE * gammas[0]
                cell, burnin = probe(row.step_size, g1, nbeta)
                cell = jax.tree.map(np.asarray, cell)
                probed = _cell_row(cell, diagnose, row.step_size, g1, nbeta, h_max, burnin)
                table.loc[len(table)] = probed | {"selected": False, "probe": True}
                results = jax.tree.map(lambda x, c: np.concatenate([x, c[None]]), results, cell)
                # usable to compare λ̂ with: no disqualifying issue and a stable step (its bias
                # bound, the same ε's as the chosen cell's, is judged there)
                if (
                    not probed["issues"]
                    and probed["margin"] <= MAX_MARGIN
                    and math.isfinite(probed["llc_se"])
                ):
                    estimates[g1] = (len(table) - 1, False)
                    gammas = sorted(estimates)
                else:
                    notes.append(
                        f"γ = {g1:g} (probe at the chosen step): not usable ({probed['issues']})."
                    )
            _check_flat_in_gamma(table, results, estimates, gammas, cautions, num_burnin, notes)
            break
    if chosen is None:
        notes.append(
            _nothing_ran(table, num_burnin)
            if not table.ran.any()
            else "No cell is healthy: lower the step sizes, raise num_burnin/num_draws or check "
            "that w* is a local minimum."
        )
        return Calibration(table, {}, "\n".join(notes), extrapolation, h_max, results)
    table.loc[chosen, "selected"] = True
    row = table.loc[chosen]
    step = _final_step(row)
    burnin = int(
        min(max(num_burnin, relaxed_burnin(step, row.localization)), MAX_BURNIN_FACTOR * num_burnin)
    )
    draws, se = _recommended_draws(row, num_draws, num_burnin, float(row.step_size) / step)
    recommended = dict(
        step_size=step, localization=float(row.localization), nbeta=float(row.nbeta),
        num_burnin=burnin, num_draws=draws,
    )  # fmt: skip

    how = (
        "the largest healthy ε that agrees with the ε → 0 extrapolation"
        if row.localization in extrapolation
        else "the only healthy ε"
    )
    notes.append(
        f"Chosen: the cell at ε = {row.step_size:.3g}, γ = {row.localization:g} (estimate "
        f"{row.llc_mean:.4g} ± {row.llc_se:.2g}, MALA acceptance {row.mala_accept:.3f}): the "
        f"smallest γ with a healthy cell, and at it {how}."
    )
    if step < row.step_size:
        notes.append(
            f"Its bias bound is {row.bias_bound / abs(row.llc_mean):.1%} of λ̂, so the final run "
            f"takes ε = {step:.3g}, where the bound (∝ ε) is {TARGET_BIAS:.1%}."
        )
    notes.append(
        f"Final run: burn-in {recommended['num_burnin']} ≥ 5/(εγ); {draws} draws, for an "
        f"expected Monte-Carlo SE of {se:.1%} of λ̂ (the aim is {TARGET_MC_ERROR:.1%}, with at "
        f"most {MAX_DRAWS_FACTOR}× the calibration's draws)."
    )
    notes.extend(f"Caution: {c}." for c in cautions)
    return Calibration(
        table, recommended, "\n".join(notes), extrapolation, h_max, results, tuple(cautions), se
    )
