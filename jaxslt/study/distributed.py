"""The Ray backend: each cell is a Ray task; only the driver writes the store.

At most as many tasks are in flight as the cluster has CPUs per cell (``[ray] num_cpus``).
Workers call the problem entry point once per process (the same ``loss_fn`` object across
tasks, so ``estimate_llc``'s jit cache hits) and share JAX's persistent compilation cache, so a
shape compiles once per machine.

Fault tolerance is Ray's task retry: ``ray.remote(max_retries=spec.max_retries)`` reruns a task
whose worker process died (killed, out of memory, node lost) on another worker; an exception
*inside* a cell is not a worker failure: ``execute_cell`` turns it into a ``failed`` outcome
(``retry_exceptions`` stays off, since it would repeat). A task that still fails after its
retries is stored as ``failed`` with Ray's error. The driver marks a cell ``running`` when it
dispatches it and records each outcome (sidecar, then row) as it arrives, so a driver crash
loses only the tasks in flight.

Workers need the problem entry point importable (install the package on the cluster, or pass
``runtime_env`` to your own ``ray.init``) and, for orbax checkpoints, the directory at the same
path (a shared file system). In-memory checkpoints go through Ray's object store, once each.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Sequence
from typing import Any

from jaxslt.study.cells import Cell
from jaxslt.study.checkpoints import MemoryCheckpoints, OrbaxCheckpoints
from jaxslt.study.execution import (
    Recorder,
    enable_compilation_cache,
    execute_cell,
    failed_outcome,
    load_problem,
    worker_name,
)
from jaxslt.study.spec import Spec
from jaxslt.study.store import CellOutcome
from jaxslt.types import PyTree

__all__ = ["RayBackend"]


# Per worker process: the last orbax checkpoint loaded, and whether the cache dir is set. (The
# problem is memoised by load_problem: the same loss_fn object across tasks, so estimate_llc's
# jit cache hits.)
_checkpoint: dict[tuple, PyTree] = {}
_configured: set[str] = set()


def _remote_cell(spec: Spec, params: PyTree, cell: Cell, cache_dir: str | None) -> CellOutcome:
    """The task body, run in a Ray worker: ``execute_cell`` with the worker's cached problem."""
    if cache_dir is not None and cache_dir not in _configured:
        try:
            enable_compilation_cache(cache_dir)
        except OSError:  # no such folder possible on this node: compile without the cache
            pass
        _configured.add(cache_dir)
    problem = load_problem(spec)  # memoised per worker process
    load_seconds = 0.0
    if params is None:  # orbax: read on the worker (the directory must be reachable there)
        checkpoints = spec.checkpoints
        ckey = (checkpoints.directory, checkpoints.root, checkpoints.item, cell.step)
        if ckey not in _checkpoint:
            clock, started = time.perf_counter(), time.time()
            try:
                loaded = checkpoints.load(cell.step, like=problem.like)
            except Exception as err:  # the cell's failure, stored by the driver
                return failed_outcome(cell, f"loading checkpoint step {cell.step}: {err}", started)
            _checkpoint.clear()
            _checkpoint[ckey] = loaded
            load_seconds = time.perf_counter() - clock
        params = _checkpoint[ckey]
    return execute_cell(problem, params, cell, load_seconds=load_seconds)


class RayBackend:
    """Runs cells as Ray tasks (a ``jaxslt.study.execution.Backend``).

    Args:
      spec: the study (sent to the workers; in-memory checkpoints travel separately, once each).
      checkpoints: the resolved checkpoints (``resolve_checkpoints``).
      address: a Ray address (``"auto"``, ``"ray://host:10001"``, ``"local"`` to start a local
        cluster); if Ray is already initialized in this process, that connection is used.
      cache_dir: JAX's persistent compilation cache folder, set in every worker (unless one is
        set there already); None leaves the workers' setting alone.
    """

    def __init__(
        self,
        spec: Spec,
        checkpoints: OrbaxCheckpoints | MemoryCheckpoints,
        address: str,
        cache_dir: pathlib.Path | None = None,
    ) -> None:
        self.spec = spec
        self.checkpoints = checkpoints
        self.address = address
        self.cache_dir = cache_dir

    def run(self, cells: Sequence[Cell], recorder: Recorder) -> None:
        """Dispatch ``cells`` as Ray tasks (a window of as many as the cluster has CPUs for)
        and record every outcome as it arrives. No cells: no cluster is contacted."""
        if not cells:
            return
        try:
            import ray
        except ImportError:
            raise ImportError(
                "running a study on Ray needs ray: pip install 'jaxslt[study]'"
            ) from None
        started_here = not ray.is_initialized()
        if started_here:
            extra = {"include_dashboard": False} if self.address == "local" else {}
            ray.init(address=self.address, **extra)
        try:
            self._dispatch(ray, cells, recorder)
        finally:
            if started_here:
                ray.shutdown()

    def _dispatch(self, ray: Any, cells: Sequence[Cell], recorder: Recorder) -> None:
        spec, checkpoints = self.spec, self.checkpoints
        remote = ray.remote(
            num_cpus=spec.num_cpus, max_retries=spec.max_retries, retry_exceptions=False
        )(_remote_cell)
        capacity = max(1, int(ray.cluster_resources().get("CPU", 1) // spec.num_cpus))
        cache = None if self.cache_dir is None else str(pathlib.Path(self.cache_dir).resolve())
        spec_ref = ray.put(spec if isinstance(checkpoints, OrbaxCheckpoints) else _light(spec))
        params_refs: dict[int, Any] = {}
        pending: dict[Any, tuple[Cell, float]] = {}
        queue = list(cells)
        queue.reverse()
        driver = worker_name()
        while queue or pending:
            while queue and len(pending) < capacity:
                cell = queue.pop()
                params = None
                if isinstance(checkpoints, MemoryCheckpoints):
                    if cell.step not in params_refs:
                        params_refs.clear()  # cells are checkpoint-major: free the last one
                        params_refs[cell.step] = ray.put(checkpoints.trees[cell.step])
                    params = params_refs[cell.step]
                recorder.dispatched(cell, f"ray (driver {driver})")
                pending[remote.remote(spec_ref, params, cell, cache)] = (cell, time.time())
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                cell, dispatched = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as err:  # retries used up
                    # a lost worker (killed, out of memory, node gone) is the machine's failure,
                    # not the cell's: kept for the next run; an error raised in the task is not
                    outcome = failed_outcome(
                        cell,
                        f"Ray task failed after {spec.max_retries} retries: "
                        f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                        dispatched,
                        transient=not isinstance(err, ray.exceptions.RayTaskError),
                    )
                recorder.finished(outcome)


def _light(spec: Spec) -> Spec:
    """The spec without its in-memory checkpoints (they travel as object refs, one each)."""
    import dataclasses

    return dataclasses.replace(spec, checkpoints=MemoryCheckpoints({0: None}))
