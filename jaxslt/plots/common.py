"""What the figure modules of ``jaxslt.plots`` share: the output convention (``output_path``,
``save_figure``, ``DPI``), number formatting, axis limits that ignore non-finite values, the
log/symlog step axis, and the colours that mean the same in every figure.

Public names only (the package's modules, ``jaxslt.study.report`` and the examples use them);
no matplotlib import here: the helpers take the axes and figures they are given.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "DPI",
    "FORMATS",
    "HEALTHY_COLOR",
    "LOSS_COLOR",
    "TRUTH_COLOR",
    "accept_positional_path",
    "finite_or_nan",
    "format_number",
    "output_path",
    "padded_limits",
    "save_figure",
    "set_step_axis",
    "top_label",
]

DPI = 150  # resolution of PNG output (pdf/svg are vector); png pixels = figsize × DPI
FORMATS = ("png", "pdf", "svg")

HEALTHY_COLOR = "tab:blue"  # λ̂ per checkpoint (stages, trajectory)
LOSS_COLOR = "tab:orange"  # the loss on a twin axis (stages, trajectory)
TRUTH_COLOR = "black"  # a known true λ (trace, summary, calibration)

P = ParamSpec("P")


# ---------------------------------------------------------------------------------------------
# the output convention


def output_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a ``Path`` whose suffix names the format (png, pdf or svg; ValueError
    otherwise), its missing parent folders created. The plot functions call it before drawing,
    so a bad name fails at once."""
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise ValueError(
            f"cannot tell the format of {str(path)!r}: use a .png, .pdf or .svg suffix"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: float = DPI) -> Path:
    """Write ``fig`` to ``path`` as every plot function does (format from the suffix, folders
    created, ``dpi`` for png); the figure stays open and usable.

    Args:
      fig: a matplotlib ``Figure``.
      path: the file to write (png, pdf or svg by suffix).
      dpi: dots per inch of a png.

    Returns:
      The path written, as a ``pathlib.Path``.

    Raises:
      ValueError: a suffix other than png, pdf or svg.
    """
    path = output_path(path)
    fig.savefig(path, dpi=dpi, format=path.suffix.lower().lstrip("."))
    return path


def accept_positional_path(plot: Callable[P, Figure]) -> Callable[P, Figure]:
    """Let ``plot(data, "file.png")`` keep working, with a ``DeprecationWarning``, for the
    plots that took ``path`` as their second positional argument before the convention
    (``plot_trace``, ``plot_calibration``, ``plot_summary``): the file is ``path=`` now."""

    @functools.wraps(plot)
    def plot_with_path(*args: P.args, **kwargs: P.kwargs) -> Figure:
        if len(args) == 2 and "path" not in kwargs:
            warnings.warn(
                f"{plot.__name__}(data, path) is deprecated: pass the file as path=, as for "
                "every jaxslt.plots function",
                DeprecationWarning,
                stacklevel=2,
            )
            args, kwargs = args[:1], {**kwargs, "path": args[1]}  # type: ignore[assignment]
        return plot(*args, **kwargs)

    return plot_with_path


# ---------------------------------------------------------------------------------------------
# numbers, limits, axes


def format_number(x: float, digits: int = 4) -> str:
    """``x`` to ``digits`` significant digits ("nan" for NaN)."""
    x = float(x)
    if math.isnan(x):
        return "nan"
    return f"{x:.{digits}g}"


def finite_or_nan(a: np.ndarray) -> np.ndarray:
    """Non-finite entries (NaN, ±inf) → NaN, so lines break there instead of misdrawing."""
    a = np.asarray(a, dtype=float)
    return np.where(np.isfinite(a), a, np.nan)


def padded_limits(
    values: Sequence[np.ndarray | float], pad: float = 0.08
) -> tuple[float, float] | None:
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


def top_label(ax: Any, text: str, x: float, *, drop: float) -> None:
    """Small grey text centred at data x, ``drop`` points below the top of the axes."""
    ax.annotate(
        text, (x, 1.0), xycoords=("data", "axes fraction"), xytext=(0, -drop),
        textcoords="offset points", ha="center", va="top", fontsize=8, color="0.3",
    )  # fmt: skip


def set_step_axis(ax: Any, steps: np.ndarray, scale: str) -> None:
    """Log x (symlog through a step 0, as ``jaxslt.stages.step_axis`` places it) or linear."""
    if scale != "log":
        return
    if steps[0] > 0:
        ax.set_xscale("log")
    else:
        ax.set_xscale("symlog", linthresh=float(steps[steps > 0][0]), linscale=1.0)
