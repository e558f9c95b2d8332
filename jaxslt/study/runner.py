"""Running a study: the cells not yet finished, each stored as soon as it finishes.

``run(spec)`` (the thin shell) opens the store under its writer lock, expands the grid into
cells, drops those already ``done`` (and ``failed``, unless ``retry_failed``), and runs the rest:

- **locally** (default): one process, cells in checkpoint-major order with the cells that share
  a compiled program (same shapes and static settings) back to back. The problem entry point is
  called once, so every cell passes the *same* ``loss_fn`` object to ``estimate_llc`` and its
  jit cache hits: a program compiles once per distinct shape, whatever the step size, nβ, γ,
  seed or checkpoint values.
- **on Ray** (``address=``): each cell is a Ray task (``max_retries``: a task whose worker dies
  is rerun, not lost); at most as many tasks in flight as the cluster has CPUs per cell. Workers
  call the entry point once per process (same ``loss_fn`` reuse) and share JAX's persistent
  compilation cache, so a shape compiles once per machine. Only this driver writes the store.

``execute_cell`` is the pure part both use: one ``estimate_llc`` call → a ``CellOutcome``.
"""

from __future__ import annotations

import collections
import functools
import json
import math
import os
import pathlib
import platform
import socket
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from jaxslt.study.spec import (
    Cell,
    MemoryCheckpoints,
    OrbaxCheckpoints,
    Spec,
    StudyProblem,
    as_problem,
    expand,
    load_entry_point,
    load_spec,
    resolve_checkpoints,
)
from jaxslt.study.store import CellOutcome, Store

PyTree = Any


class RunSummary(NamedTuple):
    """What ``run`` did: ``total`` cells in the grid, ``skipped`` already finished before this
    run, ``ran`` finished now (``failed`` of them failed), ``remaining`` still to do (when
    ``max_cells`` stopped early), wall time ``elapsed_s``."""

    name: str
    store: pathlib.Path
    total: int
    skipped: int
    ran: int
    failed: int
    remaining: int
    elapsed_s: float
    errors: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = (
            f"study {self.name!r}: ran {self.ran} cell(s) in {self.elapsed_s:.1f} s "
            f"({self.failed} failed), {self.skipped} already finished, {self.remaining} "
            f"remaining, of {self.total}; store {self.store}"
        )
        return "\n".join([text, *(f"  failed: {e}" for e in self.errors[:10])])


@functools.cache
def library_versions() -> dict[str, str]:
    """The versions a row records: jaxslt, jax, jaxlib, numpy, Python and the JAX backend."""
    import jax
    import jaxlib

    import jaxslt

    return {
        "jaxslt": jaxslt.__version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
    }


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _float(value: Any) -> float | None:
    value = float(np.asarray(value))
    return value if math.isfinite(value) else None


def _nanmean(values: Any) -> float | None:
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


def result_values(result: Any, caught: Sequence[warnings.WarningMessage]) -> dict[str, Any]:
    """The store's result columns from an ``LLCResult`` and the warnings its run raised."""
    loss_trace = np.asarray(result.loss_trace)
    diag = result.diagnostics
    messages = [str(w.message) for w in caught]
    if diag is not None:
        messages += [m for m in diag.warnings if m not in messages]
    observables = getattr(result, "observables", None)
    if observables is not None:
        observables = {k: np.asarray(v).tolist() for k, v in observables._asdict().items()}
    return {
        "llc_mean": _float(result.llc_mean),
        "llc_std": _float(result.llc_std),
        "llc_per_chain": [_float(v) for v in np.asarray(result.llc_per_chain)],
        "init_loss": _float(result.init_loss),
        "nbeta_used": _float(result.nbeta),
        "localization_used": _float(result.localization),
        "step_size_used": _float(result.step_size),
        "num_chains": int(loss_trace.shape[0]),
        "num_draws": int(loss_trace.shape[1]),
        "num_diverged": int(np.sum(np.asarray(result.diverged))),
        "mala_accept": _nanmean(result.mala_accept),
        "accept_rate": _nanmean(result.accept_rate),
        "diagnostics_ok": None if diag is None else int(diag.ok),
        "rhat": None if diag is None else _float(diag.rhat),
        "ess_bulk": None if diag is None else _float(diag.ess_bulk),
        "ess_tail": None if diag is None else _float(diag.ess_tail),
        "trend": None if diag is None else _float(diag.trend),
        "warnings": list(dict.fromkeys(messages)),
        "observables": observables,
    }


