"""Chain diagnostics for an ``LLCResult``: is this λ̂ trustworthy, and if not, which knob to turn.

Everything here is host-side numpy (plus ArviZ for R-hat and ESS) on the traces the result
already holds; nothing is resampled, so a diagnosis costs milliseconds (after ArviZ's import).

- ``to_inference_data(result)``: the traces as an ``arviz.InferenceData`` (for ``az.summary``,
  ``az.plot_trace``, ...).
- ``diagnose(result)``: a ``Diagnostics`` record (R-hat, ESS, MALA acceptance, drift of the
  estimate between the two halves of the kept draws, draws below L_n(w*), divergences) with one
  ``Issue`` per failed check, each naming the likely cause and the remedy
  (docs/method.md §11: λ̂ < 0 ⇒ w* not a minimum; underestimates ⇒ not equilibrated; overestimates ⇒
  ε too large; NaN ⇒ ε too large).

Only the chains that did not diverge ("healthy" chains) enter the statistics, as in the estimate.

An ``Issue`` is (``code``, ``message``, ``remedy``): ``message`` is the readable warning (its
wording may change between versions), ``remedy`` its closing clause saying what to change, and
``code`` one of the closed set ``CODES`` below, stable, so that code acting on a diagnosis
(calibration's cell health, the estimator's de-duplication of the divergence warning) decides
by ``code`` and never by reading the text. Each code is also a module constant of the same name
in capitals (``DIVERGED = "diverged"``, ...). In the order ``diagnose`` checks them:

=======================  =====================================================================
code                     failed check (see ``diagnose`` for the thresholds)
=======================  =====================================================================
``diverged``             some or all chains diverged (non-finite or exploded loss)
``not_minimum``          λ̂ < 0, or most draws deep below L_n(w*): w* is not a local minimum
``step_size``            stiffness ε·(nβ·h_max + γ) > 1 or bias bound > 10% of λ̂ (needs geometry)
``mala_low``             MALA acceptance of the SGLD steps below its lower bound (ε too large)
``trend_rising``         λ̂ rises significantly between the halves: not equilibrated
``trend_falling``        λ̂ falls significantly between the halves: still settling or optimising
``rhat``                 R-hat above its bound: the chains disagree
``ess``                  bulk ESS below its minimum: too few effective draws
``mc_error``             Monte-Carlo standard error above its share of |λ̂|: too noisy
``float_resolution``     λ̂ within a few units of the loss's floating-point rounding
=======================  =====================================================================

A MALA acceptance above its upper bound is no issue of its own: it only adds "raising
step_size is the cheaper fix" to the remedy of ``trend_rising``, ``ess`` and ``mc_error``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxslt import curvature

__all__ = [
    "CODES",
    "DIVERGED",
    "ESS",
    "FLOAT_RESOLUTION",
    "MALA_LOW",
    "MC_ERROR",
    "MC_ERROR_LIMIT",
    "NOT_MINIMUM",
    "RHAT",
    "STEP_SIZE",
    "TREND_FALLING",
    "TREND_RISING",
    "Diagnostics",
    "Issue",
    "diagnose",
    "to_inference_data",
]

# the codes of the issues ``diagnose`` reports (the table in the module docstring)
DIVERGED = "diverged"
NOT_MINIMUM = "not_minimum"
STEP_SIZE = "step_size"
MALA_LOW = "mala_low"
TREND_RISING = "trend_rising"
TREND_FALLING = "trend_falling"
RHAT = "rhat"
ESS = "ess"
MC_ERROR = "mc_error"
FLOAT_RESOLUTION = "float_resolution"
CODES = (
    DIVERGED,
    NOT_MINIMUM,
    STEP_SIZE,
    MALA_LOW,
    TREND_RISING,
    TREND_FALLING,
    RHAT,
    ESS,
    MC_ERROR,
    FLOAT_RESOLUTION,
)


class Issue(NamedTuple):
    """One failed check of ``diagnose``: ``code`` (one of ``CODES``; decide by it),
    ``message`` (the readable warning; its wording may change) and ``remedy`` (the clause of
    the message that says what to change). ``str(issue)`` is the message."""

    code: str
    message: str
    remedy: str

    def __str__(self) -> str:
        return self.message


def _issue(code: str, finding: str, remedy: str) -> Issue:
    """The issue whose message is the finding (what failed, and its likely cause), then the
    remedy."""
    return Issue(code, f"{finding}; {remedy}", remedy)


def _arviz():
    """Import ArviZ lazily, silencing the FutureWarning it emits about its coming refactor."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def _scalar(x: Any) -> float:
    return float(np.asarray(x))


