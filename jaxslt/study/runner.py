"""The local backend: a study's cells one after another in this process.

Cells come checkpoint-major, with the cells that share a compiled program (same shapes and
static settings) back to back (``jaxslt.study.driver.order_cells``); each checkpoint is loaded
once. The problem entry point was called once, so every cell passes the *same* ``loss_fn``
object to ``estimate_llc`` and its jit cache hits: a program compiles once per distinct shape,
whatever the step size, nβ, γ, seed or checkpoint values.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Sequence

from jaxslt.study.cells import Cell
from jaxslt.study.checkpoints import MemoryCheckpoints, OrbaxCheckpoints
from jaxslt.study.entry_points import StudyProblem
from jaxslt.study.execution import (
    Recorder,
    enable_compilation_cache,
    execute_cell,
    failed_outcome,
    worker_name,
)
from jaxslt.types import PyTree

__all__ = ["LocalBackend"]


class LocalBackend:
    """Runs cells in this process (a ``jaxslt.study.execution.Backend``).

    Args:
      problem: the study's problem (``load_problem``), shared by every cell.
      checkpoints: the resolved checkpoints (``resolve_checkpoints``).
      cache_dir: JAX's persistent compilation cache folder, set for this process when ``run``
        starts (unless one is set already); None leaves JAX's setting alone.
    """

    def __init__(
        self,
        problem: StudyProblem,
        checkpoints: OrbaxCheckpoints | MemoryCheckpoints,
        cache_dir: pathlib.Path | None = None,
    ) -> None:
        self.problem = problem
        self.checkpoints = checkpoints
        self.cache_dir = cache_dir

    def run(self, cells: Sequence[Cell], recorder: Recorder) -> None:
        """Run ``cells`` in order, loading a checkpoint when the step changes."""
        if self.cache_dir is not None:
            enable_compilation_cache(self.cache_dir)
        worker = worker_name()
        loaded: tuple[int, PyTree] | None = None
        for cell in cells:
            recorder.dispatched(cell, worker)
            load_seconds = 0.0
            if loaded is None or loaded[0] != cell.step:
                clock, started = time.perf_counter(), time.time()
                try:
                    params = self.checkpoints.load(cell.step, like=self.problem.like)
                except Exception as err:  # stored as this cell's failure; the study goes on
                    loaded = None
                    recorder.finished(
                        failed_outcome(cell, f"loading checkpoint step {cell.step}: {err}", started)
                    )
                    continue
                loaded = (cell.step, params)
                load_seconds = time.perf_counter() - clock
            recorder.finished(
                execute_cell(self.problem, loaded[1], cell, load_seconds=load_seconds)
            )