def _failed(cell: Cell, error: str, started: float, load_seconds: float = 0.0) -> CellOutcome:
    return CellOutcome(
        cell, "failed", {}, None, error, started, time.time(), load_seconds,
        0.0, worker_name(), library_versions(),
    )  # fmt: skip


def execute_cell(
    problem: StudyProblem, params: PyTree, cell: Cell, *, load_seconds: float = 0.0
) -> CellOutcome:
    """Run one cell: ``estimate_llc(problem.loss_fn, params, data slice, key=key(seed),
    **settings)``. An exception becomes a ``failed`` outcome carrying its message: one cell's
    failure (every chain diverged, a bad restriction) is a result to store, not a reason to stop
    a study of hundreds of cells."""
    import jax

    from jaxslt import estimate_llc

    started = time.time()
    clock = time.perf_counter()
    try:
        data = problem.slice(cell.data)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = estimate_llc(
                problem.loss_fn, params, data, key=jax.random.key(cell.seed), progress=False,
                **cell.kwargs(),
            )  # fmt: skip
        values = result_values(result, caught)
        traces = {
            "loss_trace": np.asarray(result.loss_trace),
            "burnin_loss_trace": np.asarray(result.burnin_loss_trace),
        }
    except Exception as err:  # stored as the cell's outcome; see the docstring
        return _failed(cell, f"{type(err).__name__}: {err}", started, load_seconds)
    return CellOutcome(
        cell, "done", values, traces, None, started, time.time(), load_seconds,
        time.perf_counter() - clock, worker_name(), library_versions(),
    )  # fmt: skip


def order_cells(cells: Sequence[Cell]) -> list[Cell]:
    """Checkpoint-major (each checkpoint loaded once), and within a checkpoint the cells of one
    compiled program (``Cell.shape_key``) back to back, in order of first appearance."""
    rank: dict[str, int] = {}
    for cell in cells:
        rank.setdefault(cell.shape_key, len(rank))
    order = sorted(range(len(cells)), key=lambda i: (cells[i].step, rank[cells[i].shape_key], i))
    return [cells[i] for i in order]