def _check_unbatched(result: Any) -> None:
    if np.ndim(result.llc_mean) != 0:
        raise ValueError(
            f"expected a single LLCResult, got a batched one (llc_mean shape "
            f"{np.shape(result.llc_mean)}); index it first, e.g. "
            "jax.tree.map(lambda x: x[i], result)"
        )


def to_inference_data(result: Any, *, drop_diverged: bool = False):
    """The result's traces as an ``arviz.InferenceData``.

    - ``posterior``: ``loss`` (chain, draw), the minibatch loss L_B(w_t) at the kept draws, and
      ``llc`` (chain, draw) = nβ·(L_B(w_t) − L_n(w*)), each draw's contribution to the estimate:
      its mean over draws is ``llc_per_chain``, its mean over everything the estimate.
    - ``sample_stats``: ``diverged`` (chain, draw), the chain's divergence flag on every draw.
    - ``warmup_posterior`` (only with burn-in): ``loss`` (chain, draw) of the burn-in steps.
    - ``attrs``: ``nbeta``, ``localization``, ``step_size``, ``init_loss`` (floats).

    Diverged chains hold NaN after their first bad step, so ``az.summary`` reports NaN for them;
    ``drop_diverged=True`` keeps only the healthy chains (as in ``llc_mean``).

    Args:
      result: one ``LLCResult`` (not a batched one).
      drop_diverged: keep only the chains that did not diverge.

    Returns:
      (arviz.InferenceData): the traces, in the groups above.

    Raises:
      ValueError: ``result`` is batched (index it first).

    Examples:
      >>> import jax
      >>> import jaxslt
      >>> from jaxslt import problems
      >>> p = problems.regular_linear_gaussian(2, key=jax.random.key(0), num_examples=256)
      >>> result = jaxslt.estimate_llc(p.loss_fn, p.params, p.data, key=jax.random.key(1),
      ...                              step_size=1e-3, localization=10.0, num_chains=2,
      ...                              num_draws=200, num_burnin=100, diagnostics=False)
      >>> idata = jaxslt.to_inference_data(result)
      >>> idata.posterior["llc"].shape  # (chain, draw)
      (2, 200)
    """
    _check_unbatched(result)
    az = _arviz()
    loss = np.asarray(result.loss_trace, dtype=np.float64)
    burnin = np.asarray(result.burnin_loss_trace, dtype=np.float64)
    diverged = np.asarray(result.diverged, dtype=bool)
    if drop_diverged:
        loss, burnin, diverged = loss[~diverged], burnin[~diverged], diverged[~diverged]
    nbeta, init_loss = _scalar(result.nbeta), _scalar(result.init_loss)
    attrs = {
        "nbeta": nbeta,
        "localization": _scalar(result.localization),
        "step_size": _scalar(result.step_size),
        "init_loss": init_loss,
    }
    kwargs: dict[str, Any] = {}
    if burnin.shape[-1] > 0:
        kwargs = {"warmup_posterior": {"loss": burnin}, "save_warmup": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return az.from_dict(
            posterior={"loss": loss, "llc": nbeta * (loss - init_loss)},
            sample_stats={"diverged": np.broadcast_to(diverged[:, None], loss.shape).copy()},
            attrs=attrs,
            **kwargs,
        )


@dataclasses.dataclass(frozen=True)
class Diagnostics:
    """What ``diagnose`` found. All statistics are over the healthy (non-diverged) chains.

    Attributes:
      rhat: rank-normalized split R-hat of the loss trace (ArviZ; Vehtari et al. 2021). With
        one healthy chain its two halves stand in for two chains. NaN when undefined.
      ess_bulk: ArviZ's bulk effective sample size of the loss trace (total over chains).
      ess_tail: ArviZ's tail effective sample size of the loss trace (total over chains).
      mala_accept: mean over chains of the MALA acceptance probability of the SGLD steps
        (``result.mala_accept``); NaN for other samplers.
      accept_rate: mean Metropolis acceptance (the ``"mala"`` sampler); NaN for unadjusted
        samplers.
      frac_below_init: fraction of the kept draws whose minibatch loss is below L_n(w*).
      lowest_excess: the least full-data nβ·(L_n(w_t) − L_n(w*)) over the healthy chains'
        evaluated draws (``LLCResult.lowest_excess``); NaN when none was evaluated.
      llc: λ̂ over the healthy chains.
      llc_se: its Monte-Carlo standard error, nβ·sd(L)/√ESS over the healthy chains' draws,
        with ArviZ's ESS for the mean (Vehtari et al. 2021; not the bulk ESS, which is
        computed on ranks and overstates a skewed trace's worth for its mean: its SE is
        ~10% low on z² of an AR(1) z). Defined for one chain. NaN when undefined.
      llc_halves: (λ̂ on the first half of the kept draws, λ̂ on the second half).
      trend: (λ̂_second − λ̂_first) / |λ̂|, the relative drift of the estimate.
      trend_z: that difference over its standard error (batch means within chains), a
        Student-t statistic with ``trend_dof`` degrees of freedom (NaN when the chains are too
        short for their autocorrelation to test).
      trend_dof: the degrees of freedom of ``trend_z``.
      num_chains: chains in the result, diverged ones included.
      divergence_steps: first bad step of each diverged chain (non-finite or exploded).
      stiffness: ε·(nβ·h_max + γ) at w*; NaN when the result carries no ``geometry``.
      bias_bound: the first-order bound on λ̂'s inflation by discretisation and minibatch
        noise, (ε·nβ/8)·(tr ∇²L + nβ·tr Cov ∇L_B) (``jaxslt.curvature``); NaN when the
        result carries no ``geometry``.
      issues: one ``Issue`` per failed check, in the order of ``CODES``.
      warnings: their messages (one readable line each).
      ok: no issues.
      codes: the code of each issue (decide by these, not by the messages).
    """

    rhat: float
    ess_bulk: float
    ess_tail: float
    mala_accept: float
    accept_rate: float
    frac_below_init: float
    llc: float
    llc_halves: tuple[float, float]
    trend: float
    trend_z: float
    trend_dof: float
    num_chains: int
    divergence_steps: tuple[int, ...]
    stiffness: float
    bias_bound: float
    issues: tuple[Issue, ...]
    lowest_excess: float = math.nan
    llc_se: float = math.nan
    warnings: tuple[str, ...] = dataclasses.field(init=False)
    ok: bool = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "issues", tuple(self.issues))
        object.__setattr__(self, "warnings", tuple(issue.message for issue in self.issues))
        object.__setattr__(self, "ok", not self.issues)

    @property
    def codes(self) -> tuple[str, ...]:
        """The code of each issue, in order."""
        return tuple(issue.code for issue in self.issues)

    def __str__(self) -> str:
        healthy = self.num_chains - len(self.divergence_steps)
        lines = [
            f"LLC diagnostics ({healthy} of {self.num_chains} chains healthy): "
            + ("OK" if self.ok else f"{len(self.warnings)} warning(s)"),
            f"  λ̂ = {self.llc:.4g}"
            + (f" ± {self.llc_se:.2g} (Monte-Carlo SE)" if math.isfinite(self.llc_se) else "")
            + f"; halves {self.llc_halves[0]:.4g} → {self.llc_halves[1]:.4g} "
            f"(trend {self.trend:+.1%}, z = {self.trend_z:.2f})",
            f"  R-hat {self.rhat:.3f}, ESS bulk {self.ess_bulk:.0f}, tail {self.ess_tail:.0f}; "
            f"draws below L_n(w*): {self.frac_below_init:.1%}"
            + (
                f"; lowest full-data excess {self.lowest_excess:.3g}"
                if not math.isnan(self.lowest_excess)
                else ""
            ),
        ]
        if not math.isnan(self.stiffness):
            lines.append(
                f"  step: stiffness ε·(nβ·h_max + γ) = {self.stiffness:.3g}, bias bound "
                f"{self.bias_bound:.3g} (in λ̂'s units)"
            )
        accept = []
        if not math.isnan(self.mala_accept):
            accept.append(f"MALA acceptance of the SGLD steps {self.mala_accept:.3f}")
        if not math.isnan(self.accept_rate):
            accept.append(f"Metropolis acceptance {self.accept_rate:.3f}")
        if accept:
            lines.append("  " + "; ".join(accept))
        lines.extend(f"  WARNING: {w}" for w in self.warnings)
        return "\n".join(lines)


