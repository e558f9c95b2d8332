"""Diagnostic plots of LLC estimates, as figures and (when asked) files (png, pdf or svg).

One convention for every function: it builds a ``matplotlib.figure.Figure`` directly (never
``pyplot``) and returns it; given ``path=`` it also writes it there (``fig.savefig``). No window
opens, no global state (the backend, pyplot's figure list, rcParams) changes, so the functions
work headless, in threads and in notebooks alike. The file format follows the suffix of
``path``; missing parent folders are created.

- ``plot_trace(result, path)``: minibatch loss per chain (burn-in shaded) above the running LLC
  estimate per chain, with the final mean ± std band.
- ``plot_calibration(table, path)``: a step_size × localization grid (``jaxslt.calibrate``'s
  table): estimate vs ε and MALA acceptance vs ε, one line per γ.
- ``plot_summary(result, path, diagnostics=...)``: a one-page (8.5 × 11 in) report: both trace
  panels, the per-chain estimates, the settings and the diagnostics' warnings.
- ``plot_stages(steps, llc, stages, ...)``: an LLC curve over training checkpoints split into the
  stages of ``jaxslt.stages.detect_stages``.
- ``plot_trajectory(table, ...)``: ``llc_trajectory``'s table: λ̂ ± std against the training
  step (log axis across decades), the loss on a twin axis, failed checkpoints ringed, robust y
  limits.

Conventions are the package's (README, "Conventions"): nβ the weight on the mean loss, γ the
localization, ε the SGLD noise variance. Diverged chains (NaN/inf losses) are drawn dashed with a
dotted line at the divergence and labelled; non-finite values are never plotted or averaged.
"""

from __future__ import annotations

import itertools
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

__all__ = [
    "CALIBRATION_FIGSIZE",
    "DPI",
    "STAGES_FIGSIZE",
    "SUMMARY_FIGSIZE",
    "TRACE_FIGSIZE",
    "TRAJECTORY_FIGSIZE",
    "plot_calibration",
    "plot_stages",
    "plot_summary",
    "plot_trace",
    "plot_trajectory",
    "robust_limits",
]

DPI = 150  # resolution of PNG output (pdf/svg are vector); png pixels = figsize × DPI
TRACE_FIGSIZE = (10.0, 6.5)
CALIBRATION_FIGSIZE = (11.0, 5.0)
SUMMARY_FIGSIZE = (8.5, 11.0)

FORMATS = ("png", "pdf", "svg")
MAX_LABELLED_CHAINS = 8  # above this many chains the legend shows one entry for all of them
MAX_POINTS = 20_000  # longer traces are strided for display (estimates use every draw)
MALA_TARGET = (0.8, 0.95)

_HEALTHY_COLOR = "tab:blue"
_DIVERGED_COLOR = "tab:red"
_TRUTH_COLOR = "black"


# ---------------------------------------------------------------------------------------------
# shared helpers


def _output_path(path: str | Path) -> Path:
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise ValueError(
            f"cannot tell the format of {str(path)!r}: use a .png, .pdf or .svg suffix"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, format=path.suffix.lower().lstrip("."))
    return path


def _top_label(ax: Any, text: str, x: float, *, drop: float) -> None:
    """Small grey text centred at data x, ``drop`` points below the top of the axes."""
    ax.annotate(
        text, (x, 1.0), xycoords=("data", "axes fraction"), xytext=(0, -drop),
        textcoords="offset points", ha="center", va="top", fontsize=8, color="0.3",
    )  # fmt: skip


def _fmt(x: float, digits: int = 4) -> str:
    x = float(x)
    if math.isnan(x):
        return "nan"
    return f"{x:.{digits}g}"


def _finite(a: np.ndarray) -> np.ndarray:
    """Non-finite entries (NaN, ±inf) → NaN, so lines break there instead of misdrawing."""
    a = np.asarray(a, dtype=float)
    return np.where(np.isfinite(a), a, np.nan)


def _limits(values: Sequence[np.ndarray | float], pad: float = 0.08) -> tuple[float, float] | None:
    """Padded (lo, hi) of all finite values given, or None when there are none."""
    flat = [np.ravel(np.asarray(v, dtype=float)) for v in values]
    flat = np.concatenate(flat) if flat else np.array([])
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return None
    lo, hi = float(flat.min()), float(flat.max())
    span = hi - lo
    if span <= 0:
        span = max(abs(hi), 1.0) * 0.1
    return lo - pad * span, hi + pad * span


class _Chains(NamedTuple):
    """An ``LLCResult`` as NumPy float64 arrays, with the quantities every plot needs."""

    loss: np.ndarray  # (C, D) kept draws
    burnin: np.ndarray  # (C, B)
    running: np.ndarray  # (C, D) running LLC
    per_chain: np.ndarray  # (C,)
    diverged: np.ndarray  # (C,) bool
    divergence_step: np.ndarray  # (C,) int, −1 where finite
    llc_mean: float
    llc_std: float
    init_loss: float
    nbeta: float
    localization: float
    step_size: float
    accept_rate: np.ndarray
    mala_accept: np.ndarray

    @property
    def num_chains(self) -> int:
        return self.loss.shape[0]

    @property
    def num_draws(self) -> int:
        return self.loss.shape[1]

    @property
    def num_burnin(self) -> int:
        return self.burnin.shape[1]


def _chains(result: Any) -> _Chains:
    if np.ndim(result.llc_mean) != 0:
        raise ValueError(
            f"plot one LLCResult at a time; this one is batched (llc_mean shape "
            f"{np.shape(result.llc_mean)}): index it first, e.g. jax.tree.map(lambda a: a[i], r)"
        )
    loss = np.asarray(result.loss_trace, dtype=float)
    if loss.ndim != 2:
        raise ValueError(f"loss_trace must be (chains, draws), got shape {loss.shape}")
    burnin = np.asarray(result.burnin_loss_trace, dtype=float).reshape(loss.shape[0], -1)
    num_chains = loss.shape[0]

    def per_chain(a, dtype=float, fill=np.nan):
        a = np.asarray(a, dtype=dtype)
        return np.broadcast_to(a, (num_chains,)).copy() if a.size else np.full(num_chains, fill)

    diverged = per_chain(result.diverged, bool, False)
    divergence_step = per_chain(result.divergence_step, int, -1)
    # a chain with a non-finite loss is diverged whatever the flags say (defensive: synthetic
    # or hand-edited results); it is drawn as such and kept out of every axis range
    diverged = diverged | ~np.isfinite(loss).all(axis=1) | ~np.isfinite(burnin).all(axis=1)
    return _Chains(
        loss=loss,
        burnin=burnin,
        running=np.asarray(result.running_llc(), dtype=float).reshape(loss.shape),
        per_chain=per_chain(result.llc_per_chain),
        diverged=diverged,
        divergence_step=divergence_step,
        llc_mean=float(result.llc_mean),
        llc_std=float(result.llc_std),
        init_loss=float(result.init_loss),
        nbeta=float(result.nbeta),
        localization=float(result.localization),
        step_size=float(result.step_size),
        accept_rate=per_chain(getattr(result, "accept_rate", np.nan)),
        mala_accept=per_chain(getattr(result, "mala_accept", np.nan)),
    )


