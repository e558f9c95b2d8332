"""``plot_trajectory``: ``jaxslt.llc_trajectory``'s table as λ̂ ± std against the training step
(log axis across decades), the loss on a twin axis, failed checkpoints ringed and robust y
limits (``robust_limits``) that one outlier cannot flatten."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from jaxslt.plots.common import (
    HEALTHY_COLOR,
    LOSS_COLOR,
    finite_or_nan,
    format_number,
    output_path,
    padded_limits,
    save_figure,
    set_step_axis,
)

__all__ = [
    "TRAJECTORY_FIGSIZE",
    "draw_outliers",
    "plot_trajectory",
    "ring_failed",
    "robust_limits",
]

TRAJECTORY_FIGSIZE = (9.0, 5.0)
_FAILED_COLOR = "tab:red"


def robust_limits(values: np.ndarray, *, reach: float = 1.5) -> tuple[float, float] | None:
    """y limits that one outlier cannot flatten: the finite values' range, clipped to
    [q₁₀ − reach·(q₉₀ − q₁₀), q₉₀ + reach·(q₉₀ − q₁₀)] (q the percentiles), padded by 8%.
    Values outside are outliers (drawn at the edge by ``plot_trajectory``).

    Args:
      values: the y values (non-finite ones ignored).
      reach: how many inter-decile ranges beyond the deciles the limits may reach.

    Returns:
      (lo, hi), or None when no value is finite.
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    q10, q90 = np.percentile(v, [10.0, 90.0])
    spread = q90 - q10
    lo, hi = float(v.min()), float(v.max())
    if spread > 0:
        lo, hi = max(lo, q10 - reach * spread), min(hi, q90 + reach * spread)
    return padded_limits([lo, hi])


def ring_failed(ax: Any, steps: np.ndarray, values: np.ndarray) -> Line2D:
    """Ring the points (``steps``, ``values``) in red on ``ax`` (checkpoints or cells that
    failed their diagnostics); returns the legend handle."""
    style = dict(ls="none", marker="o", ms=11, mfc="none", mec=_FAILED_COLOR, mew=1.6)
    ax.plot(steps, values, zorder=6, **style)
    return Line2D([], [], **style)


def draw_outliers(
    ax: Any,
    steps: np.ndarray,
    values: np.ndarray,
    limits: tuple[float, float],
    ok: np.ndarray,
) -> int:
    """Set ``limits`` as ``ax``'s y limits and draw every finite value beyond them as a red arrow
    at the edge, its value written for at most four (the first, the most extreme each way, the
    last; "(failed)" where ``ok`` is False), so that one outlier such as λ̂ = −250 at step 0
    does not squash the rest into a line. Returns how many values are beyond the limits."""
    lo, hi = limits
    ax.set_ylim(lo, hi)
    outside = np.flatnonzero(np.isfinite(values) & ((values < lo) | (values > hi)))
    # every outlier gets an arrow at the edge; values are written for at most four, so that a
    # run of them stays legible
    named = set(outside[:1]) | set(outside[-1:])
    if outside.size:
        named |= {
            int(outside[np.argmin(values[outside])]), int(outside[np.argmax(values[outside])])
        }  # fmt: skip
    for i in outside:
        top = values[i] > hi
        value = format_number(values[i], 3) + ("" if ok[i] else " (failed)")
        lift = 14 + 11 * (sorted(named).index(i) % 2 if i in named else 0)  # stagger
        ax.annotate(
            value if i in named else "", (steps[i], hi if top else lo),
            xytext=(0, -lift if top else lift), textcoords="offset points", ha="center",
            va="center", fontsize=8, color=_FAILED_COLOR,
            arrowprops={"arrowstyle": "->", "color": _FAILED_COLOR, "lw": 1.2},
            annotation_clip=False,
        )  # fmt: skip
    return int(outside.size)


def plot_trajectory(
    table: Any,
    *,
    loss: str | None = "init_loss",
    stages: Any = None,
    ylim: tuple[float, float] | None = None,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
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

    Args:
      table: ``llc_trajectory``'s DataFrame (columns ``step``, ``llc_mean``, ``llc_std``, and
        optionally ``ok`` and the ``loss`` column).
      loss: the column drawn on the twin axis; None draws none.
      stages: ``jaxslt.detect_stages`` of the same curve; None draws no stages.
      ylim: the y limits, instead of the robust ones.
      title: the figure's title; None: a default one.
      path: write the figure there too (png, pdf or svg by suffix; folders created).

    Returns:
      The ``matplotlib.figure.Figure`` (open, not registered with pyplot).

    Raises:
      ValueError: an input it cannot draw (the message says which), or a ``path`` suffix
        other than png, pdf or svg.
    """
    from jaxslt.stages import as_curve, axis_scale

    for column in ("step", "llc_mean"):
        if column not in getattr(table, "columns", ()):
            raise ValueError(
                f"table must be llc_trajectory's DataFrame (columns step, llc_mean, llc_std, "
                f"...); it has no {column!r} column"
            )
    out = None if path is None else output_path(path)
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
    set_step_axis(ax, s, scale)
    handles: list[Any] = []
    labels: list[str] = []
    finite = np.isfinite(y)
    ax.errorbar(
        s[finite], y[finite], yerr=None if std is None else std[finite], color=HEALTHY_COLOR,
        marker="o", ms=4, lw=1.0, elinewidth=0.8, capsize=2, zorder=4,
    )  # fmt: skip
    handles.append(Line2D([], [], color=HEALTHY_COLOR, marker="o", ms=4, lw=1.0))
    labels.append(r"$\hat\lambda$ ± llc_std (spread of the chains)")
    failed = ~ok & finite
    if failed.any():
        handles.append(ring_failed(ax, s[failed], y[failed]))
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
    if lim is not None and (beyond := draw_outliers(ax, s, y, lim, ok)):
        handles.append(Line2D([], [], color=_FAILED_COLOR, marker=r"$\uparrow$", ls="none"))
        labels.append(f"{beyond} point(s) beyond the axis (arrows at the edge; at most 4 labelled)")

    if w is not None and np.isfinite(w).any():
        ax_loss = ax.twinx()
        ax_loss.plot(s, finite_or_nan(w), color=LOSS_COLOR, lw=1.2, alpha=0.9, zorder=3)
        positive = w[np.isfinite(w)]
        if (positive > 0).all() and positive.max() / positive.min() > 10.0:
            ax_loss.set_yscale("log")
        ax_loss.set_ylabel(f"loss ({loss})", color=LOSS_COLOR)
        ax_loss.tick_params(axis="y", colors=LOSS_COLOR)
        handles.append(Line2D([], [], color=LOSS_COLOR, lw=1.2))
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
        save_figure(fig, out)
    return fig
