"""Developmental stages from an LLC curve over training checkpoints (and, optionally, the loss).

Stages are the stretches between critical points of the LLC curve λ̂(w_t): peaks, troughs and
plateaus (Hoogland et al., "Loss landscape degeneracy and stagewise development in
transformers"). ``detect_stages`` finds them in a noisy curve y_t at steps s_t as follows.

1. **Axis.** x = log10(step) when the positive steps span more than two decades
   (``scale="auto"``; checkpoints are usually log-spaced), a step 0 placed as matplotlib's
   ``symlog`` places it (linear below the first positive step s₁, [0, s₁] one decade wide);
   otherwise x = step. X = x_max − x_min.
2. **Noise.** The errors e_t of the λ̂_t have Cov(e_s, e_t) = σ_s σ_t ρ^|s−t| (AR(1) in
   checkpoint order, ρ = ``correlation``: one key for every checkpoint, common random numbers,
   correlates neighbours). With ``llc_std`` σ_t is the stated value; without it σ is estimated
   from the scatter about a smooth curve (``noise_scale``, corrected for ρ, kernel width h/2:
   corners inflate residuals) and every threshold becomes the Student-t(ν) quantile with the
   tail probability of the normal ``significance`` (ν the Satterthwaite degrees of freedom).
   That needs at least ``MIN_POINTS_ESTIMATE`` = 12 checkpoints (below, ν ≲ 6 and the 4σ
   threshold becomes ≳ 10σ); with ``llc_std`` at least ``MIN_POINTS`` = 3. With fewer the
   result is ``status="insufficient"`` and a ``StagesWarning`` names the number needed.
3. **Smoothing.** Local-linear regression with a Gaussian kernel of width h = ``smoothing``·X
   (widened where checkpoints are sparse to half the distance of the second-nearest one, so
   every local line rests on three points and farther ones cannot pull it off them) and
   weights 1/σ_t². It is linear, ŷ = S·y, so Cov(ŷ) = S Σ Sᵀ exactly, correlation included.
   R = max ŷ − min ŷ. A positive loss is smoothed (and segmented) as log(loss): never < 0.
4. **Boundaries.** (a) Every local maximum (minimum) of ŷ whose topographic prominence exceeds
   ``significance``·sd(ŷ_peak − ŷ_base) (``scipy.signal.find_peaks``), the most significant
   first, kept ``min_stage``·X apart and from the ends (``min_stage`` → 0 when the
   checkpoints are sparser than that: (N − 1)·``min_stage`` ≤ 1). (b) Knees, by binary
   segmentation: a stretch is split at the knee of the best continuous two-piece line when
   that lowers the generalised χ² = (y − fit)ᵀ Σ⁻¹ (y − fit) (Prais–Winsten whitening) by more
   than ``significance``²; on stretches with at most 100 candidates the best pair of knees
   (rise–flat–rise needs both at once) wins when it beats the line by 2f·``significance``² and
   the single knee by f·``significance``², f = 0.675 (``PAIR_FRACTION``: knots are no stage
   until step 5 tests their pieces; without the pair, a single knee splits such a step first
   and ``min_stage`` then holds the next knee off the true corner). (c) The stage
   model is the continuous piecewise-linear GLS fit with knots at the boundaries; each knot
   moves to the checkpoint within max(2h, the largest spacing) that minimises its χ²
   (coordinate descent). (d) Corners between checkpoints: each knot then moves, by coordinate
   descent of χ², to its best position within a checkpoint interval of its checkpoint (a grid
   of ~16 per half interval), keeping two checkpoints in every piece, and the checkpoint
   nearest to it becomes its boundary (a corner pinned to a checkpoint bends the neighbouring
   piece onto the next stage: a plateau's end one checkpoint late reads as rising). (e)
   Corners over the whole curve: the best pair of new knots in one piece (at checkpoints, by
   the exact update of χ² for added hinge functions), with every corner then placed as in
   (d), is added while it lowers χ² by 2f·``significance``² and beats the best single new
   corner, placed the same way, by f·``significance``²; otherwise that single corner, while it
   lowers χ² by ``significance``² (the stretch-wise search of (b) holds the corners of its
   ends at checkpoints, which costs it the third corner of rise–plateau–rise–peak).
5. **Stages.** With c_k the stage model at corner k (the weighted least-squares fit with those
   corners, which follows the points; the GLS χ² only places them) and se(c_{k+1} − c_k) from its
   sandwich covariance under Σ, a piece is "flat" when |c_{k+1} − c_k| ≤ ``significance``·se
   + min(``flat``·R·Δx/X, ``significance``·se) (a slow drift of at most ``flat`` times the
   mean slope is tolerated, never more than the significance threshold again), otherwise
   "rising" or "falling". A rising (falling) piece between two interior corners that can
   move, each within a checkpoint interval of its checkpoint, to a placement where it passes
   that test with a χ² at most ``FLAT_ALLOWANCE`` = 1 above the fit's takes that placement
   and is flat: a corner's position is known to about that (Δχ² = 1), and the least-squares
   first corner of a two-checkpoint plateau often lies inside the rise before it, so that the
   piece holds part of that rise. A "flat" piece between a rise and a fall that spans one
   checkpoint interval, or less than ``min_stage``·X, is the apex of a peak (trough) sampled
   on both sides, not a plateau: it takes the kind of its change's sign.
   Neighbouring pieces of the same kind are one stage; the stage model keeps every knot, so it
   follows the points. A stage's boundaries are the checkpoints nearest its corners, except
   where that would give a flat stage a change (between its boundary checkpoints) that the
   flat test rejects, a checkpoint of the neighbouring rise or fall: then it keeps only the
   checkpoints within its corners. Critical points are read off the stage sequence: rising →
   falling is a peak, falling → rising a trough, a flat stage a plateau.
6. **Goodness of fit.** With ``llc_std`` the stage model's χ² is compared with χ²_ν (ν = N −
   knots − corners placed between checkpoints): beyond its 1 − 10⁻³ quantile the boundaries are
   searched again without the ``min_stage`` limit (a fast transition between slow stretches
   needs close knots), kept when they fit or when each extra knot lowers χ² by
   ``significance``²; if the fit is still improbable the stated σ is too small, or the curve
   has structure finer than its checkpoints, or some values are no LLC measurement (λ̂ < 0
   where w is no minimum): with ν ≥ 12 σ is scaled by the misfit's typical size, √(median of
   the squared whitened residuals / 0.455, the median of χ²_1), which a σ understated
   everywhere raises and a few missed checkpoints do not, and steps 3–5 are repeated with
   Student-t(ν) thresholds; a fit still improbable after that (or with ν < 12) gets a
   ``StagesWarning`` naming the checkpoints it misses by more than ``significance``·σ.

With ``loss``, the loss curve goes through steps 2–5 on its own (σ always estimated from its
scatter, so at least 12 checkpoints). Its boundaries (where a loss plateau ends and a sudden
drop begins, where the drop ends, loss spikes) become boundaries too, unless an LLC boundary
lies within ``min_stage``·X; a stage then has the kind of the LLC stage holding it.

Measured in ``benchmarks/stages.py`` (results in ``benchmarks/results/stages-cpu.md``): false
stages on pure noise with and without correlation, the recovery of rise–plateau–rise–fall
curves at 6–100 checkpoints, and plateaus read into a rise that only steepens.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd
from scipy.signal import find_peaks
from scipy.stats import chi2 as chi2_dist
from scipy.stats import norm as normal
from scipy.stats import t as student_t

__all__ = [
    "Stages",
    "StagesWarning",
    "adjacent_correlation",
    "axis_scale",
    "detect_stages",
    "noise_scale",
    "step_axis",
]

MIN_POINTS = 3  # with llc_std: a knee (two stages) needs three checkpoints
# without llc_std σ comes from the scatter; below 12 checkpoints its ν ≲ 6 residual degrees of
# freedom make the 4σ threshold a Student-t quantile ≳ 10σ: nothing short of a cliff is found
MIN_POINTS_ESTIMATE = 12
DEFAULT_CORRELATION = 0.0
GOF_TAIL = 1e-3  # a stated llc_std is scaled up when the stage model's χ² is this improbable
SCALES = ("auto", "log", "linear")
POINT_KINDS = ("peak", "trough", "plateau")
STAGE_KINDS = ("rising", "falling", "flat", "insufficient")


class StagesWarning(UserWarning):
    """detect_stages could not use all of its input (too few checkpoints)."""


_MAD_TO_STD = 1.482602218505602  # 1/Φ⁻¹(3/4): the MAD of a normal sample → its std


@dataclass(frozen=True, eq=False)  # eq=False: fields are arrays and tables
class Stages:
    """Stages of an LLC curve over training, as found by ``detect_stages``.

    Attributes:
      boundaries: steps where stages begin and end, increasing, first and last checkpoint
        included: ``len(boundaries) − 1`` stages.
      critical_points: a DataFrame, one row per critical point, by step: ``step``, ``kind``
        ("peak", "trough" or "plateau"), ``value`` (the curve's stage model there; a
        plateau's mean level), ``curve`` ("llc" or "loss"), ``end_step`` (a plateau's last
        step; ``step`` otherwise) and ``boundary`` (False for a loss point within
        ``min_stage`` of an LLC boundary, which stands for it). Empty when the LLC is one flat
        stage and there is no loss.
      stages: a DataFrame, one row per stage: ``stage`` (0, 1, ...), ``start_step``,
        ``end_step``, ``kind`` ("rising", "falling" or "flat"), ``llc_start``, ``llc_end``,
        ``llc_change`` (the LLC's stage model, the continuous piecewise-linear fit through its
        boundaries), ``llc_change_se`` (its standard error under the noise model: a "flat"
        stage has |llc_change| ≤ ``significance``·``llc_change_se``, a rising/falling one
        more) and, with a loss, ``loss_start``, ``loss_end``, ``loss_change`` (the loss's
        stage model).
      smoothed: the kernel-smoothed LLC ŷ at every checkpoint.
      smoothed_std: its standard error at every checkpoint.
      smoothed_loss: the smoothed loss (None without one).
      noise: σ used for each LLC value.
      scale: "log" or "linear".
      bandwidth: the kernel width h in units of the x axis (decades on a log scale).
      model: the LLC's stage model at every checkpoint (residuals y − model are the check
        that it follows the points: Σ((y − model)/σ)² ≈ N − number of boundaries).
      correlation: the ρ of the noise model.
      status: "ok", or "insufficient" when there were too few checkpoints (fewer than
        ``needed``) to tell stages from noise: one stage of kind "insufficient", NaN curves.
      needed: the number of checkpoints it takes to tell stages from noise.
      num_stages: ``len(boundaries) − 1``.
    """

    boundaries: np.ndarray
    critical_points: pd.DataFrame
    stages: pd.DataFrame
    smoothed: np.ndarray
    smoothed_std: np.ndarray
    smoothed_loss: np.ndarray | None
    noise: np.ndarray
    scale: str
    bandwidth: float
    model: np.ndarray
    correlation: float
    status: Literal["ok", "insufficient"] = "ok"
    needed: int = MIN_POINTS

    @property
    def num_stages(self) -> int:
        """The number of stages, ``len(boundaries) − 1``."""
        return len(self.boundaries) - 1


# ---------------------------------------------------------------------------------------------
# pure numerical core


def step_axis(steps: np.ndarray, scale: Literal["log", "linear"]) -> np.ndarray:
    """x of each checkpoint: the step ("linear"), or log10 of it ("log") through matplotlib's
    ``symlog`` with linthresh = the first positive step s₁ and linscale = 1 (x = s/s₁ below s₁,
    1 + log10(s/s₁) above), so a step 0 sits as far left of s₁ as 1 is of 10.

    Args:
      steps: the training step of each checkpoint, increasing.
      scale: "log" or "linear".

    Returns:
      x of each checkpoint, as floats.
    """
    steps = np.asarray(steps, dtype=float)
    if scale == "linear":
        return steps
    first = steps[steps > 0][0]
    return np.where(steps >= first, 1.0 + np.log10(np.maximum(steps, first) / first), steps / first)


def axis_scale(steps: np.ndarray, scale: str = "auto") -> str:
    """The x axis a curve over ``steps`` is read (and drawn) on: ``scale`` itself unless
    "auto"; then "log" when the positive steps span more than two decades, else "linear".

    Args:
      steps: the training step of each checkpoint, increasing.
      scale: "auto", "log" or "linear".

    Returns:
      "log" or "linear".
    """
    return _resolve_scale(np.asarray(steps, dtype=float), scale)


def _resolve_scale(steps: np.ndarray, scale: str) -> str:
    """Resolve scale="auto": "log" when the positive steps span more than two decades."""
    if scale != "auto":
        return scale
    positive = steps[steps > 0]
    if steps[0] < 0 or positive.size < 2:
        return "linear"
    return "log" if positive[-1] / positive[0] > 100.0 else "linear"


class _Smooth(NamedTuple):
    """Local-linear Gaussian-kernel smoother: ŷ = matrix @ y, its covariance and std."""

    x: np.ndarray
    matrix: np.ndarray
    value: np.ndarray
    cov: np.ndarray
    std: np.ndarray


def _correlation(n: int, rho: float) -> np.ndarray:
    """R_ij = ρ^|i−j|: the AR(1) correlation of the errors of n checkpoints in order."""
    i = np.arange(n)
    return rho ** np.abs(i[:, None] - i[None, :]) if rho > 0 else np.eye(n)


def _whitener(sigma: np.ndarray, rho: float) -> np.ndarray:
    """W with W Σ Wᵀ = I for Σ = D R D (D = diag σ, R the AR(1) correlation): the
    Prais–Winsten transform z_0 = e_0/σ_0, z_t = (e_t/σ_t − ρ e_{t−1}/σ_{t−1})/√(1 − ρ²)."""
    n = sigma.size
    w = np.diag(1.0 / sigma)
    if rho > 0 and n > 1:
        c = 1.0 / math.sqrt(1.0 - rho**2)
        idx = np.arange(1, n)
        w[idx, idx] = c / sigma[1:]
        w[idx, idx - 1] = -rho * c / sigma[:-1]
    return w


def _smooth(
    x: np.ndarray, y: np.ndarray, sigma: np.ndarray, bandwidth: float, rho: float = 0.0
) -> _Smooth:
    d = x[None, :] - x[:, None]  # d[t, s] = x_s − x_t: row t is the fit centred at x_t
    # where checkpoints are sparse (a step 0 on a log axis, few checkpoints) the kernel widens
    # to half the distance of the second nearest neighbour (weight e⁻² = 0.14 there), so that
    # every local line rests on three points while farther ones (≤ e^−4.5 = 0.01 at 1.5× that
    # distance) cannot pull it off them
    near = np.sort(np.abs(d), axis=1)[:, min(2, x.size - 1)]
    width = np.maximum(bandwidth, near / 2.0)[:, None]
    w = np.exp(-0.5 * (d / width) ** 2) / sigma[None, :] ** 2
    s0, s1, s2 = w.sum(1), (w * d).sum(1), (w * d * d).sum(1)
    # intercept of the weighted least-squares line through (x_s − x_t, y_s), in closed form
    matrix = w * (s2[:, None] - s1[:, None] * d) / (s0 * s2 - s1**2)[:, None]
    cov = matrix @ (sigma[:, None] * _correlation(x.size, rho) * sigma[None, :]) @ matrix.T
    return _Smooth(x, matrix, matrix @ y, cov, np.sqrt(np.maximum(np.diag(cov), 0.0)))


def _noise(x: np.ndarray, y: np.ndarray, bandwidth: float, rho: float = 0.0) -> tuple[float, float]:
    corr = _correlation(y.size, rho)
    d2 = y[:-2] - 2.0 * y[1:-1] + y[2:]
    # Var(e_{t−1} − 2e_t + e_{t+1}) = σ²(6 − 8ρ + 2ρ²) for AR(1) errors of correlation ρ
    mad = _MAD_TO_STD * float(np.median(np.abs(d2 - np.median(d2))))
    mad /= math.sqrt(6.0 - 8.0 * rho + 2.0 * rho**2)
    s = _smooth(x, y, np.ones_like(y), bandwidth).matrix
    resid = np.eye(y.size) - s
    m = resid @ corr @ resid.T  # E[(y − Sy)(y − Sy)ᵀ] = σ² M for a locally linear curve
    trace = float(np.trace(m))
    # Satterthwaite: RSS/σ² ≈ χ²_ν/ν·tr M with ν = (tr M)²/tr M²
    dof = trace**2 / float(np.sum(m * m.T)) if trace > 0 else 0.0
    rss = float(np.sum((y - s @ y) ** 2))
    return (max(mad, math.sqrt(rss / trace)) if trace > 0 else mad), max(dof, 1.0)


def adjacent_correlation(curves: np.ndarray) -> float:
    """ρ̂, the correlation of the errors of adjacent checkpoints, from R ≥ 3 independent-key
    repeats of one curve (``curves``: R × T, e.g. ``llc_trajectory``'s ``llc_mean`` for R keys):
    z_rt = (λ̂_rt − mean_r λ̂_rt)/sd_r, ρ̂ = R/(R − 1)·mean over r, t of z_rt z_r,t+1 (the
    deviations from the mean over keys have correlation −1/(R − 1) across keys; R/(R − 1)
    undoes the shrinkage of the within-key products). Pass it as ``detect_stages(correlation=)``
    (clipped to [0, 0.99]).

    Args:
      curves: R × T, R ≥ 3 repeats of a curve over T ≥ 2 checkpoints.

    Returns:
      ρ̂ (not clipped).

    Raises:
      ValueError: ``curves`` is not R × T with R ≥ 3 and T ≥ 2.
    """
    c = np.asarray(curves, dtype=float)
    if c.ndim != 2 or c.shape[0] < 3 or c.shape[1] < 2:
        raise ValueError(f"curves must be R × T with R ≥ 3 repeats and T ≥ 2; got {c.shape}")
    r = c.shape[0]
    dev = c - c.mean(axis=0)
    sd = dev.std(axis=0, ddof=1)
    z = dev[:, sd > 0] / sd[sd > 0]
    return float(np.mean(z[:, :-1] * z[:, 1:]) * r / (r - 1))


def noise_scale(x: np.ndarray, y: np.ndarray, bandwidth: float, correlation: float = 0.0) -> float:
    """σ of the scatter of y about a smooth curve: the larger of two estimates, so that neither's
    sampling error makes noise look like signal (corners and outliers only raise it).

    - 1.4826·MAD of the second differences / √(6 − 8ρ + 2ρ²) (Var(y_{t−1} − 2y_t + y_{t+1})
      = σ²(6 − 8ρ + 2ρ²) for errors of adjacent correlation ρ (AR(1)) on a locally linear
      curve; the median ignores a few corners and outliers);
    - the residual variance of the local-linear fit ŷ = S·y of width ``bandwidth``: RSS/tr M
      with M = (I − S) R (I − S)ᵀ, R_ij = ρ^|i−j| (E[RSS] = σ² tr M; for white noise
      tr M = N − 2·tr S + tr SᵀS), about twice as precise as the MAD.

    Args:
      x: the x axis of each point (``step_axis``).
      y: the curve's values.
      bandwidth: the width of the local-linear fit, in units of x.
      correlation: ρ, the correlation of adjacent errors.

    Returns:
      σ, the larger of the two estimates.
    """
    return _noise(
        np.asarray(x, dtype=float), np.asarray(y, dtype=float), bandwidth, float(correlation)
    )[0]


class _Noise(NamedTuple):
    """The error model of one curve: σ_t per checkpoint and the adjacent correlation ρ
    (Cov(e_s, e_t) = σ_s σ_t ρ^|s−t|)."""

    sigma: np.ndarray
    rho: float

    def whitener(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """W with W Σ Wᵀ = I for the checkpoints lo..hi (the marginal of an AR(1) process on
        consecutive indices is AR(1))."""
        hi = self.sigma.size - 1 if hi is None else hi
        return _whitener(self.sigma[lo : hi + 1], self.rho)


def _whiten(white: np.ndarray, a: np.ndarray) -> np.ndarray:
    """W a for the lower-bidiagonal W of ``_whitener`` (two diagonals, not a dense product:
    the knot searches whiten thousands of designs)."""
    out = np.diagonal(white)[:, None] * a
    out[..., 1:, :] += np.diagonal(white, -1)[:, None] * a[..., :-1, :]
    return out


def _gls(design: np.ndarray, y: np.ndarray, white: np.ndarray):
    """Generalised least squares: coefficients, their covariance (XᵀΣ⁻¹X)⁻¹ and χ² =
    (y − Xc)ᵀ Σ⁻¹ (y − Xc), with W Σ Wᵀ = I. ``design`` may carry leading batch axes."""
    xw, yw = _whiten(white, design), white @ y
    gram = np.swapaxes(xw, -1, -2) @ xw
    cov = np.linalg.inv(gram)
    coef = (cov @ (np.swapaxes(xw, -1, -2) @ yw[:, None]))[..., 0]
    chi2 = np.sum((yw - (xw @ coef[..., None])[..., 0]) ** 2, axis=-1)
    return coef, cov, chi2


def _knee_chi2(x, y, noise: _Noise, lo, hi, corners):
    """χ² (generalised RSS) of the continuous two-piece line through points lo..hi with its knee
    at each x position in ``corners``, and of the single line."""
    xs, ys = x[lo : hi + 1], y[lo : hi + 1]
    white = noise.whitener(lo, hi)
    c = np.asarray(corners, dtype=float)[:, None]
    design = np.stack(
        [np.ones((c.size, xs.size)), np.minimum(xs - c, 0.0), np.maximum(xs - c, 0.0)], -1
    )
    chi2 = _gls(design, ys, white)[2]
    line = np.stack([np.ones_like(xs), xs - xs.mean()], -1)
    return chi2, float(_gls(line, ys, white)[2])


def _pair_chi2(x, y, noise: _Noise, lo, hi, pairs):
    """χ² of the continuous three-piece line through points lo..hi with knees at each pair of
    x positions (rows of ``pairs``)."""
    xs, ys = x[lo : hi + 1], y[lo : hi + 1]
    pairs = np.asarray(pairs, dtype=float)
    a, b = pairs[:, :1], pairs[:, 1:]
    design = np.stack(
        [
            np.ones((a.size, xs.size)),
            np.minimum(xs - a, 0.0),
            np.clip(xs - a, 0.0, b - a),
            np.maximum(xs - b, 0.0),
        ],
        -1,
    )
    return _gls(design, ys, noise.whitener(lo, hi))[2]


REFINE_GRID = 16  # candidate corner positions per half checkpoint interval


def _near(x, i):
    """Corner positions within a checkpoint interval of x[i], on a grid of about
    ``REFINE_GRID`` per half interval (no midpoint on it: the checkpoint nearest to a corner is
    never a tie)."""
    f = np.arange(2 - 2 * REFINE_GRID, 2 * REFINE_GRID - 1) / (2.0 * REFINE_GRID - 1.0)
    return x[i] + np.where(f < 0, f * (x[i] - x[i - 1]), f * (x[i + 1] - x[i]))


def _two_per_piece(x, knots_x):
    """Whether every piece between consecutive knots (rows of ``knots_x``) holds two
    checkpoints, its ends included: one point would leave a piece's slope to the noise, and the
    knots would then zigzag through the points."""
    tol = _tolerance(x)
    inside = np.searchsorted(x, knots_x[:, 1:] + tol, "right") - np.searchsorted(
        x, knots_x[:, :-1] - tol
    )
    return np.all(inside >= 2, axis=1)


def _tolerance(x):
    """Positions on the x axis closer than this are one."""
    return 1e-12 * float(x[-1] - x[0])


PAIR_SEARCH_MAX = 100  # stretches with at most this many candidate knees also try knee pairs
# A pair of knees is admitted at this fraction of the single-knee threshold: its knots are no
# stage by themselves (a piece between them is a plateau only if its change passes the
# significance·se test of step 5, and same-kind neighbours merge), and a two-checkpoint
# plateau needs it. At significance 4 the weaker knee must lower χ² by 10.8, the 1%-false-rate
# threshold of the likelihood-ratio test of a third corner against two on a 12-checkpoint
# curve (benchmarks/stages.py --oracle 12). Measured there (400 draws, ρ = 0): rise–plateau–
# rise–fall right at N = 12 in 86–89% of draws with corners at checkpoints (59% at fraction 1),
# 96% with corners between them and step 5's placement; a plateau read into a rise that only
# steepens in 2.2, 0.2, 0.5% at N = 6, 12, 30 (2.75, 0, 0.75% at fraction 1 with corners at
# checkpoints); pure noise: no more false stages.
PAIR_FRACTION = 0.675


def _knees(x, y, noise, lo, hi, min_len, threshold):
    """Binary segmentation of lo..hi at significant knees (indices, increasing): the best knee
    when it lowers χ² by more than ``threshold``, and (short stretches) the best pair of knees
    instead when it lowers χ² by more than 2·f·``threshold`` and its weaker knee, given the
    other, by f·``threshold`` (f = ``PAIR_FRACTION``; a step, rise–flat–rise, needs both knees
    at once: neither alone fits it)."""
    inner = np.arange(lo + 1, hi)
    inner = inner[(x[inner] - x[lo] >= min_len) & (x[hi] - x[inner] >= min_len)]
    if inner.size == 0:
        return []
    chi2, line_chi2 = _knee_chi2(x, y, noise, lo, hi, x[inner])
    best = int(np.argmin(chi2))
    cuts, fit = [], line_chi2
    if line_chi2 - chi2[best] > threshold:
        cuts, fit = [int(inner[best])], float(chi2[best])
    if 2 <= inner.size <= PAIR_SEARCH_MAX:
        pairs = np.array(
            [(i, j) for i in inner for j in inner if j > i and x[j] - x[i] >= min_len], dtype=int
        )
        if pairs.size:
            pair_chi2 = _pair_chi2(x, y, noise, lo, hi, x[pairs])
            k = int(np.argmin(pair_chi2))
            # the pair wins when it beats the line by 2·f·threshold and the best single knee
            # (if any) by f·threshold: each of its knees counts given the other
            pair = PAIR_FRACTION * threshold
            if line_chi2 - pair_chi2[k] > 2.0 * pair and fit - pair_chi2[k] > pair:
                cuts = [int(pairs[k, 0]), int(pairs[k, 1])]
    if not cuts:
        return []
    ends = [lo, *cuts, hi]
    out = []
    for a, b in itertools.pairwise(ends):
        out += _knees(x, y, noise, a, b, min_len, threshold)
        if b != hi:
            out.append(b)
    return out


def _basis(x: np.ndarray, knots_x: np.ndarray) -> np.ndarray:
    """Hat functions with knots at ``knots_x`` (increasing; leading axes batch), evaluated at x
    (constant beyond the end knots): the coefficients are the values at the knots. With t_j(x)
    the progress through interval j, clipped to [0, 1], the interpolant is
    c_0 + Σ_j (c_{j+1} − c_j) t_j, so B = [1 − t_0, t_0 − t_1, …, t_{K−2}]."""
    kx = np.asarray(knots_x, dtype=float)[..., None, :]
    t = np.clip((np.asarray(x, dtype=float)[:, None] - kx[..., :-1]) / np.diff(kx, axis=-1), 0, 1)
    ones = np.ones((*t.shape[:-1], 1))
    return np.concatenate([ones, t], -1) - np.concatenate([t, 0.0 * ones], -1)


def _descend(x, y, noise, bounds, min_len, window):
    """Coordinate descent of the spline's χ² over the interior knots: each moves to its best
    checkpoint within ``window`` that keeps stages at least ``min_len`` long, until none moves."""
    bounds = list(bounds)
    white = noise.whitener()
    for _ in range(10 * len(bounds)):
        moved = False
        for k in range(1, len(bounds) - 1):
            lo, hi, i = x[bounds[k - 1]] + min_len, x[bounds[k + 1]] - min_len, x[bounds[k]]
            options = np.flatnonzero((x >= lo) & (x <= hi) & (np.abs(x - i) <= window))
            options = options[(options > bounds[k - 1]) & (options < bounds[k + 1])]
            if options.size < 2:
                continue
            candidates = np.repeat(x[bounds][None], options.size, 0)
            candidates[:, k] = x[options]
            best = int(options[int(np.argmin(_gls(_basis(x, candidates), y, white)[2]))])
            moved |= best != bounds[k]
            bounds[k] = best
        if not moved:
            break
    return bounds


def _refine(x, y, noise: _Noise, bounds) -> tuple[list[int], np.ndarray]:
    """Corner positions between checkpoints: each interior knot of the GLS spline moves, by
    coordinate descent of χ², to its best position within a checkpoint interval of its
    checkpoint (``_near``), and the checkpoint nearest to that position becomes its own. A
    corner that falls between checkpoints, pinned to one, bends the neighbouring piece onto
    the next stage (a plateau's end placed one checkpoint late reads as rising). Returns the
    checkpoints nearest the corners and the corners."""
    bounds, kx = list(bounds), x[bounds].astype(float)
    white = noise.whitener()
    for _ in range(4 * len(bounds)):
        moved = False
        for k in range(1, len(bounds) - 1):
            grid = _near(x, bounds[k])
            candidates = np.repeat(kx[None], grid.size, 0)
            candidates[:, k] = grid
            keep = _two_per_piece(x, candidates)
            if keep.sum() < 2:
                continue
            old, grid, candidates = kx[k], grid[keep], candidates[keep]
            kx[k] = float(grid[int(np.argmin(_gls(_basis(x, candidates), y, white)[2]))])
            nearest = int(np.argmin(np.abs(x - kx[k])))
            if bounds[k - 1] < nearest < bounds[k + 1]:
                bounds[k] = nearest
            moved |= kx[k] != old
        if not moved:
            break
    return bounds, kx


def _added_chi2(x, y, white, knots_x, free, pairs):
    """χ² of the GLS spline with knots ``knots_x`` plus one knot at each checkpoint of
    ``free``, and plus the two of each row of ``pairs`` (checkpoint indices in ``free``). A
    knot at c adds the hinge max(x − c, 0) to the spline space, so χ² = |r|² − uᵀG⁻¹u, with r
    the whitened residual of the current fit, H̃ the whitened hinges projected off the current
    basis, G = H̃ᵀH̃ and u = H̃ᵀr: one Gram matrix for every pair instead of a fit each."""
    q = np.linalg.qr(_whiten(white, _basis(x, knots_x)))[0]
    r = white @ y - q @ (q.T @ (white @ y))
    h = _whiten(white, np.maximum(x[:, None] - x[free][None, :], 0.0))
    h -= q @ (q.T @ h)
    g, u = h.T @ h, h.T @ r
    d = np.maximum(np.diagonal(g), 1e-300)
    i, j = np.searchsorted(free, pairs[:, 0]), np.searchsorted(free, pairs[:, 1])
    det = np.maximum(d[i] * d[j] - g[i, j] ** 2, 1e-300)
    two = r @ r - (u[i] ** 2 * d[j] - 2 * u[i] * u[j] * g[i, j] + u[j] ** 2 * d[i]) / det
    return r @ r - u**2 / d, two


def _add_corners(x, y, noise, bounds, knots_x, min_len, threshold):
    """Corners added over the whole curve, every corner placed between checkpoints
    (``_refine``): the best pair of new corners in one piece while it lowers χ² by more than
    2f·``threshold`` and beats the best single new corner by f·``threshold`` (f =
    ``PAIR_FRACTION``), else that single corner while it lowers χ² by more than ``threshold``
    (binary segmentation's rule, with its corner no longer held at a checkpoint)."""
    white = noise.whitener()
    tol = _tolerance(x)
    bounds, knots_x = list(bounds), np.asarray(knots_x, dtype=float)
    pair = PAIR_FRACTION * threshold

    def chi2(kx):
        return _gls(_basis(x, kx), y, white)[2]

    def refined(new):
        b, kx = _refine(x, y, noise, sorted([*bounds, *(int(i) for i in new)]))
        return float(chi2(kx)), b, kx

    def fits(kx):  # two checkpoints in every piece, and min_len
        return _two_per_piece(x, kx) & np.all(np.diff(kx, axis=1) >= min_len - tol, 1)

    for _ in range(x.size):
        current = float(chi2(knots_x))
        free = np.setdiff1d(np.arange(1, x.size - 1), bounds)
        # both corners of a pair in one piece (rise–flat–rise), as in ``_knees``
        gap = np.searchsorted(bounds, free)
        a, b = np.triu_indices(free.size, 1)
        sizes = np.bincount(gap, minlength=len(bounds) + 1)
        same = (gap[a] == gap[b]) & (sizes[gap[a]] <= PAIR_SEARCH_MAX)
        pairs = np.stack([free[a[same]], free[b[same]]], 1).reshape(-1, 2)
        singles = np.sort(np.concatenate([np.tile(knots_x, (free.size, 1)), x[free, None]], 1))
        doubles = np.sort(np.concatenate([np.tile(knots_x, (len(pairs), 1)), x[pairs]], 1))
        ok1, ok2 = fits(singles), fits(doubles)
        if not ok1.any():  # every pair holds a single that fits
            break
        one, two = _added_chi2(x, y, white, knots_x, free, pairs)
        # the best corner and the best pair at checkpoints, then placed between them
        single = refined([free[int(np.argmin(np.where(ok1, one, np.inf)))]])
        if ok2.any():
            double = refined(list(pairs[int(np.argmin(np.where(ok2, two, np.inf)))]))
            if current - double[0] > 2 * pair and single[0] - double[0] > pair:
                _, bounds, knots_x = double
                continue
        if current - single[0] <= threshold:
            break
        _, bounds, knots_x = single
    return bounds, knots_x


def _changes(knots_x, knots, cov, at):
    """The spline's change between consecutive x positions ``at`` and its standard error."""
    diff = np.diff(_basis(np.asarray(at, dtype=float), knots_x), axis=0)
    return diff @ knots, np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", diff, cov, diff), 0.0))


def _flat_level(se, length, slope_tol, significance):
    """Step 5's threshold: significance·se + min(slope_tol·length, significance·se)."""
    level = significance * se
    return level + np.minimum(slope_tol * length, level)


def _flat(change, se, length, slope_tol, significance):
    """Step 5's test: |change| ≤ ``_flat_level``."""
    return np.abs(change) <= _flat_level(se, length, slope_tol, significance)


def _wls(basis: np.ndarray, y: np.ndarray, noise: _Noise) -> tuple[np.ndarray, np.ndarray]:
    """The stage model's knot values c = (BᵀWB)⁻¹BᵀWy (W = diag 1/σ²) and their sandwich
    covariance (BᵀWB)⁻¹ BᵀWΣWB (BᵀWB)⁻¹ under the correlated errors Σ; leading axes of the
    basis B batch."""
    sigma = noise.sigma
    bw = basis * (1.0 / sigma**2)[:, None]
    bwt = np.swapaxes(bw, -1, -2)
    bread = np.linalg.inv(np.swapaxes(basis, -1, -2) @ bw)
    knots = (bread @ (bwt @ y)[..., None])[..., 0]
    cov_y = sigma[:, None] * _correlation(sigma.size, noise.rho) * sigma[None, :]
    return knots, bread @ (bwt @ cov_y @ bw) @ bread


class _Pieces(NamedTuple):
    """The continuous piecewise-linear fit with knots at the boundaries, and the stage kinds."""

    bounds: list[int]
    knots: np.ndarray  # fitted value at each boundary
    kinds: list[str]
    cov: np.ndarray  # covariance of the knot values
    knots_x: np.ndarray  # the corners on the x axis (``bounds``: checkpoints near them)


def _pieces(x, y, noise, bounds, knots_x, slope_tol, significance, apex_len) -> _Pieces:
    """The stage model: the weighted least-squares linear spline with knots at ``knots_x``
    (corners near the checkpoints ``bounds``; hat-function basis B, so the coefficients are the
    knot values c = (BᵀWB)⁻¹BᵀWy, W = diag 1/σ²), which follows the points; its covariance is
    the sandwich (BᵀWB)⁻¹ BᵀWΣWB (BᵀWB)⁻¹ under the correlated errors Σ. (The GLS fit, used to
    place the knots, is more efficient but under strong correlation may sit off the points by
    an offset the noise model allows.) Stage k is "flat" when |c_{k+1} − c_k| ≤
    significance·se (+ the capped drift tolerance), "rising" or "falling" otherwise."""
    knots, cov = _wls(_basis(x, knots_x), y, noise)
    change, se = _changes(knots_x, knots, cov, knots_x)
    flat = _flat(change, se, np.diff(knots_x), slope_tol, significance)
    kinds = np.where(flat, "flat", np.where(change > 0, "rising", "falling"))
    # a "flat" piece between a rise and a fall that spans one checkpoint interval, or less
    # than the shortest stage (``apex_len``), is the top of a peak (or the bottom of a trough)
    # sampled on both sides: checkpoints straddling a rounded apex differ by little whatever
    # its shape, so they cannot show a plateau there
    # (a run of flat pieces counts as one)
    kinds = list(kinds)
    for _, run in itertools.groupby(range(len(kinds)), key=lambda k: kinds[k]):
        run = list(run)
        a, b = run[0], run[-1] + 1  # the run spans knots a … b
        if (
            kinds[a] == "flat"
            and 0 < a
            and b < len(kinds)
            and {kinds[a - 1], kinds[b]} == {"rising", "falling"}
            and (bounds[b] - bounds[a] == 1 or knots_x[b] - knots_x[a] < apex_len)
        ):
            for k in run:
                kinds[k] = "rising" if knots[b] > knots[a] else "falling"
    return _Pieces(list(bounds), knots, [str(k) for k in kinds], cov, knots_x)


# A piece tests flat if it does so at some placement of its corners that fits as well as the
# best one up to this χ² (each corner within a checkpoint interval of its checkpoint): Δχ² ≤ 1,
# the one-standard-error region of a corner's position.
FLAT_ALLOWANCE = 1.0


def _flatten(x, y, noise, model: _Pieces, slope_tol, significance, apex_len) -> _Pieces:
    """Step 5's placement of a plateau's corners: a rising (falling) piece becomes flat when
    its corners can move, each within a checkpoint interval (``_near``), to a placement where
    it passes the flat test and whose χ² exceeds the best fit's by at most ``FLAT_ALLOWANCE``
    (every piece moved counts against the same allowance). A corner's position is known only
    to about a checkpoint interval, and the least-squares one can put the first corner of a
    two-checkpoint plateau inside the rise before it: the piece then holds part of that rise
    and fails the test by the corner's error alone. Only pieces between two interior corners,
    failing the test by at most twice its threshold, are tried: a curve's first or last piece
    has one corner to move, and trying those too put a plateau into 6.5% of the bent rises at
    6 checkpoints (``benchmarks/stages.py``), where a two-checkpoint end piece of a real rise
    often tests flat at the margin."""
    white = noise.whitener()
    best = float(_gls(_basis(x, model.knots_x), y, white)[2])
    bounds, kx = list(model.bounds), model.knots_x.copy()
    change, se = _changes(model.knots_x, model.knots, model.cov, model.knots_x)
    level = _flat_level(se, np.diff(model.knots_x), slope_tol, significance)
    last = len(bounds) - 1
    changed = False
    for k in range(1, last - 1):
        if model.kinds[k] == "flat" or abs(change[k]) > 2 * level[k]:
            continue
        ends = [_near(x, bounds[j]) for j in (k, k + 1)]
        grid = np.stack(np.meshgrid(*ends, indexing="ij"), -1).reshape(-1, 2)
        cand = np.repeat(kx[None], len(grid), 0)
        cand[:, k : k + 2] = grid
        cand = cand[_two_per_piece(x, cand)]  # two checkpoints per piece: ordered corners
        if cand.size:
            chi2 = _gls(_basis(x, cand), y, white)[2]
            close = chi2 - best <= FLAT_ALLOWANCE
            cand, chi2 = cand[close], chi2[close]
        if not cand.size:
            continue
        # the stage model's own fit and test (``_pieces``) at each placement
        knots, cov = _wls(_basis(x, cand), y, noise)
        diff = knots[:, k + 1] - knots[:, k]
        var = cov[:, k, k] + cov[:, k + 1, k + 1] - 2 * cov[:, k, k + 1]
        length = cand[:, k + 1] - cand[:, k]
        flat = _flat(diff, np.sqrt(np.maximum(var, 0.0)), length, slope_tol, significance)
        if not flat.any():
            continue
        kx = cand[int(np.argmin(np.where(flat, chi2, np.inf)))]
        for j in (k, k + 1):
            nearest = int(np.argmin(np.abs(x - kx[j])))
            if bounds[j - 1] < nearest < bounds[j + 1]:
                bounds[j] = nearest
        changed = True
    if not changed:
        return model
    return _pieces(x, y, noise, bounds, kx, slope_tol, significance, apex_len)


class _Curve(NamedTuple):
    """One curve: its noise, smoothing and its own stages (boundaries as checkpoint indices)."""

    name: str
    sigma: np.ndarray
    fit: _Smooth
    pieces: _Pieces  # the stages (maximal)
    model_pieces: _Pieces  # the stage model: every knot, before merging same-kind neighbours
    transform: str = "none"  # "log": the curve was segmented as log(values)

    def back(self, v: np.ndarray) -> np.ndarray:
        return np.exp(v) if self.transform == "log" else v

    def model(self) -> np.ndarray:
        """The stage model at every checkpoint, on the curve's own scale."""
        own = self.model_pieces
        return self.back(np.interp(self.fit.x, own.knots_x, own.knots))

    def at(self, bounds: list[int]) -> tuple[np.ndarray, list[str], np.ndarray]:
        """This curve's stage model at boundaries that include its own: values, the kind of
        the own stage holding each stretch, and the standard error of each stretch's change
        (on the segmented scale)."""
        own, model = self.pieces, self.model_pieces
        x = self.fit.x
        values = self.back(_basis(x[bounds], model.knots_x) @ model.knots)
        se = _changes(model.knots_x, model.knots, model.cov, x[bounds])[1]
        holder = np.searchsorted(own.bounds, bounds[:-1], side="right") - 1
        return values, [own.kinds[k] for k in holder], se


def _extrema(fit: _Smooth, significance: float) -> list[tuple[float, int]]:
    """(prominence / its standard error, index) of every significant peak and trough of ŷ."""
    v, cov = fit.value, fit.cov
    found = []
    for sign in (1.0, -1.0):
        idx, props = find_peaks(sign * v, prominence=0.0)
        for i, left, right, prom in zip(
            idx, props["left_bases"], props["right_bases"], props["prominences"], strict=True
        ):
            # the prominence is measured from the higher base (for troughs: the lower one)
            base = left if sign * v[left] >= sign * v[right] else right
            var = cov[i, i] + cov[base, base] - 2.0 * cov[i, base]
            z = prom / math.sqrt(max(var, 1e-300))
            if z > significance:
                found.append((z, int(i)))
    return found


def _segment_curve(
    name, x, y, noise: _Noise, bandwidth, significance, flat, min_len, apex_len=0.0
) -> _Curve:
    """Steps 3–5 of the module docstring for one curve; ``apex_len``: the shortest plateau
    between a rise and a fall (the nominal shortest stage, also when ``min_len`` is relaxed)."""
    fit = _smooth(x, y, noise.sigma, bandwidth, noise.rho)
    last = len(x) - 1
    # (a) significant extrema, the most significant first, kept min_len apart and from the ends
    bounds = [0, last]
    for _, i in sorted(_extrema(fit, significance), reverse=True):
        if all(abs(x[i] - x[k]) >= min_len for k in bounds):
            bounds.append(i)
    # (b) knees inside each stretch
    threshold = significance**2
    bounds = [
        *(
            i
            for a, b in itertools.pairwise(sorted(bounds))
            for i in (a, *_knees(x, y, noise, a, b, min_len, threshold))
        ),
        last,
    ]
    # (c) best knots, then the stage model is fixed: every knot stays in it (so that it follows
    # the points); the stages are maximal: neighbours of the same kind are one stage
    spacing = float(np.max(np.diff(x))) if x.size > 1 else 0.0
    bounds = _descend(x, y, noise, bounds, min_len, max(2.0 * bandwidth, spacing))
    slope_tol = flat * float(np.ptp(fit.value)) / float(x[-1] - x[0])
    bounds, knots_x = _refine(x, y, noise, bounds)
    bounds, knots_x = _add_corners(x, y, noise, bounds, knots_x, min_len, threshold)
    model = _pieces(x, y, noise, bounds, knots_x, slope_tol, significance, apex_len)
    model = _flatten(x, y, noise, model, slope_tol, significance, apex_len)
    bounds, knots_x = model.bounds, model.knots_x
    keep = [
        0,
        *(k for k in range(1, len(bounds) - 1) if model.kinds[k - 1] != model.kinds[k]),
        len(bounds) - 1,
    ]
    kinds = [model.kinds[k] for k in keep[:-1]]
    # a stage's boundary is the checkpoint nearest its corner, unless that puts into a flat
    # stage a checkpoint of the neighbouring rise (or fall) and with it a change the flat test
    # rejects: then the flat stage keeps only the checkpoints inside its corners
    stage_bounds = [bounds[k] for k in keep]
    tol = _tolerance(x)
    for m, kind in enumerate(kinds):
        ends = x[stage_bounds[m : m + 2]]
        change, se = _changes(model.knots_x, model.knots, model.cov, ends)
        if kind == "flat" and not _flat(change, se, np.diff(ends), slope_tol, significance)[0]:
            if m > 0:
                stage_bounds[m] = int(np.searchsorted(x, model.knots_x[keep[m]] - tol))
            if m + 1 < len(kinds):
                corner = model.knots_x[keep[m + 1]]
                stage_bounds[m + 1] = int(np.searchsorted(x, corner + tol, side="right")) - 1
    pieces = _Pieces(
        stage_bounds,
        model.knots[keep],
        kinds,
        model.cov[np.ix_(keep, keep)],
        model.knots_x[keep],
    )
    return _Curve(name, noise.sigma, fit, pieces, model)


def _critical_points(pieces: _Pieces) -> list[tuple[int, str, float, int]]:
    """(index, kind, value, end index) read off the stage sequence."""
    b, c, kinds = pieces.bounds, pieces.knots, pieces.kinds
    if len(kinds) == 1:
        return []
    points = []
    for k, kind in enumerate(kinds):
        if kind == "flat":
            points.append((b[k], "plateau", float(c[k] + c[k + 1]) / 2.0, b[k + 1]))
        elif k + 1 < len(kinds) and {kind, kinds[k + 1]} == {"rising", "falling"}:
            top = "peak" if kind == "rising" else "trough"
            points.append((b[k + 1], top, float(c[k + 1]), b[k + 1]))
    return points


def _stage_table(steps, bounds, llc: _Curve, loss: _Curve | None) -> pd.DataFrame:
    values, kinds, se = llc.at(bounds)
    a, b = np.asarray(bounds[:-1]), np.asarray(bounds[1:])
    table = {
        "stage": np.arange(len(a)),
        "start_step": steps[a],
        "end_step": steps[b],
        "kind": pd.Categorical(kinds, categories=STAGE_KINDS),
        "llc_start": values[:-1],
        "llc_end": values[1:],
        "llc_change": np.diff(values),
        "llc_change_se": se,
    }
    if loss is not None:
        values = loss.at(bounds)[0]
        table |= {"loss_start": values[:-1], "loss_end": values[1:], "loss_change": np.diff(values)}
    return pd.DataFrame(table)


class _Rule(NamedTuple):
    """The knobs of one segmentation: kernel width h, significance, flat tolerance, shortest
    stage (all in units of the x axis where lengths)."""

    bandwidth: float
    significance: float
    flat: float
    min_len: float


def _curve(name, x, values, given, rho, rule: _Rule, transform="none", steps=None) -> _Curve:
    """Steps 2–5 of the module docstring for one curve; ``given``: its std, or None;
    ``steps``: the checkpoints' steps (named in warnings; default x).
    ``transform="log"``: a positive curve (a loss) is segmented as log(values), so its smoothed
    curve and stage model stay positive."""
    bandwidth, significance, flat, min_len = rule
    y = np.log(values) if transform == "log" else values
    steps = x if steps is None else steps
    # half the kernel width: a corner inflates the residual variance by ~(Δslope·h)², and
    # stage boundaries are corners
    estimate, dof = _noise(x, y, bandwidth / 2.0, rho)
    floor = 1e-9 * max(float(np.abs(y).max()), 1e-12)
    if given is None:
        # σ estimated from ν residual degrees of freedom: the same tail probability is a
        # Student-t quantile, larger than the normal one for few checkpoints
        sigma = np.full_like(y, max(estimate, floor))
        t_sig = float(student_t.isf(normal.sf(significance), dof))
        curve = _segment_curve(
            name, x, y, _Noise(sigma, rho), bandwidth, t_sig, flat, min_len, min_len
        )
    else:
        # a noise-free curve still needs finite weights 1/σ²: floor σ far below its values
        sigma = np.maximum(np.asarray(given, dtype=float), floor)
        segment = functools.partial(
            _segment_curve, name, x, y, bandwidth=bandwidth, flat=flat, apex_len=min_len
        )
        curve = segment(_Noise(sigma, rho), significance=significance, min_len=min_len)

        # goodness of fit: the stage model's χ² against the stated noise. When it exceeds the
        # 1 − GOF_TAIL quantile of χ²_ν (ν = N − knots), the stated σ is too small, or the
        # curve has structure finer than the checkpoints, or some values are no LLC
        # measurement. Closer knots first; then, with ν ≥ MIN_POINTS_ESTIMATE, σ scaled by the
        # misfit's typical size and the curve segmented again with Student-t(ν) thresholds; a
        # fit still improbable is warned (with fewer ν, inflating σ by an estimate that
        # uncertain would turn any change "flat")
        def misfit(curve):
            """ν, χ², whether χ² is improbable, and the residuals y − (GLS stage model); a
            corner placed between checkpoints is one more fitted parameter."""
            model = curve.model_pieces
            basis = _basis(x, model.knots_x)
            values, _, chi2 = _gls(basis, y, _Noise(sigma, rho).whitener())
            dof = y.size - basis.shape[1] - int(np.sum(model.knots_x != x[model.bounds]))
            improbable = dof >= 1 and chi2_dist.sf(chi2, dof) < GOF_TAIL
            return dof, float(chi2), improbable, y - basis @ values

        dof, chi2, bad, resid = misfit(curve)
        if bad and min_len > 0:
            # first let boundaries come closer than min_stage: a fast transition between two
            # slow stretches needs knots closer together than the default allows
            # (kept when it fits, or when its extra knots each lower χ² by significance²)
            closer = segment(_Noise(sigma, rho), significance=significance, min_len=0.0)
            tried = misfit(closer)
            extra = len(closer.model_pieces.bounds) - len(curve.model_pieces.bounds)
            if not tried[2] or chi2 - tried[1] > significance**2 * max(extra, 1):
                curve, (dof, chi2, bad, resid) = closer, tried
        if bad and dof >= MIN_POINTS_ESTIMATE:
            # σ scaled by the misfit's typical size: the median of the squared whitened
            # residuals over the median of χ²_1. A stated σ too small everywhere raises them
            # all; a few checkpoints the model misses (a transition finer than the checkpoints,
            # values that are no LLC measurement, e.g. λ̂ < 0 away from a minimum) do not, and
            # must not blur the rest (χ²/ν did: a 53× larger σ on a plateau stated at 0.5)
            white = _Noise(sigma, rho).whitener() @ resid
            factor = float(np.median(white**2)) / float(chi2_dist.median(1))
            if factor > 1.0:
                sigma = sigma * math.sqrt(factor)
                t_sig = float(student_t.isf(normal.sf(significance), dof))
                curve = segment(_Noise(sigma, rho), significance=t_sig, min_len=min_len)
                dof, chi2, bad, resid = misfit(curve)
        if bad:
            off = np.flatnonzero(np.abs(resid) > significance * sigma)
            where = (
                f"; it misses {off.size} checkpoint(s) by more than {significance:g}σ (steps "
                + ", ".join(f"{steps[i]:g}" for i in off[:5])
                + (", …" if off.size > 5 else "")
                + ")"
                if off.size
                else ""
            )
            warnings.warn(
                f"detect_stages: the {name} stage model's residuals are "
                f"{math.sqrt(chi2 / dof):.2g}× the stated noise (χ² = {chi2:.3g} on ν = "
                f"{dof}){where}: llc_std underestimates the noise (pass the standard error "
                "actually seen, or correlation), the curve has structure finer than its "
                "checkpoints, or some values are not LLC measurements (checkpoints that are no "
                "local minimum); stages may be spurious",
                StagesWarning,
                stacklevel=4,
            )
    return curve._replace(transform=transform)


# ---------------------------------------------------------------------------------------------
# validation and the public function


def as_curve(name: str, value: Any, steps: np.ndarray | None = None) -> np.ndarray:
    """``value`` as a finite 1-D float array with one entry per checkpoint of ``steps``; the
    errors name the argument, the first bad index and its step."""
    try:
        a = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{name} must be a 1-D sequence of numbers; got {type(value).__name__}"
        ) from err
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per checkpoint); got shape {a.shape}")
    if steps is not None and a.shape[0] != steps.shape[0]:
        raise ValueError(
            f"{name} has {a.shape[0]} values but steps has {steps.shape[0]}: pass one value per "
            "checkpoint, in the order of steps"
        )
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
        i = int(bad[0])
        where = f" (step {steps[i]:g})" if steps is not None else ""
        raise ValueError(
            f"{name}[{i}]{where} is {a[i]}"
            + (f" and {bad.size - 1} more are not finite" if bad.size > 1 else "")
            + ": drop those checkpoints (or re-estimate them) before detecting stages"
        )
    return a


def _fraction(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number; got {type(value).__name__}")
    if not low < float(value) < high:
        raise ValueError(f"{name} must lie in ({low:g}, {high:g}); got {value}")
    return float(value)


def detect_stages(
    steps: Sequence[float] | np.ndarray,
    llc: Sequence[float] | np.ndarray,
    *,
    llc_std: float | Sequence[float] | np.ndarray | None = None,
    loss: Sequence[float] | np.ndarray | None = None,
    correlation: float = DEFAULT_CORRELATION,
    scale: Literal["auto", "log", "linear"] = "auto",
    smoothing: float = 0.05,
    significance: float = 4.0,
    flat: float = 0.1,
    min_stage: float | None = None,
) -> Stages:
    """Split an LLC curve over training checkpoints into developmental stages.

    Stages are the stretches between critical points of the curve: significant peaks and
    troughs, and plateaus (stretches whose change is not significant). The rule, step by step,
    is in the docstring of ``jaxslt.stages``. Pure noise around a constant gives one "flat"
    stage. With too few checkpoints to say anything (fewer than 3 with ``llc_std``, fewer than
    ``MIN_POINTS_ESTIMATE`` = 12 without, where σ must come from the scatter) the result is
    ``Stages.status == "insufficient"`` (one stage of kind "insufficient") and a
    ``StagesWarning`` names the number needed.

    Example, from ``jaxslt.llc_trajectory``'s table::

        table = jaxslt.llc_trajectory(
            loss_fn, checkpoints, data, key=key, step_size=1e-4, num_chains=4
        )
        stages = jaxslt.detect_stages(
            table["step"], table["llc_mean"], llc_std=table["llc_std"] / 4**0.5
        )
        stages.stages  # one row per stage: start_step, end_step, kind, llc_start, llc_end

    Args:
        steps: training step of each checkpoint, strictly increasing.
        llc: λ̂ at each checkpoint; values < 0 at early checkpoints (w* not yet a minimum) are
            normal.
        llc_std: noise scale of each λ̂ (a scalar or one per checkpoint). The standard error of
            ``LLCResult.llc_mean`` is ``llc_std / sqrt(num_chains)``; passing ``llc_std``
            itself is conservative (fewer stages). With at least 12 checkpoints the larger of
            this and the scatter seen in the curve is used, so an underestimate cannot create
            stages.
        loss: loss at each checkpoint; its stage boundaries become boundaries too. A positive
            loss is segmented and smoothed as log(loss), so its smoothed curve stays positive.
        correlation: correlation ρ of the errors of adjacent checkpoints, Cov(e_s, e_t) =
            σ_s σ_t ρ^|s−t| (AR(1) in checkpoint order; default 0, independent errors).
            ``llc_trajectory`` uses one key for every checkpoint (common random numbers),
            which correlates them strongly: on the toy model of superposition ρ = 0.984
            (``examples/tms.py``, 6 keys; lag-k correlations 0.96, 0.88, 0.75, 0.60 at k = 2,
            5, 10, 20). Measure it with ``adjacent_correlation`` from a few independent-key
            repeats of the curve and pass it: with ρ = 0.99 errors and ``correlation=0`` pure
            noise shows false stages in 15% (100 checkpoints) to 90% (300) of curves, with the
            right ρ in none (``benchmarks/results/stages-cpu.md``). Assuming a ρ the errors do
            not have is as wrong (white noise read with ρ = 0.98 loses the stages of short
            curves), hence no non-zero default.
        scale: the x axis the curve is read on: "log" (log10 step; symlog through a step 0),
            "linear", or "auto" (log when the positive steps span more than two decades).
        smoothing: Gaussian kernel width h as a fraction of the x range (default 0.05: 0.2
            decades over 4 decades); widened to the second-nearest checkpoint where sparse.
        significance: the threshold, in standard errors, for a peak's prominence, a stage's
            change, and (squared) a knee's χ² gain (default 4).
        flat: a slow drift counts as flat: a stage is "flat" when its change is within
            ``significance``·se, or exceeds that by at most min(``flat``·R·Δx/X,
            ``significance``·se) (R the range of the smoothed curve, X that of x; default 0.1):
            never by more than twice the significance threshold.
        min_stage: shortest stage, as a fraction of the x range (default 2·``smoothing``:
            structure narrower than the kernel cannot be resolved).

    Returns:
        ``Stages``: boundaries, critical points, the stage table, the stage model and the
        smoothed curve.

    Raises:
        ValueError: mismatched lengths, steps not strictly increasing, NaN/inf values (naming
            the index and step), negative ``llc_std``, bad knobs.
        TypeError: non-numeric input.

    Warns:
        StagesWarning: too few checkpoints to tell stages from noise (``status``
            "insufficient").

    Examples:
        A curve that rises until step 2000 and then stays flat:

        >>> import numpy as np
        >>> import jaxslt
        >>> steps = np.arange(0, 4000, 100)
        >>> llc = np.minimum(steps, 2000) / 200
        >>> stages = jaxslt.detect_stages(steps, llc, llc_std=0.1)
        >>> stages.stages[["start_step", "end_step", "kind"]].values.tolist()
        [[0, 2000, 'rising'], [2000, 3900, 'flat']]
    """
    s = as_curve("steps", steps)
    gaps = np.flatnonzero(np.diff(s) <= 0)
    if gaps.size:
        i = int(gaps[0])
        raise ValueError(
            f"steps must be strictly increasing; steps[{i + 1}] = {s[i + 1]:g} follows "
            f"steps[{i}] = {s[i]:g}: sort the checkpoints and drop duplicates"
        )
    y = as_curve("llc", llc, s)
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}; got {scale!r}")
    if scale == "log" and (s[0] < 0 or s[-1] <= 0):
        raise ValueError(
            f"scale='log' needs steps ≥ 0 with a positive one; got steps from {s[0]:g}: "
            "use scale='linear'"
        )
    smoothing = _fraction("smoothing", smoothing, 0.0, 1.0)
    significance = _fraction("significance", significance, 0.0, math.inf)
    flat = _fraction("flat", flat, 0.0, 1.0)
    if isinstance(correlation, bool) or not isinstance(
        correlation, (int, float, np.floating, np.integer)
    ):
        raise TypeError(f"correlation must be a number; got {type(correlation).__name__}")
    if not 0.0 <= float(correlation) < 1.0:
        raise ValueError(f"correlation must lie in [0, 1); got {correlation}")
    rho = float(correlation)
    min_stage = (
        2.0 * smoothing if min_stage is None else _fraction("min_stage", min_stage, 0.0, 1.0)
    )
    std = None
    if llc_std is not None:
        std = np.broadcast_to(llc_std, y.shape) if np.ndim(llc_std) == 0 else llc_std
        std = as_curve("llc_std", std, s)
        if (std < 0).any():
            i = int(np.flatnonzero(std < 0)[0])
            raise ValueError(f"llc_std[{i}] = {std[i]:g} is negative; a standard deviation is ≥ 0")
    w = None if loss is None else as_curve("loss", loss, s)

    steps_out = np.asarray(steps)
    needed = MIN_POINTS if std is not None else MIN_POINTS_ESTIMATE
    if s.size < needed:
        warnings.warn(
            f"detect_stages: {s.size} checkpoints are too few to tell stages from noise; it "
            f"needs at least {needed}"
            + ("" if std is not None else f" (or at least {MIN_POINTS} with llc_std given)")
            + ". Returning Stages(status='insufficient').",
            StagesWarning,
            stacklevel=2,
        )
        return _insufficient(s, steps_out, y, std, needed, scale, smoothing)

    scale = _resolve_scale(s, scale)
    x = step_axis(s, scale)
    span = float(x[-1] - x[0])
    h, min_len = smoothing * span, min_stage * span
    if (s.size - 1) * min_stage <= 1.0:
        # sparse checkpoints, on average further apart than min_stage: any checkpoint may be
        # a boundary (there are at most 1/min_stage candidates to test)
        min_len = 0.0
    rule = _Rule(h, significance, flat, min_len)
    llc_curve = _curve("llc", x, y, std, rho, rule, steps=s)
    loss_curve = None
    if w is not None:
        transform = "log" if (w > 0).all() else "none"
        if s.size >= MIN_POINTS_ESTIMATE:
            loss_curve = _curve("loss", x, w, None, 0.0, rule, transform, steps=s)
        else:
            warnings.warn(
                f"detect_stages: the loss's noise is estimated from its scatter, which needs at "
                f"least {MIN_POINTS_ESTIMATE} checkpoints ({s.size} given); the loss adds no "
                "boundaries",
                StagesWarning,
                stacklevel=2,
            )
    smoothed_loss = None
    if w is not None:
        if loss_curve is not None:
            smoothed_loss = loss_curve.back(loss_curve.fit.value)
        else:
            log = (w > 0).all()
            fit = _smooth(x, np.log(w) if log else w, np.ones_like(w), h)
            smoothed_loss = np.exp(fit.value) if log else fit.value

    # the loss's boundaries join the LLC's unless one of those is within min_len
    bounds = list(llc_curve.pieces.bounds)
    for i in [] if loss_curve is None else loss_curve.pieces.bounds[1:-1]:
        if all(abs(x[i] - x[k]) >= min_len for k in bounds):
            bounds.append(i)
    bounds.sort()

    rows = []
    for curve in (llc_curve, loss_curve):
        for i, kind, value, end in [] if curve is None else _critical_points(curve.pieces):
            value = float(curve.back(np.asarray(value)))
            rows.append((i, kind, value, curve.name, end, bool({i, end} & set(bounds[1:-1]))))
    return Stages(
        boundaries=steps_out[bounds],
        critical_points=_points_table(steps_out, rows),
        stages=_stage_table(steps_out, bounds, llc_curve, loss_curve),
        smoothed=llc_curve.fit.value,
        smoothed_std=llc_curve.fit.std,
        smoothed_loss=smoothed_loss,
        noise=llc_curve.sigma,
        scale=scale,
        bandwidth=h,
        model=llc_curve.model(),
        correlation=rho,
    )


def _points_table(steps_out: np.ndarray, rows: list) -> pd.DataFrame:
    points = pd.DataFrame(
        {
            "step": steps_out[[r[0] for r in rows]],
            "kind": pd.Categorical([r[1] for r in rows], categories=POINT_KINDS),
            "value": np.array([r[2] for r in rows], dtype=float),
            "curve": [r[3] for r in rows],
            "end_step": steps_out[[r[4] for r in rows]],
            "boundary": np.array([r[5] for r in rows], dtype=bool),
        }
    )
    return points.sort_values(["step", "curve"], ignore_index=True)


def _insufficient(s, steps_out, y, std, needed, scale, smoothing) -> Stages:
    """The explicit "too few checkpoints" result: one stage of kind "insufficient", no critical
    points, no smoothed curve or stage model (NaN)."""
    n = s.size
    scale = _resolve_scale(s, scale) if n >= 2 else "linear"
    span = float(np.ptp(step_axis(s, scale))) if n >= 2 else 0.0
    ends = [0, n - 1] if n else []
    table = pd.DataFrame(
        {
            "stage": np.arange(min(n, 1)),
            "start_step": steps_out[ends[:1]],
            "end_step": steps_out[ends[1:]],
            "kind": pd.Categorical(["insufficient"] * min(n, 1), categories=STAGE_KINDS),
            "llc_start": y[ends[:1]],
            "llc_end": y[ends[1:]],
            "llc_change": y[ends[1:]] - y[ends[:1]],
            "llc_change_se": np.full(min(n, 1), np.nan),
        }
    )
    nan = np.full(n, np.nan)
    return Stages(
        boundaries=steps_out[ends],
        critical_points=_points_table(steps_out, []),
        stages=table,
        smoothed=nan,
        smoothed_std=nan,
        smoothed_loss=None,
        noise=nan if std is None else np.asarray(std, dtype=float),
        scale=scale,
        bandwidth=smoothing * span,
        model=nan,
        correlation=0.0,
        status="insufficient",
        needed=needed,
    )
