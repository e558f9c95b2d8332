"""``plot_stages``: an LLC curve over training checkpoints split into the developmental stages
of ``jaxslt.stages.detect_stages`` (shaded, labelled with their kind), with its critical points
and, optionally, the loss on a twin axis."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from jaxslt.plots.common import (
    HEALTHY_COLOR,
    LOSS_COLOR,
    format_number,
    output_path,
    padded_limits,
    save_figure,
    set_step_axis,
    top_label,
)

__all__ = ["STAGES_FIGSIZE", "plot_stages"]

STAGES_FIGSIZE = (10.0, 5.5)
_STAGE_SHADE = "0.90"  # every other stage is shaded; the rest stay white
_POINT_MARKERS = {"peak": "^", "trough": "v"}
_STAGE_ARROWS = {"rising": "↑", "falling": "↓", "flat": "→", "insufficient": "?"}


def _critical_point_style(kind: str, on_loss: bool) -> dict[str, Any]:
    """Peaks ▲ and troughs ▼ (hollow on the loss), plateaus as thick level segments."""
    color = LOSS_COLOR if on_loss else "black"
    if kind == "plateau":
        return {"color": color, "lw": 3.5, "alpha": 0.6, "solid_capstyle": "butt"}
    marker = _POINT_MARKERS[kind]
    face = "white" if on_loss else color
    return {"ls": "none", "marker": marker, "ms": 9, "mfc": face, "mec": color, "mew": 1.5}


def plot_stages(
    steps: Sequence[float] | np.ndarray,
    llc: Sequence[float] | np.ndarray,
    stages: Any,
    *,
    llc_std: float | Sequence[float] | np.ndarray | None = None,
    loss: Sequence[float] | np.ndarray | None = None,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    """The LLC curve over training split into the stages of ``jaxslt.detect_stages``.

    λ̂ per checkpoint (markers) with a ± ``llc_std`` band, the smoothed curve and the stage model
    (the piecewise-linear line through the boundaries); stages shaded alternately and labelled
    with their index and kind (↑ rising, ↓ falling, → flat); peaks (▲) and troughs (▼) marked,
    plateaus drawn as thick level segments; the loss, if given, on a twin axis (its critical
    points hollow). The x axis is logarithmic when ``stages.scale`` is "log" (steps spanning
    more than two decades by default; symlog through a step 0). Returns the figure; with
    ``path`` (png/pdf/svg) it is also written there.

    Args:
      steps: the training step of each checkpoint, as given to ``detect_stages``.
      llc: λ̂ at each checkpoint.
      stages: the ``Stages`` that ``jaxslt.detect_stages`` found for this curve.
      llc_std: the ± band (a scalar or one per checkpoint); None draws none.
      loss: the loss at each checkpoint, on a twin axis; None draws none.
      title: the figure's title; None: a default one.
      path: write the figure there too (png, pdf or svg by suffix; folders created).

    Returns:
      The ``matplotlib.figure.Figure`` (open, not registered with pyplot).

    Raises:
      ValueError: an input it cannot draw (the message says which), or a ``path`` suffix
        other than png, pdf or svg.
      TypeError: ``stages`` is not a ``jaxslt.stages.Stages``.
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
    out = None if path is None else output_path(path)

    fig = Figure(figsize=STAGES_FIGSIZE, layout="constrained")
    ax = fig.subplots()
    set_step_axis(ax, s, stages.scale)
    table = stages.stages
    for k, row in enumerate(table.itertuples()):
        if k % 2 == 0:
            ax.axvspan(row.start_step, row.end_step, color=_STAGE_SHADE, lw=0, zorder=0)
        middle = (
            math.sqrt(row.start_step * row.end_step)
            if stages.scale == "log" and row.start_step > 0
            else (row.start_step + row.end_step) / 2
        )
        top_label(ax, f"{row.stage} {_STAGE_ARROWS.get(str(row.kind), '')}", middle, drop=3)
    for b in stages.boundaries[1:-1]:
        ax.axvline(b, color="0.55", lw=0.8, ls=":", zorder=1)

    handles: list[Any] = []
    labels: list[str] = []
    if std is not None:
        ax.fill_between(s, y - std, y + std, color=HEALTHY_COLOR, alpha=0.18, lw=0, zorder=2)
        handles.append(Patch(color=HEALTHY_COLOR, alpha=0.18, lw=0))
        labels.append(r"$\hat\lambda$ ± llc_std")
    ax.plot(s, y, color=HEALTHY_COLOR, lw=0.8, marker="o", ms=2.5, zorder=3)
    handles.append(Line2D([], [], color=HEALTHY_COLOR, lw=0.8, marker="o", ms=2.5))
    labels.append(r"$\hat\lambda$ per checkpoint")
    if np.isfinite(stages.smoothed).any():
        ax.plot(s, stages.smoothed, color="navy", lw=1.2, alpha=0.7, zorder=4)
        handles.append(Line2D([], [], color="navy", lw=1.2, alpha=0.7))
        labels.append(
            f"smoothed (kernel width {format_number(stages.bandwidth, 3)}"
            + (" decades)" if stages.scale == "log" else " steps)")
        )
    if np.isfinite(stages.model).all():  # NaN when the result is "insufficient"
        ax.plot(s, stages.model, color="black", lw=1.6, ls="--", zorder=5)
        handles.append(Line2D([], [], color="black", lw=1.6, ls="--"))
        labels.append("stage model")

    ax_loss = None
    if w is not None:
        ax_loss = ax.twinx()
        ax_loss.plot(s, w, color=LOSS_COLOR, lw=1.0, alpha=0.85, zorder=3)
        ax_loss.set_ylabel("loss", color=LOSS_COLOR)
        ax_loss.tick_params(axis="y", colors=LOSS_COLOR)
        handles.append(Line2D([], [], color=LOSS_COLOR, lw=1.0))
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

    lim = padded_limits([y, *([y - std, y + std] if std is not None else []), stages.smoothed])
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
        save_figure(fig, out)
    return fig