def _settings_line(c: _Chains) -> str:
    return (
        rf"$n\beta$ = {_fmt(c.nbeta, 6)},  $\gamma$ = {_fmt(c.localization)},  "
        rf"$\varepsilon$ = {_fmt(c.step_size, 3)},  $L_n(w^*)$ = {_fmt(c.init_loss, 6)};  "
        f"{c.num_chains} chains × {c.num_draws} draws after {c.num_burnin} burn-in steps"
    )


def _estimate_line(c: _Chains) -> str:
    healthy = int((~c.diverged).sum())
    text = rf"$\hat\lambda$ = {_fmt(c.llc_mean)} ± {_fmt(c.llc_std, 2)}"
    text += f"  (std across {healthy} of {c.num_chains} chains)"
    return text


# chain colours: the default cycle without its red (kept for diverged chains) and grey
_CHAIN_COLORS = ("C0", "C1", "C2", "C4", "C5", "C6", "C8", "C9")


def _chain_color(i: int, diverged: bool = False) -> str:
    return _DIVERGED_COLOR if diverged else _CHAIN_COLORS[i % len(_CHAIN_COLORS)]


def _divergence_index(c: _Chains, chain: int) -> int | None:
    """Position of chain ``chain``'s divergence on the plotted axis (burn-in, then draws)."""
    full = np.concatenate([c.burnin[chain], c.loss[chain]])
    bad = np.flatnonzero(~np.isfinite(full))
    if bad.size:
        return int(bad[0])
    step = int(c.divergence_step[chain])
    if step < 0:
        return None
    return min(step, full.size - 1)