def enable_compilation_cache(directory: str | pathlib.Path) -> bool:
    """Point JAX's persistent compilation cache at ``directory`` (every program cached, however
    fast it compiled), unless this process already set a cache directory; returns whether it
    did. Applies to programs compiled from now on."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    if jax.config.jax_compilation_cache_dir:
        return False
    pathlib.Path(directory).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    compilation_cache.reset_cache()  # re-read the settings if this process compiled before
    return True


def load_problem(spec: Spec) -> StudyProblem:
    """The spec's problem: its entry point called with its kwargs, normalised. Memoised per
    process (the last few problems, keyed like the cell identity: entry point name and kwargs),
    so that repeated runs in one process (a notebook, a Ray worker running task after task)
    pass the same ``loss_fn`` object to estimate_llc and reuse its compiled programs."""
    key = (spec.problem_name, json.dumps(spec.problem_kwargs, sort_keys=True), spec.root)
    if key in _problems:
        _problems.move_to_end(key)
        return _problems[key]
    function = load_entry_point(spec.problem, spec.root)
    problem = as_problem(function(**spec.problem_kwargs), f"problem {spec.problem_name!r}")
    _problems[key] = problem
    while len(_problems) > 4:
        _problems.popitem(last=False)
    return problem


_problems: collections.OrderedDict[tuple, StudyProblem] = collections.OrderedDict()


def as_spec(spec: Spec | str | pathlib.Path) -> Spec:
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, str | pathlib.PurePath):
        return load_spec(spec)
    raise TypeError(f"spec must be a jaxslt.study.Spec or the path of a TOML spec; got {spec!r}")


class _Tracker:
    """Progress across cells: a tqdm bar on a terminal, else a status line every
    ``every`` seconds (and at the end) on stderr; silent with ``show=False``."""

    def __init__(self, name: str, total: int, finished: int, todo: int, show: bool | None):
        self.name, self.total, self.finished, self.todo = name, total, finished, todo
        self.done = self.failed = self.running = 0
        self.start = time.perf_counter()
        self.last_line = self.start
        self.bar = None
        self.lines = show is not False
        if show is not False and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=todo, desc=f"study {name}", unit="cell", dynamic_ncols=True)
            self.lines = False

    def line(self) -> str:
        finished_now = self.done + self.failed
        elapsed = time.perf_counter() - self.start
        left = self.todo - finished_now
        eta = f", ETA {_duration(left * elapsed / finished_now)}" if finished_now else ""
        return (
            f"study {self.name}: {self.finished + self.done}/{self.total} done, {self.running} "
            f"running, {self.failed} failed{eta}"
        )

    def started(self, count: int = 1) -> None:
        self.running += count

    def finished_cell(self, outcome: CellOutcome) -> None:
        self.running -= 1
        if outcome.status == "done":
            self.done += 1
        else:
            self.failed += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(failed=self.failed, running=self.running, refresh=False)
        elif self.lines and time.perf_counter() - self.last_line >= 10.0:
            print(self.line(), file=sys.stderr, flush=True)
            self.last_line = time.perf_counter()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.lines and self.todo:
            print(self.line(), file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


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

    Args:
      address: None runs locally in this process; otherwise a Ray address (``"auto"``,
        ``"ray://host:10001"``, ``"local"`` to start a local cluster) and each cell is a Ray
        task. If Ray is already initialized in this process, that connection is used.
      max_cells: stop after dispatching this many cells (the rest stay for the next run).
      retry_failed: also rerun cells stored as ``failed``.
      progress: a bar on a terminal (a status line every 10 s otherwise); False: silent.
      compilation_cache: JAX's persistent compilation cache folder (True: ``<store>.jaxcache``
        next to the store; False: leave JAX's setting alone). Set for this process (local) or
        in every worker (Ray) unless a cache folder is already configured there.

    The problem entry point is called here first in either case (memoised), to check every
    data slice the grid names before any cell runs. Returns a ``RunSummary``. Raises
    ValueError/TypeError for a bad spec or data slice before any cell runs, RuntimeError if
    another run holds the store.
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
    with Store(spec.store_path) as store, store.writer():
        if address is None and cache_dir is not None:
            enable_compilation_cache(cache_dir)  # before the entry points, which may compile
        problem = load_problem(spec)
        checkpoints = resolve_checkpoints(spec)
        cells = expand(spec, checkpoints)
        for name in sorted({c.data for c in cells}):
            problem.slice(name)  # every data slice exists, before anything runs
        statuses = store.statuses()
        skip = {"done"} if retry_failed else {"done", "failed"}
        todo = order_cells([c for c in cells if statuses.get(c.cell_id) not in skip])
        skipped = len(cells) - len(todo)
        finished_before = sum(statuses.get(c.cell_id) == "done" for c in cells)
        if max_cells is not None:
            todo = todo[:max_cells]
        tracker = _Tracker(spec.name, len(cells), finished_before, len(todo), progress)
        outcomes: list[CellOutcome] = []
        try:
            if address is None:
                _run_local(problem, checkpoints, todo, store, tracker, outcomes)
            elif todo:  # nothing to run: no need for a cluster
                from jaxslt.study.distributed import run_on_ray

                run_on_ray(spec, checkpoints, todo, store, tracker, outcomes, address, cache_dir)
        finally:
            tracker.close()
        statuses = store.statuses()
    failed = [o for o in outcomes if o.status == "failed"]
    return RunSummary(
        spec.name,
        pathlib.Path(spec.store_path),
        len(cells),
        skipped,
        len(outcomes),
        len(failed),
        sum(statuses.get(c.cell_id) not in ("done", "failed") for c in cells),
        time.perf_counter() - start,
        tuple(f"step {o.cell.step}, {o.cell.cell_id[:12]}: {o.error}" for o in failed),
    )


def _run_local(
    problem: StudyProblem,
    checkpoints: OrbaxCheckpoints | MemoryCheckpoints,
    todo: Sequence[Cell],
    store: Store,
    tracker: _Tracker,
    outcomes: list[CellOutcome],
) -> None:
    worker = worker_name()
    loaded: tuple[int, PyTree] | None = None
    for cell in todo:
        store.mark_running(cell, worker)
        tracker.started()
        load_seconds = 0.0
        if loaded is None or loaded[0] != cell.step:
            clock, started = time.perf_counter(), time.time()
            try:
                loaded = (cell.step, checkpoints.load(cell.step, like=problem.like))
            except Exception as err:  # stored as this cell's failure; the study goes on
                loaded = None
                outcome = _failed(cell, f"loading checkpoint step {cell.step}: {err}", started)
                store.record(outcome)
                tracker.finished_cell(outcome)
                outcomes.append(outcome)
                continue
            load_seconds = time.perf_counter() - clock
        outcome = execute_cell(problem, loaded[1], cell, load_seconds=load_seconds)
        store.record(outcome)
        tracker.finished_cell(outcome)
        outcomes.append(outcome)