# a static pytree node: results carrying diagnostics still map, jit and vmap as before
jax.tree_util.register_static(Diagnostics)


def _rhat_ess(x: np.ndarray) -> tuple[float, float, float, float]:
    """Rank-normalized split R-hat, bulk ESS, tail ESS and the ESS for the mean of a
    (chains, draws) trace."""
    chains, draws = x.shape
    if chains == 0 or draws < 4 or not np.isfinite(x).all():
        return math.nan, math.nan, math.nan, math.nan
    az = _arviz()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        ess_bulk = float(az.ess(x, method="bulk"))
        ess_tail = float(az.ess(x, method="tail"))
        ess_mean = float(az.ess(x, method="mean"))
        # ArviZ needs two chains for R-hat; a lone chain's halves stand in for them (and are
        # split once more inside, so within-chain drift still shows).
        pair = x if chains > 1 else x[:, : 2 * (draws // 2)].reshape(2, -1)
        rhat = float(az.rhat(pair, method="rank")) if pair.shape[-1] >= 4 else math.nan
    return rhat, ess_bulk, ess_tail, ess_mean


def _detrended_halves(x: np.ndarray) -> np.ndarray:
    """(chains, 2, half) trace halves, each with its own least-squares line removed."""
    draws = x.shape[1]
    half = draws // 2
    halves = np.stack([x[:, :half], x[:, draws - half :]], axis=1)
    t = np.arange(half) - (half - 1) / 2
    slope = (halves @ t) / (t @ t)
    return halves - halves.mean(axis=-1, keepdims=True) - slope[..., None] * t


def _half_trend(x: np.ndarray, nbeta: float, init_loss: float) -> tuple[float, ...]:
    """λ̂ on each half of the kept draws, their difference D, its SE and the SE's dof, by batch
    means within chains (so the test keeps its power with one chain).

    Halves: the first and the last ⌊N/2⌋ draws. D = λ̂_2 − λ̂_1 = nβ·mean_c(m2_c − m1_c). Each
    half of each chain is cut into K/2 consecutive batches of m ≥ 4τ draws (τ = the integrated
    autocorrelation time, C·N/ESS of the traces with each half's own line removed, so a drift
    is not mistaken for slow mixing), whose means are then nearly independent. With s² the
    variance of the batch means about their half's line (pooled over halves and chains,
    C·(K − 4) dof), Var(m_h,c) = s²/(K/2), so SE(D) = nβ·√(4s²/(K·C)). Fewer than 8 batches
    (chains too short for their autocorrelation) fall back to the chains as independent
    replicates, SE(D) = nβ·std_c(m2_c − m1_c)/√C with C − 1 dof, when C ≥ 4; else NaN.
    """
    chains, draws = x.shape
    half = draws // 2
    if chains == 0 or half < 8:
        return (math.nan,) * 5
    m1, m2 = x[:, :half].mean(axis=1), x[:, draws - half :].mean(axis=1)
    llc1 = nbeta * (m1.mean() - init_loss)
    llc2 = nbeta * (m2.mean() - init_loss)
    diff = float(nbeta * (m2 - m1).mean())
    resid = _detrended_halves(x)
    az = _arviz()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        ess = float(az.ess(resid.reshape(chains, -1), method="mean"))
    tau = chains * 2 * half / ess if ess > 0 else math.inf
    length = max(1, math.ceil(4 * tau))
    per_half = half // length if math.isfinite(tau) else 0
    if per_half < 4:  # too autocorrelated for batch means: chains as replicates, if enough
        if chains < 4:
            return float(llc1), float(llc2), diff, math.nan, math.nan
        se = float(nbeta * np.std(m2 - m1, ddof=1) / np.sqrt(chains))
        return float(llc1), float(llc2), diff, se, float(chains - 1)
    used = per_half * length
    halves = np.stack([x[:, :used], x[:, draws - used :]], axis=1)
    means = halves.reshape(chains, 2, per_half, length).mean(axis=-1)
    t = np.arange(per_half) - (per_half - 1) / 2
    slope = (means @ t) / (t @ t)
    dev = means - means.mean(axis=-1, keepdims=True) - slope[..., None] * t
    dof = chains * 2 * (per_half - 2)
    s2 = float(np.sum(dev**2) / dof)
    se = float(nbeta * np.sqrt(2 * s2 / per_half / chains))
    return float(llc1), float(llc2), diff, se, float(dof)


def _two_sided_p(stat: float, dof: float) -> float:
    from scipy import stats

    if math.isnan(stat):
        return math.nan
    if math.isinf(dof):
        return float(2 * stats.norm.sf(abs(stat)))
    return float(2 * stats.t.sf(abs(stat), dof))


def _ratio(num: float, den: float) -> float:
    """num / den, with 0/0 = 0 and x/0 = ±inf (a drift with zero noise is infinitely clear)."""
    if math.isnan(num) or math.isnan(den):
        return math.nan
    if den == 0:
        return 0.0 if num == 0 else math.copysign(math.inf, num)
    return num / den


def _healthy_mean(values: Any, healthy: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)[healthy]
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


MC_ERROR_LIMIT = 0.1
"""The Monte-Carlo standard error of λ̂, relative to |λ̂|, above which ``diagnose`` warns."""


def diagnose(
    result: Any,
    *,
    rhat_max: float = 1.1,
    min_ess: float = 100.0,
    mala_accept_range: tuple[float, float] = (0.8, 0.99),
    max_trend: float = 0.05,
    trend_z: float = 3.0,
    max_frac_below_init: float = 0.5,
    max_full_data_dip: float = 0.05,
    max_rel_se: float = MC_ERROR_LIMIT,
) -> Diagnostics:
    """Check an ``LLCResult`` and say, per failed check, what is likely wrong and what to change.

    Checks, and why their defaults:

    - Divergence: any diverged chain (its loss became NaN/inf) ⇒ lower ``step_size``.
    - w* not a minimum: λ̂ < 0, or more than ``max_frac_below_init`` = 0.5 of the kept draws
      below L_n(w*). At a local minimum E[L_B(w)] = L_n(w) ≥ L_n(w*), and full-batch draws are
      never below it; with minibatches the batch noise alone can put a sizeable fraction below
      (its SD, ~sd(l_i)/√B, can exceed the excess λ/nβ), but not most of them. Most draws
      below only warns when they go deep: nβ·mean(L_n(w*) − L | L < L_n(w*)) > 10% of |λ̂| (a w*
      a hair above the empirical minimum, such as the true parameter of a noisy regression,
      moves λ̂ by less). docs/method.md §5.2. Or (with ``result.lowest_excess``) a full-data
      draw below L_n(w*) by more than ``max_full_data_dip`` = 5% of |λ̂| (nβ·ΔL, and beyond
      the loss's rounding): impossible at a local minimum, so the chains left a saddle (the
      TMS 5-gon: 8 of 9 runs; none at the minima measured nor at a noisy regression's true
      parameter, and ~0.1% of λ̂ at the noisy normal crossings' w* = 0:
      benchmarks/results/diagnostics-notes.md).
    - MALA acceptance of the SGLD steps below ``mala_accept_range[0]`` = 0.8 (healthy ≈ 0.9,
      docs/method.md §5.3): ε is too large for the local curvature, discretisation inflates λ̂.
      Above ``mala_accept_range[1]`` = 0.99 ε is merely small: that costs mixing, not accuracy,
      so it never warns on its own; it is named as the cheaper remedy when the trend or ESS
      check fails (a tiny ε is the usual reason the chains have not equilibrated).
      Acceptance falls with the dimension at a fixed ε·a_max (a = nβ·h + γ), so the bound is
      loosest on toy models: on quadratics, 0.8 ↔ ε·a_max ≈ 2 with 3 parameters (λ̂ +40%) but
      ≈ 0.8 with 100 parameters (λ̂ +7%). Raise the lower bound to 0.9 for tiny models.
    - Step size: with ``result.geometry`` (``estimate_llc`` always measures it), warns when
      the stiffness ε·(nβ·h_max + γ) exceeds 1 (the stiffest direction's variance is then
      inflated by ≥ 33%, and SGLD diverges at 4) or the first-order bias bound exceeds 10% of
      λ̂ (``jaxslt.curvature``); names the ε that clears both with a factor 2 to spare.
    - Trend: λ̂ on the second half of the kept draws vs the first half. Warns when the relative
      drift exceeds ``max_trend`` = 5% (a drift that changes the answer materially) *and* is
      significant: its two-sided p-value, from the Student-t with ``trend_dof`` dof (see
      ``_half_trend``: batch means within chains, C·(K − 4) dof for K batches per chain), is
      below that of a normal |z| = ``trend_z`` = 3 (p ≈ 0.003). Within-chain batch means keep
      the test's power with few chains (an across-chain SE with 5 chains needs |t| ≈ 8.6).
      Rising ⇒ not yet
      equilibrated (raise ``num_burnin``, or ``step_size``); falling ⇒ still settling or still
      optimising (raise ``num_burnin``; train w* longer).
    - R-hat above ``rhat_max`` = 1.1 (the classic Gelman–Rubin bound; 1.01 is Vehtari et al.'s
      bound for final inference, too strict for short, cheap LLC chains): chains disagree.
    - Bulk ESS below ``min_ess`` = 100 (total over chains): for a regular minimum nβ·(L − L*)
      has mean λ and SD √λ, so the Monte-Carlo SE of λ̂ is ≈ √(λ/ESS), ≤ 10% of λ for λ ≥ 1;
      fewer draws make λ̂ and R-hat unreliable. Raise ``num_draws``. Tail ESS is reported
      only: λ̂ is a mean, not a quantile.
    - Monte-Carlo standard error ``llc_se`` = nβ·sd(L_B)/√ESS (ArviZ's ESS for the mean)
      above ``max_rel_se`` = 10% of |λ̂| (with enough ESS): the ESS rule assumes the draws'
      spread is √λ, but minibatch noise makes it far larger (measured: a 300-step run on a
      regular model, per-draw SD 26 against √λ = 2, returned 5.7 for 4.0 with ESS 878).
    - Precision: nβ·spacing(L_n(w*)) (one unit in the last place of the loss, in λ̂'s units)
      above ``max_rel_se`` of |λ̂|: the estimate is float rounding (measured: normal crossings
      at γ = 1e4 in float32, a trace of 3 distinct values).

    Args:
      result: one ``LLCResult`` (not a batched one).
      rhat_max: the largest R-hat that passes.
      min_ess: the smallest bulk ESS (total over chains) that passes.
      mala_accept_range: (lower bound that warns, upper bound above which ε is merely small).
      max_trend: the relative drift between the halves that matters.
      trend_z: the significance of that drift, as the |z| of a normal with the same p-value.
      max_frac_below_init: the fraction of draws below L_n(w*) above which w* is suspect.
      max_full_data_dip: how far (relative to |λ̂|) a full-data draw may go below L_n(w*).
      max_rel_se: the largest Monte-Carlo standard error (and float resolution) relative to
        |λ̂|.

    Returns:
      The ``Diagnostics``; ``.issues`` holds one coded ``Issue`` per failed check.

    Raises:
      ValueError: ``result`` is batched (index it first).

    Examples:
      >>> import jax
      >>> import jaxslt
      >>> from jaxslt import problems
      >>> p = problems.regular_linear_gaussian(2, key=jax.random.key(0), num_examples=256)
      >>> result = jaxslt.estimate_llc(p.loss_fn, p.params, p.data, key=jax.random.key(1),
      ...                              step_size=1e-3, localization=10.0, num_chains=2,
      ...                              num_draws=200, num_burnin=100, diagnostics=False)
      >>> d = jaxslt.diagnose(result)
      >>> d.num_chains
      2
      >>> set(d.codes) <= set(jaxslt.diagnostics.CODES)  # each failed check, coded
      True
      >>> d.ok == (not d.issues)
      True
    """
    _check_unbatched(result)
    diverged = np.asarray(result.diverged, dtype=bool)
    healthy = ~diverged
    num_chains = int(diverged.size)
    steps = tuple(int(s) for s in np.asarray(result.divergence_step)[diverged])
    nbeta, init_loss = _scalar(result.nbeta), _scalar(result.init_loss)
    x = np.asarray(result.loss_trace, dtype=np.float64)[healthy]
    found: list[Issue] = []

    if diverged.any():
        first = list(steps[:8]) + (["..."] if len(steps) > 8 else [])
        bad = (
            f"all {num_chains}" if healthy.sum() == 0 else f"{int(diverged.sum())} of {num_chains}"
        )
        found.append(
            _issue(
                DIVERGED,
                f"{bad} chains diverged (first bad steps {first}; non-finite or exploded loss): "
                f"step_size {_scalar(result.step_size):.3g} is too large for the curvature "
                "(stability needs ε·(nβ·h_max + γ) < 4)",
                "lower step_size",
            )
        )

    llc = float(nbeta * (x.mean() - init_loss)) if x.size else math.nan
    frac_below = float(np.mean(x < init_loss)) if x.size else math.nan
    # how far below L_n(w*) the draws go when they do, in λ̂'s units (a lower bound on how far
    # the loss's minimum lies below L_n(w*)): a dip small against λ̂ (a w* a hair above the
    # empirical minimum, e.g. at the true parameter) barely moves λ̂
    below = x[x < init_loss]
    dip = float(nbeta * np.mean(init_loss - below)) if below.size else 0.0
    deep = not dip <= 0.1 * abs(llc)
    # the full-data excess cannot go below 0 at a local minimum; beyond the loss's rounding and
    # max_full_data_dip of |λ̂|, a chain found lower ground near w* (a saddle it escapes from)
    lowest = _lowest_excess(result, healthy)
    spacing = float(nbeta * np.spacing(np.asarray(result.loss_trace).dtype.type(init_loss)))
    descended = lowest < -max(max_full_data_dip * abs(llc), 16 * spacing)
    if llc < 0 or (frac_below > max_frac_below_init and deep) or descended:
        where = f"{frac_below:.0%} of the draws are below L_n(w*)"
        if descended:
            where = (
                f"a chain's full-data loss went {-lowest:.3g} below L_n(w*) in λ̂'s units "
                f"(nβ·ΔL; {-lowest / abs(llc) if llc else math.inf:.0%} of |λ̂|), impossible "
                f"at a local minimum; {where}"
            )
        found.append(
            _issue(
                NOT_MINIMUM,
                f"λ̂ = {llc:.4g}{' < 0' if llc < 0 else ''} and {where}: w* is not a local "
                "minimum of the loss (e.g. an early checkpoint or a saddle the chains leave), "
                "or the chains keep optimising away from it",
                "train w* longer (to a minimum) or raise localization",
            )
        )

    stiffness = bias_bound = math.nan
    geometry = getattr(result, "geometry", None)
    if geometry is not None:
        eps, gamma = _scalar(result.step_size), _scalar(result.localization)
        bias = curvature.step_bias(geometry, step_size=eps, nbeta=nbeta, localization=gamma)
        stiffness, bias_bound = bias.stiffness, bias.excess
        too_stiff = stiffness > curvature.STIFFNESS_LIMIT
        too_biased = llc > 0 and bias_bound > curvature.MAX_RELATIVE_BIAS * llc
        if too_stiff or too_biased:
            safe = curvature.healthy_step(geometry, nbeta=nbeta, localization=gamma, llc=llc)
            why = []
            if too_stiff:
                why.append(
                    f"its stiffness ε·(nβ·h_max + γ) = {stiffness:.2g} at w* exceeds "
                    f"{curvature.STIFFNESS_LIMIT:g} (SGLD diverges at 4)"
                )
            if too_biased:
                why.append(
                    f"discretisation and minibatch noise may inflate λ̂ by up to "
                    f"{bias_bound:.3g} ({bias_bound / llc:.0%} of λ̂; quadratic model of the "
                    "loss where the chains went)"
                )
            found.append(
                _issue(
                    STEP_SIZE,
                    f"step_size {eps:.3g} is too large: {' and '.join(why)}",
                    f"lower step_size to ≤ {safe:.2g} (a larger batch_size also cuts the "
                    "minibatch share)",
                )
            )

    mala = _healthy_mean(result.mala_accept, healthy)
    accept = _healthy_mean(result.accept_rate, healthy)
    low, high = mala_accept_range
    if mala < low:
        found.append(
            _issue(
                MALA_LOW,
                f"MALA acceptance {mala:.3f} < {low:g}: step_size is too large for the local "
                "curvature (discretisation inflates λ̂)",
                "lower step_size",
            )
        )
    small_step = (
        f"; MALA acceptance {mala:.3f} > {high:g} says step_size is needlessly small, so "
        "raising step_size is the cheaper fix"
        if mala > high
        else ""
    )

    llc1, llc2, diff, se, dof = _half_trend(x, nbeta, init_loss)
    trend, tz = _ratio(diff, abs(llc)), _ratio(diff, se)
    significant = _two_sided_p(tz, dof) < _two_sided_p(trend_z, math.inf)
    if abs(trend) > max_trend and significant:
        where = f"{abs(trend):.0%} {'above' if diff > 0 else 'below'} the first half, z = {tz:.1f}"
        if diff > 0:
            found.append(
                _issue(
                    TREND_RISING,
                    f"trace still rising (λ̂ second half is {where}): the chains have not "
                    "equilibrated (λ̂ is underestimated; flat directions relax in ~1/(ε·γ) "
                    "steps)",
                    f"raise num_burnin or step_size{small_step}",
                )
            )
        else:
            found.append(
                _issue(
                    TREND_FALLING,
                    f"trace still falling (λ̂ second half is {where}): the chains are still "
                    "settling from a transient or still optimising",
                    "raise num_burnin, and if the draws go below L_n(w*), train w* longer",
                )
            )

    rhat, ess_bulk, ess_tail, ess_mean = _rhat_ess(x)
    if rhat > rhat_max:
        found.append(
            _issue(
                RHAT,
                f"R-hat {rhat:.3f} > {rhat_max:g}: chains disagree",
                "run longer (num_draws, num_burnin) or check for multimodality (chains "
                "settling in different basins)",
            )
        )
    if ess_bulk < min_ess:
        found.append(
            _issue(
                ESS,
                f"ESS {ess_bulk:.0f} < {min_ess:g}: too few effective draws",
                f"raise num_draws (or num_chains){small_step}",
            )
        )
    # Monte-Carlo standard error of λ̂ from the draws' own spread: the ESS rule assumes a
    # spread of √λ, but minibatch noise and heavy tails make it far larger. The ESS is the
    # one for the mean: bulk ESS (on ranks) overstates a skewed trace's worth for its mean
    mcse = float(nbeta * np.std(x) / math.sqrt(ess_mean)) if ess_mean > 0 else math.nan
    if ess_bulk >= min_ess and mcse > max_rel_se * abs(llc):
        found.append(
            _issue(
                MC_ERROR,
                f"λ̂ = {llc:.4g} ± {mcse:.2g} (Monte-Carlo standard error, "
                f"{mcse / abs(llc):.0%}): too noisy to trust",
                f"raise num_draws (or num_chains, or batch_size){small_step}",
            )
        )
    # λ̂ multiplies a loss difference by nβ: below the loss's floating-point spacing at
    # L_n(w*) it is rounding noise
    resolution = spacing
    if resolution > max_rel_se * abs(llc):
        found.append(
            _issue(
                FLOAT_RESOLUTION,
                f"λ̂ = {llc:.3g} is within {resolution / abs(llc) if llc else math.inf:.0f}× "
                f"the loss's rounding (nβ·spacing(L_n(w*)) = {resolution:.2g}): the loss "
                "differences are below its precision",
                "use float64 (jax.config.update('jax_enable_x64', True) and float64 params) or "
                "a smaller localization",
            )
        )

    return Diagnostics(
        rhat=rhat,
        ess_bulk=ess_bulk,
        ess_tail=ess_tail,
        mala_accept=mala,
        accept_rate=accept,
        frac_below_init=frac_below,
        llc=llc,
        llc_halves=(llc1, llc2),
        trend=float(trend),
        trend_z=float(tz),
        trend_dof=float(dof),
        num_chains=num_chains,
        divergence_steps=steps,
        stiffness=stiffness,
        bias_bound=bias_bound,
        issues=tuple(found),
        lowest_excess=lowest,
        llc_se=mcse,
    )


def _lowest_excess(result: Any, healthy: np.ndarray) -> float:
    values = getattr(result, "lowest_excess", None)
    if values is None:
        return math.nan
    values = np.asarray(values, dtype=np.float64)[healthy]
    values = values[np.isfinite(values)]
    return float(values.min()) if values.size else math.nan
