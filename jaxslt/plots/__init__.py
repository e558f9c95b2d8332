"""Diagnostic plots of LLC estimates, as figures and (when asked) files (png, pdf or svg).

One output convention for every plot function:

- it builds a ``matplotlib.figure.Figure`` directly (never ``pyplot``) and **returns it**;
- it writes a file **only when given** ``path=`` (keyword-only, ``str | os.PathLike | None``,
  default None), in the format of the suffix (png at ``DPI``, pdf, svg; anything else is a
  ValueError raised before drawing), missing parent folders created;
- it **closes nothing**: the figure is not registered with pyplot, so there is nothing to close;
  after writing it stays open and usable (add to it, write it again with ``save_figure``) and
  is freed like any object once the caller drops it. No window opens and no global state (the
  backend, pyplot's figure list, rcParams) changes, so the functions work headless, in threads
  and in notebooks alike.

``plot_trace(result, "file.png")``, ``plot_summary(...)`` and ``plot_calibration(...)`` with
the file as second positional argument (the form before this convention) still work, with a
``DeprecationWarning``.

One module per figure family:

- ``trace``: ``plot_trace(result)``: minibatch loss per chain (burn-in shaded) above the running
  LLC estimate per chain, with the final mean ± std band; ``plot_summary(result,
  diagnostics=...)``: a one-page (8.5 × 11 in) report: both trace panels, the per-chain
  estimates, the settings and the diagnostics' warnings (``diagnostics_lines``).
- ``calibration``: ``plot_calibration(table)``: a step_size × localization grid
  (``jaxslt.calibrate``'s table): estimate vs ε and MALA acceptance vs ε, one line per γ.
- ``stages``: ``plot_stages(steps, llc, stages)``: an LLC curve over training checkpoints split
  into the stages of ``jaxslt.stages.detect_stages``.
- ``trajectory``: ``plot_trajectory(table)``: ``llc_trajectory``'s table: λ̂ ± std against the
  training step (log axis across decades), the loss on a twin axis, failed checkpoints ringed,
  robust y limits (``robust_limits``).
- ``common``: what they share: ``DPI``, ``save_figure``, number formats, limits, colours.

Conventions are the package's (``docs/conventions.md``): nβ the weight on the mean loss, γ the
localization, ε the SGLD noise variance. Diverged chains (NaN/inf losses) are drawn dashed with a
dotted line at the divergence and labelled; non-finite values are never plotted or averaged.
Importing ``jaxslt`` does not import this package (nor matplotlib); ``jaxslt.plots`` does.
"""

from __future__ import annotations

from jaxslt.plots.calibration import CALIBRATION_FIGSIZE, plot_calibration
from jaxslt.plots.common import DPI, save_figure
from jaxslt.plots.stages import STAGES_FIGSIZE, plot_stages
from jaxslt.plots.trace import (
    SUMMARY_FIGSIZE,
    TRACE_FIGSIZE,
    diagnostics_lines,
    plot_summary,
    plot_trace,
)
from jaxslt.plots.trajectory import TRAJECTORY_FIGSIZE, plot_trajectory, robust_limits

__all__ = [
    "CALIBRATION_FIGSIZE",
    "DPI",
    "STAGES_FIGSIZE",
    "SUMMARY_FIGSIZE",
    "TRACE_FIGSIZE",
    "TRAJECTORY_FIGSIZE",
    "diagnostics_lines",
    "plot_calibration",
    "plot_stages",
    "plot_summary",
    "plot_trace",
    "plot_trajectory",
    "robust_limits",
    "save_figure",
]