def _binned_mean(x: np.ndarray, y: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Means of y (NaN-aware) and of x over ``bins`` equal consecutive blocks (fewer when short):
    the line that stays readable where the raw trace is an overplotted band."""
    n = y.size
    if n <= bins:
        return x, y
    edges = np.linspace(0, n, bins + 1).astype(int)
    xs = np.array([x[a:b].mean() for a, b in itertools.pairwise(edges)])
    with np.errstate(all="ignore"):
        finite = np.where(np.isfinite(y), y, np.nan)
        ys = np.array([np.nanmean(finite[a:b]) if np.isfinite(finite[a:b]).any() else np.nan
                       for a, b in itertools.pairwise(edges)])  # fmt: skip
    return xs, ys


TRACE_BINS = 150  # the loss per chain is drawn as this many block means over the raw trace
LONG_BURNIN = 0.5  # burn-in longer than this × the kept draws gets its own narrow panel


def _draw_traces(
    ax_loss,
    ax_llc,
    c: _Chains,
    *,
    true_llc: float | None,
    legend_fontsize: float = 8,
    ax_burn: Any = None,
) -> None:
    """(a) minibatch loss per chain, burn-in shaded; (b) running LLC per chain with the band.
    With ``ax_burn`` the burn-in loss goes there (its own x axis) and (a) shows only the kept
    draws, so that a long burn-in cannot squeeze them into the end of the axis."""
    b, d = c.num_burnin, c.num_draws
    stride = max(1, math.ceil((b + d) / MAX_POINTS))
    x_burn = np.arange(b)
    x_draw = b + np.arange(d)
    labelled = c.num_chains <= MAX_LABELLED_CHAINS
    healthy = ~c.diverged
    burn_ax = ax_loss if ax_burn is None else ax_burn

    for ax in (ax_loss, ax_llc):
        if b > 0 and ax_burn is None:
            ax.axvspan(-0.5, b - 0.5, color="0.92", zorder=0, lw=0)
        ax.grid(True, color="0.85", lw=0.5)
    if ax_burn is not None:
        ax_burn.set_facecolor("0.96")
        ax_burn.grid(True, color="0.85", lw=0.5)

    loss_handles: list[Any] = []
    for i in range(c.num_chains):
        div = bool(c.diverged[i])
        color = _chain_color(i, div)
        style = {"ls": "--", "lw": 0.9} if div else {"ls": "-", "lw": 0.6}
        # the raw trace as a light band, its block means as the line to read
        for ax, xs, ys, alpha in (
            (burn_ax, x_burn, c.burnin[i], 0.45),
            (ax_loss, x_draw, c.loss[i], 0.9),
        ):
            if xs.size == 0:
                continue
            ax.plot(xs[::stride], _finite(ys)[::stride], color=color, alpha=0.15, lw=0.4)
            ax.plot(*_binned_mean(xs, _finite(ys), TRACE_BINS), color=color, alpha=alpha,
                    **{**style, "lw": style["lw"] + 0.6})  # fmt: skip
        ax_llc.plot(
            x_draw[::stride],
            _finite(c.running[i])[::stride],
            color=color,
            alpha=0.9,
            lw=1.2 if not div else 1.0,
            ls=style["ls"],
        )
        where = _divergence_index(c, i) if div else None
        if where is not None:
            for ax in (ax_loss, ax_llc):
                ax.axvline(where, color=color, ls=":", lw=1.2)
                ax.plot(
                    [where],
                    [1.0],
                    marker="x",
                    ms=8,
                    mew=2,
                    color=_DIVERGED_COLOR,
                    transform=ax.get_xaxis_transform(),
                    clip_on=False,
                )
        step = int(c.divergence_step[i])
        if labelled:
            label = f"chain {i}"
            if div:
                label += f": DIVERGED at step {step}" if step >= 0 else ": DIVERGED"
            loss_handles.append(Line2D([], [], color=color, **style, label=label))
    if not labelled:
        loss_handles.append(
            Line2D(
                [],
                [],
                color="C0",
                lw=0.8,
                label=f"healthy chains: {int(healthy.sum())} (one colour each)",
            )
        )
        if c.diverged.any():
            loss_handles.append(
                Line2D(
                    [],
                    [],
                    color=_DIVERGED_COLOR,
                    ls="--",
                    lw=0.9,
                    label=f"DIVERGED chains: {int(c.diverged.sum())} (dashed)",
                )
            )

    if np.isfinite(c.init_loss):
        ax_loss.axhline(c.init_loss, color="black", ls="--", lw=1.2, zorder=5)
        if ax_burn is not None:
            ax_burn.axhline(c.init_loss, color="black", ls="--", lw=1.2, zorder=5)
        loss_handles.append(
            Line2D(
                [],
                [],
                color="black",
                ls="--",
                lw=1.2,
                label=rf"$L_n(w^*)$ = {_fmt(c.init_loss, 6)}",
            )
        )
    if b > 0:
        where = "left panel" if ax_burn is not None else "shaded"
        loss_handles.append(Patch(color="0.92", label=f"burn-in ({b} steps, {where})"))
    loss_handles.append(
        Line2D([], [], color="0.3", lw=1.2, label=f"block means ({TRACE_BINS} per trace)")
    )

    # axis ranges from the healthy chains only: a diverging chain's blow-up must not flatten
    # everything else (its line simply leaves the axes; the dotted line marks where)
    source = healthy if healthy.any() else np.ones_like(healthy)
    lim = _limits([c.burnin[source], c.loss[source], c.init_loss])
    if lim is not None:
        ax_loss.set_ylim(lim)
    if ax_burn is not None:
        lim_burn = _limits([c.burnin[source], c.init_loss])
        if lim_burn is not None:
            ax_burn.set_ylim(lim_burn)
        ax_burn.set_xlim(-0.5, b - 0.5)
        ax_burn.set_title("burn-in", loc="left", fontsize=9)
        ax_burn.set_xlabel("step")
        ax_burn.locator_params(axis="x", nbins=2)

    llc_handles: list[Any] = []
    mean_ok = np.isfinite(c.llc_mean)
    if mean_ok and d > 0:
        x0, x1 = b - 0.5, b + d - 0.5
        if np.isfinite(c.llc_std):
            ax_llc.fill_between(
                [x0, x1],
                c.llc_mean - c.llc_std,
                c.llc_mean + c.llc_std,
                color="0.5",
                alpha=0.25,
                lw=0,
                zorder=1,
            )
        ax_llc.hlines(c.llc_mean, x0, x1, color="0.25", lw=1.5, zorder=4)
        label = rf"final $\hat\lambda$ = {_fmt(c.llc_mean)}"
        if np.isfinite(c.llc_std):
            label += f" ± {_fmt(c.llc_std, 2)} (mean ± std)"
        llc_handles.append(
            (
                Patch(color="0.5", alpha=0.25, lw=0),
                Line2D([], [], color="0.25", lw=1.5),
            )
        )
        llc_labels = [label]
    else:
        llc_labels = []
    if true_llc is not None:
        ax_llc.axhline(float(true_llc), color=_TRUTH_COLOR, ls="--", lw=1.3, zorder=5)
        llc_handles.append(Line2D([], [], color=_TRUTH_COLOR, ls="--", lw=1.3))
        llc_labels.append(rf"true $\lambda$ = {_fmt(true_llc)}")
    llc_handles.append(Line2D([], [], color="0.45", lw=1.2))
    llc_labels.append("running estimate per chain\n(colours as in (a))")

    # skip the first 5% of draws for the range: a running mean starts as noisy as one draw
    skip = min(max(1, d // 20), max(d - 1, 0))
    band = [c.llc_mean - c.llc_std, c.llc_mean + c.llc_std, c.llc_mean]
    lim = _limits(
        [c.running[source][:, skip:], *band, *([true_llc] if true_llc is not None else [])]
    )
    if lim is not None:
        ax_llc.set_ylim(lim)
    ax_llc.set_xlim(-0.5 if b > 0 and ax_burn is None else b - 0.5, b + max(d, 1) - 0.5)

    (ax_loss if ax_burn is None else ax_burn).set_ylabel(r"minibatch loss $L_B(w_t)$")
    ax_llc.set_ylabel(r"running $\hat\lambda$ = $n\beta\,(\overline{L_B} - L_n(w^*))$")
    ax_llc.set_xlabel("step (burn-in, then kept draws)")
    ax_loss.set_title("(a) loss per chain", loc="left", fontsize=9)
    ax_llc.set_title("(b) running LLC estimate per chain (kept draws only)", loc="left", fontsize=9)
    ax_loss.tick_params(labelbottom=False)
    kw = {
        "loc": "upper left",
        "bbox_to_anchor": (1.01, 1.0),
        "fontsize": legend_fontsize,
        "borderaxespad": 0.0,
        "frameon": False,
    }
    ax_loss.legend(handles=loss_handles, **kw)
    ax_llc.legend(llc_handles, llc_labels, **kw)


# ---------------------------------------------------------------------------------------------
# plot_trace


def plot_trace(
    result: Any,
    path: str | Path | None = None,
    *,
    true_llc: float | None = None,
    title: str | None = None,
) -> Figure:
    """Trace plot of one ``LLCResult``; returns the figure, written to ``path`` (png/pdf/svg by
    suffix) when given.

    Two panels sharing the x axis (burn-in steps, shaded, then the kept draws): (a) the minibatch
    loss of every chain with a dashed line at L_n(w*); (b) the running estimate
    nβ·(mean_{s≤t} L_B(w_s) − L_n(w*)) of every chain (``result.running_llc()``) with the final
    mean ± std band and, if given, a dashed line at ``true_llc``. Diverged chains are dashed,
    marked with a dotted line (and a red ×) where their loss became non-finite, and labelled;
    the y ranges follow the healthy chains. nβ, γ, ε appear in the title block.
    """
    out = None if path is None else _output_path(path)
    c = _chains(result)
    fig = Figure(figsize=TRACE_FIGSIZE, layout="constrained")
    if c.num_burnin > LONG_BURNIN * c.num_draws:
        # a long burn-in gets its own narrow panel; the kept draws fill the main axes
        grid = fig.add_gridspec(2, 2, width_ratios=[1, 4])
        ax_burn = fig.add_subplot(grid[0, 0])
        ax_loss = fig.add_subplot(grid[0, 1])
        ax_llc = fig.add_subplot(grid[1, 1], sharex=ax_loss)
        note = fig.add_subplot(grid[1, 0])
        note.axis("off")
    else:
        ax_burn = None
        ax_loss, ax_llc = fig.subplots(2, 1, sharex=True)
    _draw_traces(ax_loss, ax_llc, c, true_llc=true_llc, ax_burn=ax_burn)
    heading = title if title is not None else "LLC estimate: SGLD traces"
    fig.suptitle(f"{heading}\n{_estimate_line(c)}\n{_settings_line(c)}", fontsize=10)
    if out is not None:
        _save(fig, out)
    return fig


# ---------------------------------------------------------------------------------------------
# plot_calibration

_CALIBRATION_COLUMNS = (
    "step_size",
    "localization",
    "llc_mean",
    "llc_std",
    "mala_accept",
    "diverged",
    "ok",
    "selected",
)


def _calibration_groups(table) -> list[tuple[str, Any]]:
    """(label, rows sorted by step_size) per localization (and per nβ when nβ varies)."""
    keys = ["localization"]
    varying_nbeta = "nbeta" in table and table["nbeta"].nunique(dropna=False) > 1
    if varying_nbeta:
        keys = ["nbeta", "localization"]
    groups = []
    for key, rows in table.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        if varying_nbeta:
            label = rf"$n\beta$ = {_fmt(key[0], 5)}, $\gamma$ = {_fmt(key[1])}"
        else:
            label = rf"$\gamma$ = {_fmt(key[-1])}"
        groups.append((label, rows.sort_values("step_size")))
    return groups


def _markers(ax, x, y, color, healthy, *, size=40, zorder=6):
    """Filled markers for healthy cells, hollow ones for unhealthy cells; NaN y skipped."""
    x, y, healthy = np.asarray(x, float), np.asarray(y, float), np.asarray(healthy, bool)
    good = np.isfinite(x) & np.isfinite(y)
    ax.scatter(
        x[good & healthy], y[good & healthy], s=size, color=color, edgecolors=color, zorder=zorder
    )
    ax.scatter(
        x[good & ~healthy],
        y[good & ~healthy],
        s=size,
        facecolors="white",
        edgecolors=color,
        linewidths=1.5,
        zorder=zorder,
    )


def _ring(ax, x, y, *, zorder=7):
    x, y = np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float))
    good = np.isfinite(x) & np.isfinite(y)
    ax.scatter(
        x[good],
        y[good],
        s=260,
        facecolors="none",
        edgecolors="black",
        linewidths=2.0,
        zorder=zorder,
    )


def plot_calibration(
    table: Any, path: str | Path | None = None, *, true_llc: float | None = None
) -> Figure:
    """Calibration grid plot of a step_size × localization table; returns the figure, written
    to ``path`` when given.

    ``table``: a pandas DataFrame with columns step_size, localization, llc_mean, llc_std,
    mala_accept, diverged (number of diverged chains), ok (bool), selected (bool; the recommended
    cell) and optionally nbeta (one line per (nβ, γ) when it varies), extrapolated and
    extrapolated_std (the ε → 0 estimate per localization).

    Left: estimate ± std vs ε (log axis), one line per γ; healthy cells (ok and nothing
    diverged) filled, unhealthy ones hollow, the selected cell circled, cells without an
    estimate (all chains diverged) marked × at the bottom, the ε → 0 extrapolation as a diamond
    at the left edge, ``true_llc`` dashed. Right: MALA acceptance vs ε per γ with the target
    band 0.8–0.95 (NaN acceptances skipped).
    """
    import pandas as pd

    out = None if path is None else _output_path(path)
    if not isinstance(table, pd.DataFrame):
        table = pd.DataFrame(table)
    missing = [col for col in _CALIBRATION_COLUMNS if col not in table.columns]
    if missing:
        raise ValueError(f"calibration table lacks column(s) {missing}; it has {list(table)}")
    if len(table) == 0:
        raise ValueError("calibration table is empty")
    table = table.copy()
    for col in ("step_size", "localization", "llc_mean", "llc_std", "mala_accept", "diverged"):
        table[col] = pd.to_numeric(table[col], errors="coerce").astype(float)
    table["ok"] = table["ok"].fillna(False).astype(bool)
    table["selected"] = table["selected"].fillna(False).astype(bool)
    table["healthy"] = table["ok"] & ~(table["diverged"].fillna(0) > 0)
    if (table["step_size"] <= 0).any() or table["step_size"].isna().any():
        raise ValueError("step_size must be positive (it is drawn on a log axis)")
    if table["localization"].isna().any():
        raise ValueError("localization must be a number in every row")

    fig = Figure(figsize=CALIBRATION_FIGSIZE, layout="constrained")
    ax_est, ax_acc = fig.subplots(1, 2)
    groups = _calibration_groups(table)

    # x range (log): the grid, plus room on the left for the ε → 0 point
    lo, hi = float(table["step_size"].min()), float(table["step_size"].max())
    decades = math.log10(hi / lo)
    has_extrapolation = (
        "extrapolated" in table
        and np.isfinite(pd.to_numeric(table["extrapolated"], errors="coerce").astype(float)).any()
    )
    gap = max(0.35, 0.15 * decades)  # decades between the ε → 0 point and the smallest ε
    margin = 0.5 if decades < 0.5 else max(0.15, 0.06 * decades)  # ≥ 1 decade shown
    x_extra = lo / 10**gap
    left = (x_extra if has_extrapolation else lo) / 10**margin
    right = hi * 10**margin

    handles: list[Any] = []
    labels: list[str] = []
    any_unhealthy = bool((~table["healthy"]).any())
    any_missing = False
    for j, (label, rows) in enumerate(groups):
        color = f"C{j % 10}"
        x = rows["step_size"].to_numpy()
        y = rows["llc_mean"].to_numpy()
        err = np.nan_to_num(rows["llc_std"].to_numpy(), nan=0.0, posinf=0.0)
        finite = np.isfinite(y)
        ax_est.errorbar(
            x[finite],
            y[finite],
            yerr=err[finite],
            fmt="none",
            ecolor=color,
            elinewidth=1.0,
            capsize=3,
            zorder=3,
        )
        ax_est.plot(x[finite], y[finite], "-", color=color, lw=1.3, zorder=4)
        _markers(ax_est, x, y, color, rows["healthy"].to_numpy())
        if (~finite).any():
            any_missing = True
            ax_est.plot(
                x[~finite],
                np.full((~finite).sum(), 0.03),
                "x",
                color=color,
                ms=9,
                mew=2,
                transform=ax_est.get_xaxis_transform(),
                clip_on=False,
            )
        handles.append(Line2D([], [], color=color, lw=1.3, marker="o", ms=6))
        labels.append(label)

        acc = rows["mala_accept"].to_numpy()
        ok_acc = np.isfinite(acc)
        ax_acc.plot(x[ok_acc], acc[ok_acc], "-", color=color, lw=1.3, zorder=4)
        _markers(ax_acc, x, acc, color, rows["healthy"].to_numpy())

        if has_extrapolation:
            ex = pd.to_numeric(rows["extrapolated"], errors="coerce").astype(float).to_numpy()
            ex = ex[np.isfinite(ex)]
            if ex.size:
                ex_std = np.nan
                if "extrapolated_std" in rows:
                    s = pd.to_numeric(rows["extrapolated_std"], errors="coerce").to_numpy(float)
                    s = s[np.isfinite(s)]
                    ex_std = float(s[0]) if s.size else np.nan
                # a small horizontal offset per group so several γ do not sit on each other
                xj = x_extra * 10 ** (0.06 * gap * (j - (len(groups) - 1) / 2))
                ax_est.errorbar(
                    [xj],
                    [ex[0]],
                    yerr=None if np.isnan(ex_std) else [ex_std],
                    fmt="D",
                    color=color,
                    ms=7,
                    mfc=color,
                    mec="black",
                    mew=0.8,
                    capsize=4,
                    elinewidth=1.2,
                    zorder=6,
                )

    selected = table[table["selected"]]
    if len(selected):
        _ring(ax_est, selected["step_size"], selected["llc_mean"])
        _ring(ax_acc, selected["step_size"], selected["mala_accept"])
        handles.append(
            Line2D([], [], ls="none", marker="o", ms=13, mfc="none", mec="black", mew=2.0)
        )
        labels.append("selected")
    if any_unhealthy:
        handles.append(Line2D([], [], ls="none", marker="o", ms=6, mfc="white", mec="0.3", mew=1.5))
        labels.append("unhealthy (not ok or diverged)")
    if any_missing:
        handles.append(Line2D([], [], ls="none", marker="x", ms=8, mew=2, color="0.3"))
        labels.append("no estimate (all chains diverged)")
    if has_extrapolation:
        handles.append(Line2D([], [], ls="none", marker="D", ms=7, mfc="0.6", mec="black"))
        labels.append(r"$\varepsilon \to 0$ extrapolation")
        ax_est.axvline(math.sqrt(x_extra * lo), color="0.6", ls=":", lw=1.0)
        _top_label(ax_est, r"$\varepsilon \to 0$", x_extra, drop=4)
    if true_llc is not None:
        ax_est.axhline(float(true_llc), color=_TRUTH_COLOR, ls="--", lw=1.3, zorder=2)
        handles.append(Line2D([], [], color=_TRUTH_COLOR, ls="--", lw=1.3))
        labels.append(rf"true $\lambda$ = {_fmt(true_llc)}")

    ax_acc.axhspan(*MALA_TARGET, color="tab:green", alpha=0.15, lw=0, zorder=0)
    handles.append(Patch(color="tab:green", alpha=0.15, lw=0))
    labels.append(f"MALA acceptance target {MALA_TARGET[0]}–{MALA_TARGET[1]}")
    if not np.isfinite(table["mala_accept"]).any():
        ax_acc.text(
            0.5,
            0.5,
            "no MALA acceptance recorded\n(not an SGLD sampler?)",
            transform=ax_acc.transAxes,
            ha="center",
            va="center",
            color="0.4",
        )

    for ax in (ax_est, ax_acc):
        ax.set_xscale("log")
        ax.set_xlim(left, right)
        ax.set_xlabel(r"step size $\varepsilon$ (SGLD noise variance)")
        ax.grid(True, which="major", color="0.85", lw=0.5)
    ax_est.set_ylabel(r"$\hat\lambda$ (mean ± std across chains)")
    ax_acc.set_ylabel("MALA acceptance of the SGLD steps")
    ax_acc.set_ylim(-0.02, 1.05)
    ax_est.set_title("estimate vs step size", loc="left", fontsize=10)
    ax_acc.set_title("acceptance vs step size", loc="left", fontsize=10)

    parts = []
    if "nbeta" in table:
        nb = pd.to_numeric(table["nbeta"], errors="coerce").dropna().unique()
        if nb.size == 1:
            parts.append(rf"$n\beta$ = {_fmt(nb[0], 6)}")
        elif nb.size > 1:
            parts.append(r"$n\beta$ varies (one line per $n\beta$, $\gamma$)")
    if len(selected) == 1:
        row = selected.iloc[0]
        chosen = rf"selected $\varepsilon$ = {_fmt(row['step_size'], 3)}, "
        chosen += rf"$\gamma$ = {_fmt(row['localization'])}"
        if "nbeta" in table and table["nbeta"].nunique() > 1:
            chosen += rf", $n\beta$ = {_fmt(row['nbeta'], 6)}"
        chosen += rf": $\hat\lambda$ = {_fmt(row['llc_mean'])} ± {_fmt(row['llc_std'], 2)}"
        parts.append(chosen)
    elif len(selected) == 0:
        parts.append("no cell selected")
    heading = "Calibration:  " + ";  ".join(parts) if parts else "Calibration"
    fig.suptitle(heading, fontsize=11)
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=min(len(handles), 4),
        fontsize=8,
        frameon=False,
    )
    if out is not None:
        _save(fig, out)
    return fig


# ---------------------------------------------------------------------------------------------
# plot_summary


def _stat(value: Any, reduce: str, spec: str) -> str:
    """A diagnostics statistic (scalar, or an array reduced by ``reduce``) formatted by ``spec``."""
    try:
        a = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return str(value)
    if a.size == 0:
        return "n/a"
    if a.size == 1:
        return format(float(a.reshape(())), spec)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return "nan"
    return f"{reduce} {format(float(getattr(finite, reduce)()), spec)}"


def diagnostics_lines(diagnostics: Any, width: int) -> list[str]:
    """The diagnostics block of a summary page, wrapped at ``width`` characters: a line of
    health statistics (OK / NOT OK, R-hat, bulk ESS) and then each warning, or "no warnings";
    any other object is shown as its ``str``."""
    lines: list[str] = []
    warnings_ = getattr(diagnostics, "warnings", None)
    if warnings_ is None:  # any object: show what str() says
        for para in str(diagnostics).splitlines() or [""]:
            lines.extend(textwrap.wrap(para, width) or [""])
        return lines
    stats = []
    if hasattr(diagnostics, "ok"):
        stats.append("OK" if bool(diagnostics.ok) else "NOT OK")
    if hasattr(diagnostics, "rhat"):
        stats.append(f"R-hat {_stat(diagnostics.rhat, 'max', '.3f')}")
    if hasattr(diagnostics, "ess_bulk"):
        stats.append(f"bulk ESS {_stat(diagnostics.ess_bulk, 'min', '.0f')}")
    if stats:
        lines.append("  ·  ".join(stats))
    warnings_ = [warnings_] if isinstance(warnings_, str) else list(warnings_)
    if not warnings_:
        lines.append("no warnings")
    for w in warnings_:
        lines.extend(textwrap.wrap(str(w), width, initial_indent="• ", subsequent_indent="  "))
    return lines


def _summary_text(c: _Chains) -> str:
    healthy = ~c.diverged
    lines = [
        f"LLC = {_fmt(c.llc_mean)} ± {_fmt(c.llc_std, 2)}",
        f"  (std across {int(healthy.sum())} of {c.num_chains} chains, ddof=1)",
        f"nβ = {_fmt(c.nbeta, 6)}",
        f"γ = {_fmt(c.localization)}",
        f"ε = {_fmt(c.step_size, 3)}  (noise variance)",
        f"L_n(w*) = {_fmt(c.init_loss, 6)}",
        f"chains: {c.num_chains}",
        f"draws kept: {c.num_draws} per chain",
        f"burn-in: {c.num_burnin} steps",
    ]
    for name, values in (("MALA acceptance", c.mala_accept), ("accept rate", c.accept_rate)):
        finite = values[np.isfinite(values)]
        if finite.size:
            lines.append(
                f"{name}: mean {finite.mean():.3f}, min {finite.min():.3f}, max {finite.max():.3f}"
            )
        else:
            lines.append(f"{name}: n/a")
    if c.diverged.any():
        which = ", ".join(
            f"{i}@{int(s)}" if s >= 0 else str(i)
            for i, s in zip(np.flatnonzero(c.diverged), c.divergence_step[c.diverged], strict=True)
        )
        lines.append(f"DIVERGED (chain@step): {which}")
    else:
        lines.append("diverged: none")
    return "\n".join(
        textwrap.fill(line, 60, subsequent_indent="  ", drop_whitespace=False) for line in lines
    )


def _draw_per_chain(ax, c: _Chains, true_llc: float | None) -> None:
    healthy = ~c.diverged & np.isfinite(c.per_chain)
    mean_ok = np.isfinite(c.llc_mean)
    if mean_ok and np.isfinite(c.llc_std):
        band = (c.llc_mean - c.llc_std, c.llc_mean + c.llc_std)
        ax.axvspan(*band, color="0.5", alpha=0.25, lw=0, zorder=3)  # translucent, over the bars
    if mean_ok:
        ax.axvline(c.llc_mean, color="0.25", lw=1.5, label="mean ± std")
    if true_llc is not None:
        ax.axvline(
            float(true_llc),
            color=_TRUTH_COLOR,
            ls="--",
            lw=1.3,
            label=rf"true $\lambda$ = {_fmt(true_llc)}",
        )
    if c.num_chains <= 16:
        idx = np.arange(c.num_chains)
        ax.scatter(
            c.per_chain[healthy],
            idx[healthy],
            color=[_chain_color(i) for i in idx[healthy]],
            s=30,
            zorder=5,
        )
        for i in idx[~healthy]:
            step = int(c.divergence_step[i])
            ax.text(
                0.02,
                i,
                "diverged" + (f" at step {step}" if step >= 0 else ""),
                transform=ax.get_yaxis_transform(),
                va="center",
                fontsize=7,
                color=_DIVERGED_COLOR,
            )
        ax.set_yticks(idx, [f"chain {i}" for i in idx], fontsize=7)
        ax.set_ylim(c.num_chains - 0.5, -0.5)
    else:
        values = c.per_chain[healthy]
        if values.size:
            ax.hist(values, bins=min(30, max(5, values.size // 3)), color="C0", alpha=0.6)
        ax.set_ylabel("chains")
    lim = _limits(
        [
            c.per_chain[healthy],
            c.llc_mean - c.llc_std,
            c.llc_mean + c.llc_std,
            *([true_llc] if true_llc is not None else []),
        ],
        pad=0.15,
    )
    if lim is not None:
        ax.set_xlim(lim)
    ax.set_xlabel(r"$\hat\lambda_c$ per chain")
    title = "per-chain estimates"
    if c.num_chains > 16 and c.diverged.any():
        k = int(c.diverged.sum())
        title += f"\n({k} diverged chain{'s' if k > 1 else ''} not shown)"
    ax.set_title(title, loc="left", fontsize=9)
    ax.grid(True, axis="x", color="0.85", lw=0.5)
    if mean_ok or true_llc is not None:  # below the axis: never on top of a chain's point
        ax.legend(
            fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncols=2, frameon=False
        )


def plot_summary(
    result: Any,
    path: str | Path | None = None,
    *,
    diagnostics: Any = None,
    true_llc: float | None = None,
) -> Figure:
    """A one-page (8.5 × 11 in) diagnostics summary of one ``LLCResult``; returns the figure,
    written to ``path`` when given.

    The two trace panels of ``plot_trace``; the per-chain estimates (a strip, or a histogram for
    more than 16 chains) with the mean ± std band and ``true_llc``; a text block with the estimate
    ± std, nβ, γ, ε, L_n(w*), chains/draws/burn-in, acceptance and divergences; and, when
    ``diagnostics`` is given, its verdict, R-hat, bulk ESS and warnings (wrapped; "no warnings"
    when there are none). Any object works as ``diagnostics``: without a ``warnings`` attribute
    its ``str()`` is shown.
    """
    out = None if path is None else _output_path(path)
    c = _chains(result)
    fig = Figure(figsize=SUMMARY_FIGSIZE, layout="constrained")
    grid = fig.add_gridspec(4, 2, height_ratios=[3.0, 3.0, 2.3, 1.9], width_ratios=[1.0, 1.0])
    ax_burn = None
    if c.num_burnin > LONG_BURNIN * c.num_draws:
        # as in plot_trace: a long burn-in gets a narrow panel of its own
        top = grid[0, :].subgridspec(1, 2, width_ratios=[1, 4])
        ax_burn = fig.add_subplot(top[0, 0])
        ax_loss = fig.add_subplot(top[0, 1])
        bottom = grid[1, :].subgridspec(1, 2, width_ratios=[1, 4])
        ax_llc = fig.add_subplot(bottom[0, 1], sharex=ax_loss)
        fig.add_subplot(bottom[0, 0]).axis("off")
    else:
        ax_loss = fig.add_subplot(grid[0, :])
        ax_llc = fig.add_subplot(grid[1, :], sharex=ax_loss)
    ax_chain = fig.add_subplot(grid[2, 0])
    ax_text = fig.add_subplot(grid[2, 1])
    ax_diag = fig.add_subplot(grid[3, :])

    _draw_traces(ax_loss, ax_llc, c, true_llc=true_llc, legend_fontsize=7, ax_burn=ax_burn)
    _draw_per_chain(ax_chain, c, true_llc)

    ax_text.axis("off")
    ax_text.set_title("estimate and settings", loc="left", fontsize=9)
    ax_text.text(
        0.0,
        1.0,
        _summary_text(c),
        transform=ax_text.transAxes,
        va="top",
        ha="left",
        family="monospace",
        fontsize=7.5,
        linespacing=1.35,
    )

    ax_diag.axis("off")
    ax_diag.set_title("diagnostics", loc="left", fontsize=9)
    if diagnostics is None:
        lines = ["no diagnostics given (pass diagnostics=jaxslt.diagnostics.diagnose(result))"]
    else:
        lines = diagnostics_lines(diagnostics, width=105)
    max_lines = 12
    if len(lines) > max_lines:
        rest = len(lines) - (max_lines - 1)
        lines = [*lines[: max_lines - 1], f"... ({rest} more lines)"]
    ax_diag.text(
        0.0,
        1.0,
        "\n".join(lines),
        transform=ax_diag.transAxes,
        va="top",
        ha="left",
        family="monospace",
        fontsize=7.5,
        linespacing=1.35,
    )

    fig.suptitle(f"LLC estimate summary\n{_estimate_line(c)}", fontsize=11)
    if out is not None:
        _save(fig, out)
    return fig


# ---------------------------------------------------------------------------------------------
# plot_stages

STAGES_FIGSIZE = (10.0, 5.5)
_STAGE_SHADE = "0.90"  # every other stage is shaded; the rest stay white
_POINT_MARKERS = {"peak": "^", "trough": "v"}
_LOSS_COLOR = "tab:orange"
_STAGE_ARROWS = {"rising": "↑", "falling": "↓", "flat": "→", "insufficient": "?"}


def _critical_point_style(kind: str, on_loss: bool) -> dict[str, Any]:
    """Peaks ▲ and troughs ▼ (hollow on the loss), plateaus as thick level segments."""
    color = _LOSS_COLOR if on_loss else "black"
    if kind == "plateau":
        return {"color": color, "lw": 3.5, "alpha": 0.6, "solid_capstyle": "butt"}
    marker = _POINT_MARKERS[kind]
    face = "white" if on_loss else color
    return {"ls": "none", "marker": marker, "ms": 9, "mfc": face, "mec": color, "mew": 1.5}


def _stage_axis(ax, steps: np.ndarray, scale: str) -> None:
    """Log x (symlog through a step 0, as ``jaxslt.stages.step_axis`` places it) or linear."""
    if scale != "log":
        return
    if steps[0] > 0:
        ax.set_xscale("log")
    else:
        ax.set_xscale("symlog", linthresh=float(steps[steps > 0][0]), linscale=1.0)


def plot_stages(
    steps: Sequence[float] | np.ndarray,
    llc: Sequence[float] | np.ndarray,
    stages: Any,
    *,
    llc_std: float | Sequence[float] | np.ndarray | None = None,
    loss: Sequence[float] | np.ndarray | None = None,
    title: str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """The LLC curve over training split into the stages of ``jaxslt.detect_stages``.

    λ̂ per checkpoint (markers) with a ± ``llc_std`` band, the smoothed curve and the stage model
    (the piecewise-linear line through the boundaries); stages shaded alternately and labelled
    with their index and kind (↑ rising, ↓ falling, → flat); peaks (▲) and troughs (▼) marked,
    plateaus drawn as thick level segments; the loss, if given, on a twin axis (its critical
    points hollow). The x axis is logarithmic when ``stages.scale`` is "log" (steps spanning
    more than two decades by default; symlog through a step 0). Returns the figure; with
    ``path`` (png/pdf/svg) it is also written there.
    """
    from jaxslt.stages import Stages, as_curve

    if not isinstance(stages, Stages):
        raise TypeError(
            f"stages must be the Stages that jaxslt.detect_stages returned; got "
            f"{type(stages).__name__}"
        )
    s = as_curve("steps", steps)
    y = as_curve("llc", llc, s)
    if s.size != stages.smoothed.size:
        raise ValueError(
            f"steps has {s.size} checkpoints but stages was detected on {stages.smoothed.size}: "
            "pass the same steps and llc as to detect_stages"
        )
    std = None if llc_std is None else as_curve("llc_std", np.broadcast_to(llc_std, y.shape), s)
    w = None if loss is None else as_curve("loss", loss, s)
    out = None if path is None else _output_path(path)

    fig = Figure(figsize=STAGES_FIGSIZE, layout="constrained")
    ax = fig.subplots()
    _stage_axis(ax, s, stages.scale)
    table = stages.stages
    for k, row in enumerate(table.itertuples()):
        if k % 2 == 0:
            ax.axvspan(row.start_step, row.end_step, color=_STAGE_SHADE, lw=0, zorder=0)
        middle = (
            math.sqrt(row.start_step * row.end_step)
            if stages.scale == "log" and row.start_step > 0
            else (row.start_step + row.end_step) / 2
        )
        _top_label(ax, f"{row.stage} {_STAGE_ARROWS.get(str(row.kind), '')}", middle, drop=3)
    for b in stages.boundaries[1:-1]:
        ax.axvline(b, color="0.55", lw=0.8, ls=":", zorder=1)

    handles: list[Any] = []
    labels: list[str] = []
    if std is not None:
        ax.fill_between(s, y - std, y + std, color=_HEALTHY_COLOR, alpha=0.18, lw=0, zorder=2)
        handles.append(Patch(color=_HEALTHY_COLOR, alpha=0.18, lw=0))
        labels.append(r"$\hat\lambda$ ± llc_std")
    ax.plot(s, y, color=_HEALTHY_COLOR, lw=0.8, marker="o", ms=2.5, zorder=3)
    handles.append(Line2D([], [], color=_HEALTHY_COLOR, lw=0.8, marker="o", ms=2.5))
    labels.append(r"$\hat\lambda$ per checkpoint")
    if np.isfinite(stages.smoothed).any():
        ax.plot(s, stages.smoothed, color="navy", lw=1.2, alpha=0.7, zorder=4)
        handles.append(Line2D([], [], color="navy", lw=1.2, alpha=0.7))
        labels.append(
            f"smoothed (kernel width {_fmt(stages.bandwidth, 3)}"
            + (" decades)" if stages.scale == "log" else " steps)")
        )
    if np.isfinite(stages.model).all():  # NaN when the result is "insufficient"
        ax.plot(s, stages.model, color="black", lw=1.6, ls="--", zorder=5)
        handles.append(Line2D([], [], color="black", lw=1.6, ls="--"))
        labels.append("stage model")

    ax_loss = None
    if w is not None:
        ax_loss = ax.twinx()
        ax_loss.plot(s, w, color=_LOSS_COLOR, lw=1.0, alpha=0.85, zorder=3)
        ax_loss.set_ylabel("loss", color=_LOSS_COLOR)
        ax_loss.tick_params(axis="y", colors=_LOSS_COLOR)
        handles.append(Line2D([], [], color=_LOSS_COLOR, lw=1.0))
        labels.append("loss")

    seen: set[str] = set()
    for row in stages.critical_points.itertuples():
        on_loss = row.curve == "loss"
        target = ax_loss if on_loss else ax
        if target is None:  # a loss point, but no loss given to draw it against
            continue
        kind = str(row.kind)
        style = _critical_point_style(kind, on_loss)
        if kind == "plateau":
            target.plot([row.step, row.end_step], [row.value] * 2, zorder=6, **style)
        else:
            target.plot([row.step], [row.value], zorder=7, **style)
        label = f"{'loss' if on_loss else 'LLC'} {kind}"
        if label not in seen:
            seen.add(label)
            handles.append(Line2D([], [], **style))
            labels.append(label)
    handles.append(Patch(color=_STAGE_SHADE, lw=0))
    labels.append("stages (shaded alternately)")

    lim = _limits([y, *([y - std, y + std] if std is not None else []), stages.smoothed])
    if lim is not None:
        lo, hi = lim
        ax.set_ylim(lo, hi + 0.06 * (hi - lo))  # headroom for the stage labels
    ax.set_xlim(s[0], s[-1])
    ax.set_xlabel("training step")
    ax.set_ylabel(r"LLC $\hat\lambda$")
    ax.grid(True, which="major", color="0.85", lw=0.5)
    n = stages.num_stages
    heading = title if title is not None else "Developmental stages of the LLC"
    if stages.status == "insufficient":
        fig.suptitle(
            f"{heading}: too few checkpoints to tell stages from noise "
            f"({s.size}; needs {stages.needed})",
            fontsize=11,
        )
    else:
        fig.suptitle(f"{heading}: {n} stage{'s' if n != 1 else ''}", fontsize=11)
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=min(len(handles), 5),
        fontsize=8,
        frameon=False,
    )
    if out is not None:
        _save(fig, out)
    return fig


# ---------------------------------------------------------------------------------------------
# plot_trajectory

TRAJECTORY_FIGSIZE = (9.0, 5.0)
_FAILED_COLOR = "tab:red"


def robust_limits(values: np.ndarray, *, reach: float = 1.5) -> tuple[float, float] | None:
    """y limits that one outlier cannot flatten: the finite values' range, clipped to
    [q₁₀ − reach·(q₉₀ − q₁₀), q₉₀ + reach·(q₉₀ − q₁₀)] (q the percentiles), padded by 8%.
    Values outside are outliers (drawn at the edge by ``plot_trajectory``). None when no
    value is finite."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    q10, q90 = np.percentile(v, [10.0, 90.0])
    spread = q90 - q10
    lo, hi = float(v.min()), float(v.max())
    if spread > 0:
        lo, hi = max(lo, q10 - reach * spread), min(hi, q90 + reach * spread)
    return _limits([lo, hi])


def plot_trajectory(
    table: Any,
    *,
    loss: str | None = "init_loss",
    stages: Any = None,
    ylim: tuple[float, float] | None = None,
    title: str | None = None,
    path: str | Path | None = None,
) -> Figure:
    """λ̂ over training: ``llc_trajectory``'s table as LLC ± std against the training step.

    Points with ± ``llc_std`` error bars (the spread of the chains; the standard error of the
    mean is llc_std/√num_chains); the x axis is logarithmic when the positive steps span more
    than two decades (symlog through a step 0, as ``jaxslt.stages.step_axis`` places it);
    the ``loss`` column (default ``init_loss``, L_n(w_t)) on a twin axis, log-scaled when
    positive and spanning more than a decade. Checkpoints whose diagnostics failed
    (``ok`` False) are ringed in red and counted in the legend. The y limits are robust
    (``robust_limits``): an outlier such as λ̂ = −250 at step 0 is drawn as a red arrow at
    the edge with its value, instead of squashing every other point into a line; ``ylim``
    sets the limits instead (e.g. to look at a plateau), points beyond drawn the same way. With
    ``stages`` (``jaxslt.detect_stages`` of the same curve) the stage boundaries are dotted
    lines and the stage model is dashed. Returns the figure; with ``path`` (png/pdf/svg) it is
    also written there.
    """
    from jaxslt.stages import as_curve, axis_scale

    for column in ("step", "llc_mean"):
        if column not in getattr(table, "columns", ()):
            raise ValueError(
                f"table must be llc_trajectory's DataFrame (columns step, llc_mean, llc_std, "
                f"...); it has no {column!r} column"
            )
    out = None if path is None else _output_path(path)
    s = as_curve("steps", np.asarray(table["step"], dtype=float))
    y = np.asarray(table["llc_mean"], dtype=float)
    std = np.asarray(table["llc_std"], dtype=float) if "llc_std" in table.columns else None
    ok = np.asarray(table["ok"], dtype=bool) if "ok" in table.columns else np.ones(s.size, bool)
    w = None
    if loss is not None and loss in table.columns:
        w = np.asarray(table[loss], dtype=float)

    fig = Figure(figsize=TRAJECTORY_FIGSIZE, layout="constrained")
    ax = fig.subplots()
    scale = axis_scale(s)
    _stage_axis(ax, s, scale)
    handles: list[Any] = []
    labels: list[str] = []
    finite = np.isfinite(y)
    ax.errorbar(
        s[finite], y[finite], yerr=None if std is None else std[finite], color=_HEALTHY_COLOR,
        marker="o", ms=4, lw=1.0, elinewidth=0.8, capsize=2, zorder=4,
    )  # fmt: skip
    handles.append(Line2D([], [], color=_HEALTHY_COLOR, marker="o", ms=4, lw=1.0))
    labels.append(r"$\hat\lambda$ ± llc_std (spread of the chains)")
    failed = ~ok & finite
    if failed.any():
        ax.plot(
            s[failed], y[failed], ls="none", marker="o", ms=11, mfc="none",
            mec=_FAILED_COLOR, mew=1.6, zorder=6,
        )  # fmt: skip
        handles.append(Line2D([], [], ls="none", marker="o", ms=11, mfc="none",
                              mec=_FAILED_COLOR, mew=1.6))  # fmt: skip
        labels.append(f"failed diagnostics ({int(failed.sum())} of {s.size}; see warnings)")
    if stages is not None:
        for b in stages.boundaries[1:-1]:
            ax.axvline(b, color="0.55", lw=0.8, ls=":", zorder=1)
        if np.isfinite(stages.model).all() and stages.model.size == s.size:
            ax.plot(s, stages.model, color="black", lw=1.4, ls="--", zorder=5)
            handles.append(Line2D([], [], color="black", lw=1.4, ls="--"))
            labels.append("stage model (boundaries dotted)")

    band = [y] if std is None else [y, y - std, y + std]
    lim = robust_limits(np.concatenate([b[finite] for b in band])) if ylim is None else ylim
    if lim is not None:
        lo, hi = lim
        ax.set_ylim(lo, hi)
        outside = np.flatnonzero(finite & ((y < lo) | (y > hi)))
        # every outlier gets an arrow at the edge; values are written for at most four (the
        # first, the most extreme each way, the last), so that a run of them stays legible
        named = set(outside[:1]) | set(outside[-1:])
        if outside.size:
            named |= {int(outside[np.argmin(y[outside])]), int(outside[np.argmax(y[outside])])}
        for i in outside:
            top = y[i] > hi
            edge = hi if top else lo
            text = f"{_fmt(y[i], 3)}" + ("" if ok[i] else " (failed)") if i in named else ""
            lift = 14 + 11 * (sorted(named).index(i) % 2 if i in named else 0)  # stagger
            ax.annotate(
                text, (s[i], edge), xytext=(0, -lift if top else lift),
                textcoords="offset points", ha="center", va="center", fontsize=8,
                color=_FAILED_COLOR,
                arrowprops={"arrowstyle": "->", "color": _FAILED_COLOR, "lw": 1.2},
                annotation_clip=False,
            )  # fmt: skip
        if outside.size:
            handles.append(Line2D([], [], color=_FAILED_COLOR, marker=r"$\uparrow$", ls="none"))
            labels.append(f"{outside.size} point(s) beyond the axis (arrows; values of up to 4)")

    if w is not None and np.isfinite(w).any():
        ax_loss = ax.twinx()
        ax_loss.plot(s, _finite(w), color=_LOSS_COLOR, lw=1.2, alpha=0.9, zorder=3)
        positive = w[np.isfinite(w)]
        if (positive > 0).all() and positive.max() / positive.min() > 10.0:
            ax_loss.set_yscale("log")
        ax_loss.set_ylabel(f"loss ({loss})", color=_LOSS_COLOR)
        ax_loss.tick_params(axis="y", colors=_LOSS_COLOR)
        handles.append(Line2D([], [], color=_LOSS_COLOR, lw=1.2))
        labels.append(f"{loss} (right axis)")
        ax.set_zorder(ax_loss.get_zorder() + 1)  # the LLC in front of the loss
        ax.patch.set_visible(False)

    ax.set_xlim(s[0], s[-1]) if s.size > 1 else None
    ax.set_xlabel("training step" + (" (log scale)" if scale == "log" else ""))
    ax.set_ylabel(r"LLC $\hat\lambda$")
    ax.grid(True, which="major", color="0.85", lw=0.5)
    fig.suptitle(title if title is not None else "LLC over training", fontsize=11)
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 3),
               fontsize=8, frameon=False)  # fmt: skip
    if out is not None:
        _save(fig, out)
    return fig
