"""Running a study: the cells not yet finished, each stored as soon as it finishes.

``run(spec)`` (the thin shell, the *driver*) opens the store under its writer lock, expands the
grid into cells, drops those already ``done`` (and ``failed``, unless ``retry_failed``), orders
the rest (``order_cells``) and hands them to a backend (``jaxslt.study.execution.Backend``):

- **locally** (default): ``jaxslt.study.runner.LocalBackend``, one process, cells in
  checkpoint-major order with the cells that share a compiled program back to back; the problem
  entry point is called once, so a program compiles once per distinct shape.
- ``step_size="auto"`` cells: each calibration group is calibrated once, here, before any
  cell runs, and stored (``jaxslt.study.calibrations``).
- **on Ray** (``address=``): ``jaxslt.study.distributed.RayBackend``, each cell a Ray task
  (``max_retries``: a task whose worker dies is rerun, not lost); workers share JAX's persistent
  compilation cache. Only this driver writes the store.

``jaxslt.study.execution.execute_cell`` is the pure part both use: one ``estimate_llc`` call →
a ``CellOutcome``.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Sequence
from typing import NamedTuple

from jaxslt.study.calibrations import StudyCalibration, calibrate_group, group_of
from jaxslt.study.cells import Cell, expand, resolve_checkpoints
from jaxslt.study.checkpoints import MemoryCheckpoints, OrbaxCheckpoints
from jaxslt.study.distributed import RayBackend
from jaxslt.study.entry_points import StudyProblem
from jaxslt.study.execution import (
    Backend,
    Recorder,
    Tracker,
    failed_outcome,
    load_problem,
    worker_name,
)
from jaxslt.study.runner import LocalBackend
from jaxslt.study.spec import Spec, as_spec
from jaxslt.study.store import Store

__all__ = ["FLAGGED_SHOWN", "RunSummary", "order_cells", "run"]

FLAGGED_SHOWN = 5
"""How many cells that failed their diagnostics ``RunSummary`` names when printed."""


class RunSummary(NamedTuple):
    """What ``run`` did.

    Attributes:
      name: the study's name.
      store: the store's path.
      total: cells in the grid.
      skipped: cells already finished before this run.
      ran: cells finished now.
      failed: how many of those failed.
      remaining: cells still to do (when ``max_cells`` stopped early).
      elapsed_s: wall time, in seconds.
      errors: the failed cells' errors.
      flagged: the cells run now that finished but failed their diagnostics, each as
        "step S (grid values): its first warning" (all of its warnings are stored in the
        ``warnings`` column of ``load_results``).
    """

    name: str
    store: pathlib.Path
    total: int
    skipped: int
    ran: int
    failed: int
    remaining: int
    elapsed_s: float
    errors: tuple[str, ...] = ()
    flagged: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = (
            f"study {self.name!r}: ran {self.ran} cell(s) in {self.elapsed_s:.1f} s "
            f"({self.failed} failed), {self.skipped} already finished, {self.remaining} "
            f"remaining, of {self.total}; store {self.store}"
        )
        lines = [text, *(f"  failed: {e}" for e in self.errors[:10])]
        if self.flagged:
            lines.append(
                f"  {len(self.flagged)} cell(s) failed their diagnostics (the warnings column of "
                "load_results has every warning):"
            )
            lines += [f"    {f}" for f in self.flagged[:FLAGGED_SHOWN]]
            if len(self.flagged) > FLAGGED_SHOWN:
                lines.append(f"    ... and {len(self.flagged) - FLAGGED_SHOWN} more")
        return "\n".join(lines)


def order_cells(cells: Sequence[Cell]) -> list[Cell]:
    """Checkpoint-major (each checkpoint loaded once), and within a checkpoint the cells of one
    compiled program (``Cell.shape_key``) back to back, in order of first appearance."""
    rank: dict[str, int] = {}
    for cell in cells:
        rank.setdefault(cell.shape_key, len(rank))
    order = sorted(range(len(cells)), key=lambda i: (cells[i].step, rank[cells[i].shape_key], i))
    return [cells[i] for i in order]


def run(
    spec: Spec | str | pathlib.Path,
    *,
    address: str | None = None,
    max_cells: int | None = None,
    retry_failed: bool = False,
    progress: bool | None = None,
    compilation_cache: bool | str | pathlib.Path = True,
) -> RunSummary:
    """Run every cell of ``spec`` (a ``Spec`` or a TOML path) that is not finished yet.

    The problem entry point is called here first in either case (memoised), to check every
    data slice the grid names before any cell runs.

    Args:
      spec: a ``Spec`` or the path of a TOML spec.
      address: None runs locally in this process; otherwise a Ray address (``"auto"``,
        ``"ray://host:10001"``, ``"local"`` to start a local cluster) and each cell is a Ray
        task. If Ray is already initialized in this process, that connection is used.
      max_cells: stop after dispatching this many cells (the rest stay for the next run).
      retry_failed: also rerun cells stored as ``failed``.
      progress: a bar on a terminal (a status line every 10 s otherwise); False: silent.
      compilation_cache: JAX's persistent compilation cache folder (True: ``<store>.jaxcache``
        next to the store; False: leave JAX's setting alone). Set for this process (local) or
        in every worker (Ray) unless a cache folder is already configured there.

    Returns:
      A ``RunSummary``.

    Raises:
      ValueError: a bad spec or data slice, before any cell runs.
      TypeError: a spec value of the wrong type, before any cell runs.
      RuntimeError: another run holds the store.
    """
    if max_cells is not None and (
        isinstance(max_cells, bool) or not isinstance(max_cells, int) or max_cells < 0
    ):
        raise ValueError(f"max_cells must be an integer >= 0 or None; got {max_cells!r}")
    spec = as_spec(spec)
    start = time.perf_counter()
    cache_dir = None
    if compilation_cache is True:
        cache_dir = pathlib.Path(spec.store_path).with_suffix(".jaxcache")
    elif compilation_cache:
        cache_dir = pathlib.Path(compilation_cache)
    # the spec's problem, checkpoints, grid and data slices are checked before the store (or
    # its lock, traces folder, compilation cache) is created: a bad spec leaves nothing behind
    problem = load_problem(spec)
    checkpoints = resolve_checkpoints(spec)
    cells = expand(spec, checkpoints)
    for name in sorted({c.data for c in cells}):
        problem.slice(name)  # every data slice exists, before anything runs
    with Store(spec.store_path) as store, store.writer():
        damaged = store.damaged()  # done rows whose sidecar is gone: recompute them
        if damaged:
            store.invalidate(list(damaged), "trace sidecar missing or damaged; recomputed")
        statuses = store.statuses()
        skip = {"done"} if retry_failed else {"done", "failed"}
        todo = order_cells([c for c in cells if statuses.get(c.cell_id) not in skip])
        skipped = len(cells) - len(todo)
        finished_before = sum(statuses.get(c.cell_id) == "done" for c in cells)
        if max_cells is not None:
            todo = todo[:max_cells]
        backend: Backend
        if address is None:
            backend = LocalBackend(problem, checkpoints, cache_dir)
        else:
            backend = RayBackend(spec, checkpoints, address, cache_dir)
        recorder = Recorder(
            store, Tracker(spec.name, len(cells), finished_before, len(todo), progress)
        )
        try:
            todo = _calibrated(todo, store, problem, checkpoints, recorder)
            backend.run(todo, recorder)
        finally:
            recorder.tracker.close()
        statuses = store.statuses()
    outcomes = recorder.outcomes
    failed = [o for o in outcomes if o.status == "failed"]  # transient ones included
    return RunSummary(
        spec.name,
        pathlib.Path(spec.store_path),
        len(cells),
        skipped,
        len(outcomes),
        len(failed),
        sum(statuses.get(c.cell_id) not in ("done", "failed") for c in cells),
        time.perf_counter() - start,
        tuple(
            f"step {o.cell.step}, {o.cell.cell_id[:12]}: {o.error}"
            + (" (transient: not stored as failed, the next run retries it)" if o.transient else "")
            for o in failed
        ),
        tuple(
            f"step {o.cell.step} ({_grid_values(o.cell, spec)}): {o.values['warnings'][0]}"
            for o in outcomes
            if o.status == "done"
            and o.values.get("diagnostics_ok") == 0
            and o.values.get("warnings")
        ),
    )


def _grid_values(cell: Cell, spec: Spec) -> str:
    """The cell's values of the spec's grid, e.g. "step_size=0.0001, seed=1"."""
    values = {"seed": cell.seed, "data": cell.data, **cell.settings}
    return ", ".join(f"{k}={values.get(k)}" for k in spec.grid)


def _calibrated(
    cells: Sequence[Cell],
    store: Store,
    problem: StudyProblem,
    checkpoints: OrbaxCheckpoints | MemoryCheckpoints,
    recorder: Recorder,
) -> list[Cell]:
    """``cells`` with each ``step_size="auto"`` cell's group calibration attached: the stored
    one, else calibrated now at the study's last checkpoint and stored at once. A group whose
    calibration fails (no usable setting, the checkpoint unreadable) fails its cells here,
    each with that error; the rest are returned."""
    first = {}
    for cell in cells:
        group = group_of(cell.data, cell.settings)
        if group is not None:
            first.setdefault(group, cell)
    if not first:
        return list(cells)
    known: dict[str, StudyCalibration] = store.calibrations()
    errors: dict[str, str] = {}
    step = max(checkpoints.step_list())
    params = None
    for group, cell in first.items():
        if group in known:
            continue
        recorder.tracker.note(
            f"study {recorder.tracker.name}: calibrating step_size='auto' at step {step} "
            f"(data {cell.data!r}), once for all its cells"
        )
        try:
            if params is None:
                params = checkpoints.load(step, like=problem.like)
            known[group] = calibrate_group(
                problem.loss_fn, params, problem.slice(cell.data), group, step, cell.settings
            )
        except Exception as err:  # the group's cells fail with it; the study goes on
            errors[group] = (
                f"step_size='auto' calibration at step {step}: {type(err).__name__}: {err}"
            )
            continue
        store.record_calibration(known[group])
    out = []
    for cell in cells:
        group = group_of(cell.data, cell.settings)
        if group in errors:
            recorder.dispatched(cell, worker_name())
            recorder.finished(failed_outcome(cell, errors[group], time.time()))
        else:
            out.append(cell if group is None else cell._replace(calibration=known[group]))
    return out
