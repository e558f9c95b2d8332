"""``plot_calibration``: a step_size × localization (× nβ) grid, ``jaxslt.calibrate``'s table:
the estimate vs ε and the MALA acceptance vs ε, one line per γ."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from jaxslt.plots.common import (
    TRUTH_COLOR,
    accept_positional_path,
    format_number,
    output_path,
    save_figure,
    top_label,
)

__all__ = ["CALIBRATION_FIGSIZE", "MALA_TARGET", "plot_calibration"]

CALIBRATION_FIGSIZE = (11.0, 5.0)
MALA_TARGET = (0.8, 0.95)

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
            label = rf"$n\beta$ = {format_number(key[0], 5)}, $\gamma$ = {format_number(key[1])}"
        else:
            label = rf"$\gamma$ = {format_number(key[-1])}"
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


@accept_positional_path
def plot_calibration(
    table: Any,
    *,
    true_llc: float | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    """Calibration grid plot of a step_size × localization table; returns the figure, written
    to ``path`` when given.

    Left: estimate ± std vs ε (log axis), one line per γ; healthy cells (ok and nothing
    diverged) filled, unhealthy ones hollow, the selected cell circled, cells without an
    estimate (all chains diverged) marked × at the bottom, the ε → 0 extrapolation as a diamond
    at the left edge, ``true_llc`` dashed. Right: MALA acceptance vs ε per γ with the target
    band 0.8–0.95 (NaN acceptances skipped).

    Args:
      table: a pandas DataFrame (``jaxslt.calibrate``'s ``.table``) with columns step_size,
        localization, llc_mean, llc_std, mala_accept, diverged (number of diverged chains),
        ok (bool), selected (bool; the recommended cell) and optionally nbeta (one line per
        (nβ, γ) when it varies), extrapolated and extrapolated_std (the ε → 0 estimate per
        localization).
      true_llc: the exact λ, drawn dashed; None draws none.
      path: write the figure there too (png, pdf or svg by suffix; folders created).

    Returns:
      The ``matplotlib.figure.Figure`` (open, not registered with pyplot).

    Raises:
      ValueError: an input it cannot draw (the message says which), or a ``path`` suffix
        other than png, pdf or svg.
    """
    import pandas as pd

    out = None if path is None else output_path(path)
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
        top_label(ax_est, r"$\varepsilon \to 0$", x_extra, drop=4)
    if true_llc is not None:
        ax_est.axhline(float(true_llc), color=TRUTH_COLOR, ls="--", lw=1.3, zorder=2)
        handles.append(Line2D([], [], color=TRUTH_COLOR, ls="--", lw=1.3))
        labels.append(rf"true $\lambda$ = {format_number(true_llc)}")

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
            parts.append(rf"$n\beta$ = {format_number(nb[0], 6)}")
        elif nb.size > 1:
            parts.append(r"$n\beta$ varies (one line per $n\beta$, $\gamma$)")
    if len(selected) == 1:
        row = selected.iloc[0]
        chosen = rf"selected $\varepsilon$ = {format_number(row['step_size'], 3)}, "
        chosen += rf"$\gamma$ = {format_number(row['localization'])}"
        if "nbeta" in table and table["nbeta"].nunique() > 1:
            chosen += rf", $n\beta$ = {format_number(row['nbeta'], 6)}"
        estimate = f"{format_number(row['llc_mean'])} ± {format_number(row['llc_std'], 2)}"
        chosen += rf": $\hat\lambda$ = {estimate}"
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
        save_figure(fig, out)
    return fig
