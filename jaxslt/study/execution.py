"""What running a study's cells shares, locally and on Ray: the ``Backend`` protocol that both
implement and the ``Recorder`` they report to; one cell → a ``CellOutcome`` (``execute_cell``),
the memoised problem (``load_problem``), the compilation cache, the versions and worker name a
row records, and the progress ``Tracker`` across cells.

The driver (``jaxslt.study.driver.run``) picks the cells to run, opens the store and hands the
cells to a backend: ``jaxslt.study.runner.LocalBackend`` (this process) or
``jaxslt.study.distributed.RayBackend`` (Ray tasks). A backend reports every cell to the
``Recorder`` twice: when it starts (the store marks it ``running``, so a crash leaves it to the
next run) and when it finishes (the store writes its outcome at once).
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
from typing import Any, Protocol, runtime_checkable

import numpy as np

from jaxslt.study.cells import Cell
from jaxslt.study.entry_points import StudyProblem, as_problem, call_entry_point
from jaxslt.study.spec import Spec
from jaxslt.study.store import CellOutcome, Store
from jaxslt.types import PyTree

__all__ = [
    "Backend",
    "Recorder",
    "Tracker",
    "duration",
    "enable_compilation_cache",
    "execute_cell",
    "failed_outcome",
    "is_transient",
    "library_versions",
    "load_problem",
    "result_values",
    "worker_name",
]


@functools.cache
def library_versions() -> dict[str, str]:
    """The versions a row records: jaxslt, jax, jaxlib, numpy, Python and the JAX backend."""
    import jax
    import jaxlib

    return {
        # the parent package is imported before any of its submodules: no import edge needed
        "jaxslt": sys.modules["jaxslt"].__version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
    }


def worker_name() -> str:
    """This process, as a row's ``worker`` column names it: ``host:pid``."""
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


def failed_outcome(
    cell: Cell, error: str, started: float, load_seconds: float = 0.0, *, transient: bool = False
) -> CellOutcome:
    """A ``failed`` outcome carrying ``error``; ``transient``: the failure may not repeat
    (out of memory, a lost worker), so the store keeps the cell for the next run."""
    return CellOutcome(
        cell, "failed", {}, None, error, started, time.time(), load_seconds,
        0.0, worker_name(), library_versions(), transient,
    )  # fmt: skip


_TRANSIENT_WORDS = ("resource_exhausted", "out of memory", "outofmemory", "worker died",
                    "node died")  # fmt: skip


def is_transient(err: BaseException) -> bool:
    """Whether ``err`` says the machine failed rather than the cell: memory exhausted (host or
    device), a worker or node lost. Such a cell is retried by the next run."""
    if isinstance(err, MemoryError):
        return True
    text = f"{type(err).__name__}: {err}".lower()
    return any(word in text for word in _TRANSIENT_WORDS)


def execute_cell(
    problem: StudyProblem, params: PyTree, cell: Cell, *, load_seconds: float = 0.0
) -> CellOutcome:
    """Run one cell: ``estimate_llc(problem.loss_fn, params, data slice, key=key(seed),
    **settings)`` (``Cell.kwargs``: an auto cell runs at its group's calibration). An
    exception becomes a ``failed`` outcome carrying its message: one cell's failure (every
    chain diverged, a bad restriction) is a result to store, not a reason to stop a study of
    hundreds of cells.

    Args:
      problem: the study's ``StudyProblem``.
      params: the checkpoint's pytree (w*).
      cell: the ``Cell`` to run.
      load_seconds: the seconds it took to load ``params``, recorded with the outcome.

    Returns:
      The ``CellOutcome``, "done" or "failed".
    """
    import jax

    from jaxslt.estimator import estimate_llc

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
        if cell.calibration is not None:  # the group's cautions, after the cell's own
            values["warnings"] = list(
                dict.fromkeys([*values["warnings"], *cell.calibration.warnings()])
            )
        traces = {
            "loss_trace": np.asarray(result.loss_trace),
            "burnin_loss_trace": np.asarray(result.burnin_loss_trace),
        }
    except Exception as err:  # stored as the cell's outcome; see the docstring
        return failed_outcome(
            cell, f"{type(err).__name__}: {err}", started, load_seconds,
            transient=is_transient(err),
        )  # fmt: skip
    return CellOutcome(
        cell, "done", values, traces, None, started, time.time(), load_seconds,
        time.perf_counter() - clock, worker_name(), library_versions(),
    )  # fmt: skip


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
    value = call_entry_point(spec.problem, spec.root, spec.problem_kwargs, "[study] problem")
    problem = as_problem(value, f"problem {spec.problem_name!r}")
    _problems[key] = problem
    while len(_problems) > 4:
        _problems.popitem(last=False)
    return problem


_problems: collections.OrderedDict[tuple, StudyProblem] = collections.OrderedDict()


class Tracker:
    """Progress across cells: a tqdm bar on a terminal, else a status line every
    ``every`` seconds (and at the end) on stderr; silent with ``show=False``."""

    def __init__(self, name: str, total: int, finished: int, todo: int, show: bool | None) -> None:
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
        eta = f", ETA {duration(left * elapsed / finished_now)}" if finished_now else ""
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

    def note(self, text: str) -> None:
        """A line of news (e.g. a calibration starting), unless silent."""
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        elif self.lines:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.lines and self.todo:
            print(self.line(), file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    """``seconds`` for people: ``42s``, ``3m07s``, ``2h05m``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Recorder:
    """Where a backend reports its cells: ``dispatched`` marks a cell ``running`` in the store
    (a crash leaves it to the next run) and counts it in the progress; ``finished`` writes its
    outcome to the store at once (sidecar, then row), counts it and keeps it in ``outcomes``
    for the run's summary. Only the process that holds the store's writer lock records."""

    def __init__(self, store: Store, tracker: Tracker) -> None:
        self.store = store
        self.tracker = tracker
        self.outcomes: list[CellOutcome] = []

    def dispatched(self, cell: Cell, worker: str) -> None:
        """``cell`` starts (or is handed to ``worker``)."""
        self.store.mark_running(cell, worker)
        self.tracker.started()

    def finished(self, outcome: CellOutcome) -> None:
        """A cell's outcome (``done`` or ``failed``): stored now."""
        self.store.record(outcome)
        self.tracker.finished_cell(outcome)
        self.outcomes.append(outcome)


@runtime_checkable
class Backend(Protocol):
    """Runs a study's cells somewhere and reports each to the ``Recorder``: ``dispatched``
    when it starts, ``finished`` with its ``CellOutcome``. A failure inside a cell (or loading
    its checkpoint) is a ``failed`` outcome, not an exception; ``run`` raises only when the
    backend itself cannot go on (the cells it did not finish stay for the next run).
    Implementations: ``jaxslt.study.runner.LocalBackend`` and
    ``jaxslt.study.distributed.RayBackend``."""

    def run(self, cells: Sequence[Cell], recorder: Recorder) -> None:
        """Run ``cells`` (in this order where the backend has an order)."""
        ...
