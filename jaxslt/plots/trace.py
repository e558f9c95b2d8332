"""The chains of one ``LLCResult``: ``plot_trace`` (minibatch loss per chain, burn-in shaded,
above the running LLC estimate per chain with the final mean ± std band) and ``plot_summary``
(a one-page report: both trace panels, the per-chain estimates, the settings and the
diagnostics' warnings, whose text block is ``diagnostics_lines``).

Diverged chains (NaN/inf losses) are drawn dashed with a dotted line at the divergence and
labelled; non-finite values are never plotted or averaged, and the y ranges follow the healthy
chains.
"""

from __future__ import annotations

import itertools
import math
import os
import textwrap
from typing import Any, NamedTuple

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from jaxslt.plots.common import (
    TRUTH_COLOR,
    accept_positional_path,
    finite_or_nan,
    format_number,
    output_path,
    padded_limits,
    save_figure,
)

__all__ = ["SUMMARY_FIGSIZE", "TRACE_FIGSIZE", "diagnostics_lines", "plot_summary", "plot_trace"]

TRACE_FIGSIZE = (10.0, 6.5)
SUMMARY_FIGSIZE = (8.5, 11.0)
MAX_LABELLED_CHAINS = 8  # above this many chains the legend shows one entry for all of them
MAX_POINTS = 20_000  # longer traces are strided for display (estimates use every draw)

_DIVERGED_COLOR = "tab:red"


# ---------------------------------------------------------------------------------------------
# one LLCResult as arrays


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
        rf"$n\beta$ = {format_number(c.nbeta, 6)},  $\gamma$ = {format_number(c.localization)},  "
        rf"$\varepsilon$ = {format_number(c.step_size, 3)},  "
        rf"$L_n(w^*)$ = {format_number(c.init_loss, 6)};  "
        f"{c.num_chains} chains × {c.num_draws} draws after {c.num_burnin} burn-in steps"
    )


def _estimate_line(c: _Chains) -> str:
    healthy = int((~c.diverged).sum())
    text = rf"$\hat\lambda$ = {format_number(c.llc_mean)} ± {format_number(c.llc_std, 2)}"
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
            ax.plot(xs[::stride], finite_or_nan(ys)[::stride], color=color, alpha=0.15, lw=0.4)
            ax.plot(*_binned_mean(xs, finite_or_nan(ys), TRACE_BINS), color=color, alpha=alpha,
                    **{**style, "lw": style["lw"] + 0.6})  # fmt: skip
        ax_llc.plot(
            x_draw[::stride],
            finite_or_nan(c.running[i])[::stride],
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
                label=rf"$L_n(w^*)$ = {format_number(c.init_loss, 6)}",
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
    lim = padded_limits([c.burnin[source], c.loss[source], c.init_loss])
    if lim is not None:
        ax_loss.set_ylim(lim)
    if ax_burn is not None:
        lim_burn = padded_limits([c.burnin[source], c.init_loss])
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
        label = rf"final $\hat\lambda$ = {format_number(c.llc_mean)}"
        if np.isfinite(c.llc_std):
            label += f" ± {format_number(c.llc_std, 2)} (mean ± std)"
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
        ax_llc.axhline(float(true_llc), color=TRUTH_COLOR, ls="--", lw=1.3, zorder=5)
        llc_handles.append(Line2D([], [], color=TRUTH_COLOR, ls="--", lw=1.3))
        llc_labels.append(rf"true $\lambda$ = {format_number(true_llc)}")
    llc_handles.append(Line2D([], [], color="0.45", lw=1.2))
    llc_labels.append("running estimate per chain\n(colours as in (a))")

    # skip the first 5% of draws for the range: a running mean starts as noisy as one draw
    skip = min(max(1, d // 20), max(d - 1, 0))
    band = [c.llc_mean - c.llc_std, c.llc_mean + c.llc_std, c.llc_mean]
    lim = padded_limits(
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


@accept_positional_path
def plot_trace(
    result: Any,
    *,
    true_llc: float | None = None,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    """Trace plot of one ``LLCResult``; returns the figure, written to ``path`` (png/pdf/svg by
    suffix) when given.

    Two panels sharing the x axis (burn-in steps, shaded, then the kept draws): (a) the minibatch
    loss of every chain with a dashed line at L_n(w*); (b) the running estimate
    nβ·(mean_{s≤t} L_B(w_s) − L_n(w*)) of every chain (``result.running_llc()``) with the final
    mean ± std band and, if given, a dashed line at ``true_llc``. Diverged chains are dashed,
    marked with a dotted line (and a red ×) where their loss became non-finite, and labelled;
    the y ranges follow the healthy chains. nβ, γ, ε appear in the title block.

    Args:
      result: one ``LLCResult``.
      true_llc: the exact λ, drawn dashed; None draws none.
      title: the figure's title; None: a default one.
      path: write the figure there too (png, pdf or svg by suffix; folders created).

    Returns:
      The ``matplotlib.figure.Figure`` (open, not registered with pyplot).

    Raises:
      ValueError: an input it cannot draw (the message says which), or a ``path`` suffix
        other than png, pdf or svg.
    """
    out = None if path is None else output_path(path)
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
        save_figure(fig, out)
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
    any other object is shown as its ``str``.

    Args:
      diagnostics: a ``jaxslt.Diagnostics``, or any object (shown as its ``str``).
      width: the line width, in characters.

    Returns:
      The lines, each at most ``width`` characters where words allow.
    """
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
        f"LLC = {format_number(c.llc_mean)} ± {format_number(c.llc_std, 2)}",
        f"  (std across {int(healthy.sum())} of {c.num_chains} chains, ddof=1)",
        f"nβ = {format_number(c.nbeta, 6)}",
        f"γ = {format_number(c.localization)}",
        f"ε = {format_number(c.step_size, 3)}  (noise variance)",
        f"L_n(w*) = {format_number(c.init_loss, 6)}",
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
            color=TRUTH_COLOR,
            ls="--",
            lw=1.3,
            label=rf"true $\lambda$ = {format_number(true_llc)}",
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
    lim = padded_limits(
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


@accept_positional_path
def plot_summary(
    result: Any,
    *,
    diagnostics: Any = None,
    true_llc: float | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    """A one-page (8.5 × 11 in) diagnostics summary of one ``LLCResult``; returns the figure,
    written to ``path`` when given.

    The two trace panels of ``plot_trace``; the per-chain estimates (a strip, or a histogram for
    more than 16 chains) with the mean ± std band and ``true_llc``; a text block with the estimate
    ± std, nβ, γ, ε, L_n(w*), chains/draws/burn-in, acceptance and divergences; and, when
    ``diagnostics`` is given, its verdict, R-hat, bulk ESS and warnings (wrapped; "no warnings"
    when there are none). Any object works as ``diagnostics``: without a ``warnings`` attribute
    its ``str()`` is shown.

    Args:
      result: one ``LLCResult``.
      diagnostics: its ``jaxslt.Diagnostics`` (or any object); None shows no verdict.
      true_llc: the exact λ, drawn dashed; None draws none.
      path: write the figure there too (png, pdf or svg by suffix; folders created).

    Returns:
      The ``matplotlib.figure.Figure`` (open, not registered with pyplot).

    Raises:
      ValueError: an input it cannot draw (the message says which), or a ``path`` suffix
        other than png, pdf or svg.
    """
    out = None if path is None else output_path(path)
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
        save_figure(fig, out)
    return fig
