"""Resumable LLC studies: a grid of ``estimate_llc`` cells → a crash-safe results store.

A study is a TOML spec (or a ``Spec``) naming a problem entry point (``"module:function"`` →
``(loss_fn, data)``), checkpoints (an orbax directory or in-memory pytrees) and a grid of
``estimate_llc`` settings; every combination × checkpoint is a cell, identified by a hash of
its settings. ``run`` executes the cells not yet stored (locally, reusing compiled programs, or
as Ray tasks), writing each to a SQLite store the moment it finishes; a crash loses at most the
cells in flight and a rerun skips finished cells. ``status``, ``report``, ``load_results`` and
``to_csv`` read it back. Command line: ``jaxslt study run|status|report SPEC``.

Modules, by job:

- ``spec``: a TOML file (or a ``Spec`` built in Python) → a checked ``Spec``;
- ``settings``: which settings a spec may set, their JSON form and the checks of their values;
- ``identity``: what names a cell (its identity and id), from defaults frozen per
  ``SCHEMA_VERSION``;
- ``cells``: a spec → its ``Cell`` s (``expand``);
- ``entry_points``: importing and calling the code a spec names (``StudyProblem``);
- ``checkpoints``: where the checkpoints come from (orbax, memory, an entry point);
- ``store``: the SQLite store and its sidecar traces;
- ``calibrations``: ``step_size="auto"`` calibrated once per group of cells, stored;
- ``execution``: running one cell, and the ``Backend`` protocol with its ``Recorder``;
- ``runner`` (the local backend), ``distributed`` (the Ray backend), ``driver`` (``run``: the
  store, the cells to run, a backend);
- ``report`` (status, table, plots), ``examples`` (ready entry points).
"""

from jaxslt.study.cells import Cell, expand
from jaxslt.study.checkpoints import EntryPointCheckpoints, MemoryCheckpoints, OrbaxCheckpoints
from jaxslt.study.driver import RunSummary, run
from jaxslt.study.entry_points import FULL_DATA, EntryPointError, StudyProblem
from jaxslt.study.execution import execute_cell
from jaxslt.study.identity import SCHEMA_VERSION
from jaxslt.study.report import (
    StudyReport,
    StudyStatus,
    load_results,
    plot_llc_vs_checkpoint,
    report,
    status,
    to_csv,
)
from jaxslt.study.spec import Spec, load_spec, spec_from_dict
from jaxslt.study.store import CellOutcome, Store, StoreError

__all__ = [
    "FULL_DATA",
    "SCHEMA_VERSION",
    "Cell",
    "CellOutcome",
    "EntryPointCheckpoints",
    "EntryPointError",
    "MemoryCheckpoints",
    "OrbaxCheckpoints",
    "RunSummary",
    "Spec",
    "Store",
    "StoreError",
    "StudyProblem",
    "StudyReport",
    "StudyStatus",
    "execute_cell",
    "expand",
    "load_results",
    "load_spec",
    "plot_llc_vs_checkpoint",
    "report",
    "run",
    "spec_from_dict",
    "status",
    "to_csv",
]
