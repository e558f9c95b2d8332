"""Reading a study back: status (counts and ETA), the results table, plots of LLC vs checkpoint.

- ``status(spec)``: how many of the spec's cells are done, running, failed or pending, and an
  ETA = (pending + running cells) × mean time of the finished cells ÷ max(1, cells running),
  a rough figure that assumes the remaining cells cost what the finished ones did.
- ``load_results(spec or store)``: a pandas DataFrame, one row per stored cell: ``cell_id``,
  ``status``, ``step`` (checkpoint), ``data`` (slice), ``seed``, one column per setting (lists
  and tables as canonical JSON text), the estimate (``llc_mean``, ``llc_std`` across chains,
  ddof=1), the nβ, γ, ε, chains and draws actually used (``nbeta_used``, ...,
  ``num_draws_used``: ``step_size="auto"`` resolves them, see ``jaxslt.study.calibrations``),
  diagnostics, ``error``, timings, ``versions``. ``to_csv`` writes it.
- ``report(spec, out=...)``: the table of finished cells and one figure per data slice of LLC
  vs checkpoint step, one line per setting (the grid values other than seed), the mean over
  seeds with error bars = the std across seeds (ddof=1) when there are several seeds, else the
  cell's own across-chain std. ``plot_llc_vs_checkpoint(table, spec, data=...)`` draws one
  slice's figure; as every ``jaxslt.plots`` function it returns the ``matplotlib.figure.Figure``
  (no pyplot) and writes it only when given ``path=``.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from jaxslt.study.calibrations import StudyCalibration
from jaxslt.study.cells import expand
from jaxslt.study.checkpoints import EntryPointCheckpoints
from jaxslt.study.execution import duration
from jaxslt.study.identity import cell_identity
from jaxslt.study.spec import Spec, as_spec
from jaxslt.study.store import Store

__all__ = [
    "StudyReport",
    "StudyStatus",
    "load_results",
    "plot_llc_vs_checkpoint",
    "report",
    "status",
    "summary_text",
    "to_csv",
]

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure


class StudyStatus(NamedTuple):
    """Counts over the spec's cells.

    Attributes:
      name: the study's name.
      total: the spec's cells.
      done: finished cells.
      running: cells running now (0 when no run is active).
      failed: cells stored as failed.
      pending: cells not started yet.
      interrupted: rows left ``running`` by a run that is no longer alive (they rerun next
        time).
      eta_s: the estimated seconds left; None when nothing finished yet or no run is active.
      active: a run is writing to the store now.
      damaged: done cells whose trace sidecar is missing or truncated.
    """

    name: str
    total: int
    done: int
    running: int
    failed: int
    pending: int
    interrupted: int
    eta_s: float | None
    active: bool
    damaged: int = 0  # done cells whose trace sidecar is missing or truncated

    def __str__(self) -> str:
        parts = [
            f"study {self.name!r}: {self.done}/{self.total} done",
            f"{self.running} running",
            f"{self.failed} failed",
            f"{self.pending} pending",
        ]
        if self.interrupted:
            parts.append(f"{self.interrupted} interrupted (rerun by the next run)")
        if self.damaged:
            parts.append(
                f"{self.damaged} damaged (done, but the trace sidecar is missing or truncated; "
                "the next run recomputes them)"
            )
        text = ", ".join(parts)
        if not self.active:
            text += "; no run in progress"
        elif self.eta_s is not None:
            text += f"; ETA {duration(self.eta_s)}"
        return text


def _store(spec: Spec) -> Store | None:
    path = spec.store_path
    return Store(path, create=False) if path.exists() else None


def _declared_steps(spec: Spec) -> list[int] | None:
    """The steps of checkpoints made by an entry point, as the spec declares them (its
    ``steps`` keyword argument), so that counting cells need not call the entry point (it may
    train a model); None when the spec does not declare them."""
    checkpoints = spec.checkpoints
    steps = (
        checkpoints.kwargs.get("steps") if isinstance(checkpoints, EntryPointCheckpoints) else None
    )
    if not isinstance(steps, list | tuple) or not steps:
        return None
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in steps):
        return None
    return sorted(set(steps))


def _stored_cells(spec: Spec, rows: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """One entry per cell of the study: its stored row, or None if it has none.

    Checkpoints from an entry point with declared steps are not made: a cell's id hashes the
    checkpoint's content, so its rows are matched on everything else (problem, step,
    settings); when the store holds rows of several versions of those checkpoints, the one
    started last counts. Otherwise the cells are expanded and matched by id."""
    steps = _declared_steps(spec)
    if steps is None:
        by_id = {r["cell_id"]: r for r in rows}
        return [by_id.get(c.cell_id) for c in expand(spec)]

    def content_free(identity: str) -> str:
        identity = json.loads(identity)
        identity.get("checkpoint", {}).pop("sha256", None)
        return json.dumps(identity, sort_keys=True)

    latest = {}
    for row in sorted(rows, key=lambda r: r["started_at"] or 0.0):
        latest[content_free(row["identity"])] = row
    points = spec.grid_points()
    return [
        latest.get(content_free(cell_identity(spec, {"step": step}, point)))
        for step in steps
        for point in points
    ]


def status(spec: Spec | str | pathlib.Path) -> StudyStatus:
    """Where the study stands (reads the store; starts nothing).

    Args:
      spec: a ``Spec`` or the path of a TOML spec.

    Returns:
      The ``StudyStatus``.
    """
    spec = as_spec(spec)
    store = _store(spec)
    rows, active, broken = [], False, {}
    if store is not None:
        with store:
            active = store.writer_active()
            rows = store.rows()
            broken = store.damaged()
    mine = _stored_cells(spec, rows)
    damaged = sum(r is not None and r["cell_id"] in broken for r in mine)
    count = {s: sum(r is not None and r["status"] == s for r in mine) for s in ("done", "failed")}
    running = sum(r is not None and r["status"] == "running" for r in mine)
    pending = len(mine) - count["done"] - count["failed"] - running
    times = [
        (r["run_seconds"] or 0.0) + (r["load_seconds"] or 0.0)
        for r in mine
        if r is not None and r["status"] == "done"
    ]
    eta = None
    if active and times:
        eta = (pending + running) * float(np.mean(times)) / max(1, running)
    return StudyStatus(
        spec.name,
        len(mine),
        count["done"],
        running if active else 0,
        count["failed"],
        pending if active else pending + running,
        0 if active else running,
        eta,
        active,
        damaged,
    )


def load_results(source: Spec | str | pathlib.Path, *, traces: bool = False) -> pd.DataFrame:
    """The stored cells as a pandas DataFrame (see the module docstring for the columns).

    Args:
      source: a ``Spec`` or a TOML spec path (only that spec's cells), or a store file
        (``.sqlite``: every row in it).
      traces: add a ``loss_trace`` column holding each finished cell's (chains, draws) array
        from its sidecar.

    Returns:
      One row per stored cell.
    """
    import pandas as pd

    if isinstance(source, str | pathlib.PurePath) and pathlib.Path(source).suffix != ".toml":
        path = pathlib.Path(source)
        if not path.exists():
            raise FileNotFoundError(f"study store {str(path)!r} does not exist")
        store, wanted = Store(path, create=False), None
    else:
        spec = as_spec(source)
        store = _store(spec)
        wanted = {c.cell_id for c in expand(spec)}
    if store is None:
        return pd.DataFrame(columns=["cell_id", "status", "step", "data", "seed"])
    with store:
        rows = [r for r in store.rows() if wanted is None or r["cell_id"] in wanted]
        loaded = {}
        if traces:
            for r in rows:
                if r["status"] == "done":
                    loaded[r["cell_id"]] = store.load_traces(r["cell_id"])["loss_trace"]
    records = []
    setting_names: list[str] = []
    for r in rows:
        settings = r.pop("settings") or {}
        for k in settings:
            if k not in setting_names:
                setting_names.append(k)
        flat = {
            k: json.dumps(v, sort_keys=True) if isinstance(v, list | dict) else v
            for k, v in settings.items()
        }
        r.pop("identity")
        for key in ("num_chains", "num_draws"):  # the run's, which "auto" may have raised
            r[f"{key}_used"] = r.pop(key)
        for key in ("llc_per_chain", "warnings", "observables", "versions"):
            if r.get(key) is not None and key != "llc_per_chain":
                r[key] = json.dumps(r[key], sort_keys=True)
        if traces:
            r["loss_trace"] = loaded.get(r["cell_id"])
        records.append({**{k: r[k] for k in ("cell_id", "status", "step", "data", "seed")},
                        **flat, **{k: v for k, v in r.items() if k not in flat}})  # fmt: skip
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        return pd.DataFrame(columns=["cell_id", "status", "step", "data", "seed"])
    order = ["step", "data", *[k for k in setting_names if k in frame], "seed"]
    return frame.sort_values(order, kind="stable", key=_sortable).reset_index(drop=True)


def _sortable(column):
    """Sort key that tolerates mixed None/number/str columns (settings may be None)."""
    return column.map(lambda v: (v is None, str(type(v)), v if v is not None else 0))


def to_csv(source: Spec | str | pathlib.Path, path: str | pathlib.Path) -> pathlib.Path:
    """Write ``load_results(source)`` to ``path`` as CSV.

    Args:
      source: as for ``load_results``.
      path: the CSV file (folders created).

    Returns:
      The path written.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    load_results(source).to_csv(path, index=False)
    return path


class StudyReport(NamedTuple):
    """What ``report`` found and wrote.

    Attributes:
      status: the ``StudyStatus``.
      table: the finished cells, a DataFrame.
      figures: data slice → Figure of LLC vs checkpoint.
      summary: readable text: status, compact table, failed cells' errors.
      files: the files written (empty without ``out``).
    """

    status: StudyStatus
    table: Any
    figures: dict[str, Any]
    summary: str
    files: tuple[pathlib.Path, ...]


def _setting_label(row, keys: list[str]) -> str:
    return ", ".join(f"{k}={row[k]}" for k in keys) if keys else "LLC"


OUTLIER_REACH = 3.0
"""``plot_llc_vs_checkpoint``: a mean further than this many interquartile ranges beyond the
quartiles of all the plotted means is drawn as an arrow at the axis' edge."""


def plot_llc_vs_checkpoint(
    table: Any,
    spec: Spec,
    *,
    data: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Figure:
    """λ̂ vs checkpoint step of one data slice: a line per setting (grid values other than seed
    and data), mean over seeds ± (std across seeds, or the cell's across-chain std with one
    seed). As ``jaxslt.plots.plot_trajectory`` draws a trajectory: the step axis is logarithmic
    when the steps span more than two decades, points whose cells failed their diagnostics are
    ringed in red, and the y limits are robust (one outlier is an arrow at the edge). Returns
    the figure; with ``path`` (png/pdf/svg) it is also written there, as every
    ``jaxslt.plots`` function does.

    Args:
      table: ``load_results``'s DataFrame.
      spec: the study's ``Spec`` (its grid names the settings).
      data: the slice (may be left out when the finished cells have only one).
      path: write the figure there too (png, pdf or svg by suffix; folders created).

    Returns:
      The ``matplotlib.figure.Figure``.

    Raises:
      ValueError: no such slice, or several and ``data`` not given.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from jaxslt.plots.common import output_path, padded_limits, save_figure, set_step_axis
    from jaxslt.plots.trajectory import draw_outliers, ring_failed
    from jaxslt.stages import axis_scale

    keys = [k for k in spec.grid if k not in ("seed", "data")]
    done = table[table["status"] == "done"]
    slices = sorted(done["data"].unique())
    if data is None:
        if len(slices) != 1:
            raise ValueError(
                f"the finished cells have {len(slices)} data slices {slices}: choose one with data="
            )
        data = slices[0]
    elif data not in slices:
        raise ValueError(f"no finished cell of data slice {data!r}; the slices are {slices}")
    out = None if path is None else output_path(path)
    part = done[done["data"] == data]
    fig = Figure(figsize=(8.0, 5.0), layout="constrained")
    ax = fig.add_subplot()
    all_steps = np.asarray(sorted(part["step"].unique()), dtype=float)
    scale = axis_scale(all_steps) if all_steps.size > 1 else "linear"
    set_step_axis(ax, all_steps, scale)
    seeds = part["seed"].nunique()
    groups = part.groupby(keys, sort=False, dropna=False) if keys else [((), part)]
    curves, failed_points, extra = [], [], []
    for _, rows in groups:
        by_step = rows.groupby("step")
        steps = np.asarray(sorted(by_step.groups))
        mean = by_step["llc_mean"].mean().loc[steps].to_numpy()
        if seeds > 1:
            err = by_step["llc_mean"].std(ddof=1).loc[steps].to_numpy()
        else:
            err = by_step["llc_std"].mean().loc[steps].to_numpy()
        # a point is failed when any of its cells failed its diagnostics (None: not diagnosed)
        ok = by_step["diagnostics_ok"].apply(lambda v: not (v == 0).any())
        ok = ok.loc[steps].to_numpy()
        ax.errorbar(steps, mean, yerr=np.nan_to_num(err), marker="o", capsize=3,
                    label=_setting_label(rows.iloc[0], keys))  # fmt: skip
        curves.append((steps.astype(float), mean, np.nan_to_num(err), ok))
        failed_points += [(x, y) for x, y, good in zip(steps, mean, ok, strict=True) if not good]
    if failed_points:
        handle = ring_failed(ax, *np.asarray(failed_points, dtype=float).T)
        extra.append((handle, f"failed diagnostics ({len(failed_points)} point(s))"))
    # robust limits: a mean beyond OUTLIER_REACH interquartile ranges of the quartiles (e.g.
    # λ̂ = −250 at step 0) is an arrow at the edge; the axis fits the other points' error bars
    means = np.concatenate([m for _, m, _, _ in curves])
    q25, q75 = np.nanpercentile(means, [25.0, 75.0]) if np.isfinite(means).any() else (0, 0)
    reach = OUTLIER_REACH * (q75 - q25) if q75 > q25 else np.inf
    lo, hi = q25 - reach, q75 + reach
    inside = [((m >= lo) & (m <= hi), m, e) for _, m, e, _ in curves]
    band = [np.concatenate([m - e, m + e])[np.tile(keep, 2)] for keep, m, e in inside]
    limits = padded_limits(band)
    beyond = 0
    if limits is not None:  # every setting's points in one call: labels at one step stagger
        points = [np.concatenate(parts) for parts in zip(*curves, strict=True)]
        beyond = draw_outliers(ax, points[0], points[1], limits, points[3])
    if beyond:
        arrow = Line2D([], [], color="tab:red", marker=r"$\uparrow$", ls="none")
        extra.append((arrow, f"{beyond} point(s) beyond the axis (arrows)"))
    ax.set_xlabel("checkpoint step" + (" (log scale)" if scale == "log" else ""))
    ax.set_ylabel("estimated LLC λ̂")
    spread = "std across seeds" if seeds > 1 else "std across chains"
    ax.set_title(f"{spec.name}: LLC vs checkpoint (data {data!r}; bars: {spread})")
    ax.grid(alpha=0.3)
    if keys or data == slices[0] or extra:  # without settings, "LLC" on the first slice
        handles, labels = ax.get_legend_handles_labels()
        for handle, label in extra:
            handles.append(handle)
            labels.append(label)
        ax.legend(handles, labels, fontsize="small")
    if out is not None:
        save_figure(fig, out)
    return fig


def report(
    spec: Spec | str | pathlib.Path, *, out: str | pathlib.Path | None = None
) -> StudyReport:
    """Status, the table of finished cells and the LLC-vs-checkpoint figures (one per data
    slice, ``plot_llc_vs_checkpoint``); with ``out``, also write ``results.csv`` (every stored
    cell of the spec), ``llc_vs_checkpoint[_<slice>].png`` and ``summary.txt`` there.

    Args:
      spec: a ``Spec`` or the path of a TOML spec.
      out: a folder to write the files to; None writes nothing.

    Returns:
      The ``StudyReport``.
    """
    spec = as_spec(spec)
    state = status(spec)
    table = load_results(spec)
    done = table[table["status"] == "done"] if len(table) else table
    slices = sorted(done["data"].unique()) if len(done) else []
    files: list[pathlib.Path] = []
    store = _store(spec)
    calibrations: list[StudyCalibration] = []
    if store is not None:
        with store:
            calibrations = list(store.calibrations().values())
    summary = summary_text(state, table, spec, calibrations)
    if out is not None:
        out = pathlib.Path(out)
        out.mkdir(parents=True, exist_ok=True)
        files.append(out / "results.csv")
        table.to_csv(files[-1], index=False)
    figures = {}
    for name in slices:
        file = None
        if out is not None:
            file = out / f"llc_vs_checkpoint{'' if len(slices) == 1 else f'_{name}'}.png"
            files.append(file)
        figures[str(name)] = plot_llc_vs_checkpoint(table, spec, data=name, path=file)
    if out is not None:
        files.append(out / "summary.txt")
        files[-1].write_text(summary + "\n")
    return StudyReport(state, done.reset_index(drop=True), figures, summary, tuple(files))


def summary_text(
    state: StudyStatus,
    table: pd.DataFrame,
    spec: Spec,
    calibrations: Sequence[StudyCalibration] = (),
) -> str:
    """The status line, a compact table (step, grid values, λ̂ ± std, diagnostics), the failed
    cells' errors and the ``step_size="auto"`` calibrations the cells used (their settings and
    why)."""
    lines = [str(state)]
    for cal in calibrations:
        chosen = ", ".join(
            f"{k} = {v if isinstance(v, int) else format(v, '.4g')}"
            for k, v in cal.settings.items()
        )
        lines += ["", f"step_size='auto', calibrated at step {cal.step}: {chosen}"]
        lines += [f"  {line}" for line in cal.explanation.splitlines()]
    if not len(table):
        return "\n".join(lines)
    keys = [k for k in spec.grid if k != "data"]
    cols = ["step", "data", *keys, "llc_mean", "llc_std", "diagnostics_ok"]
    done = table[table["status"] == "done"]
    if len(done):
        lines += ["", done[[c for c in cols if c in done]].to_string(index=False)]
    failed = table[table["status"] == "failed"]
    if len(failed):
        lines += ["", f"{len(failed)} failed cell(s):"]
        lines += [f"  step {r.step} {r.cell_id[:12]}: {r.error}" for r in failed.itertuples()]
    return "\n".join(lines)
