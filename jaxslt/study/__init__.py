"""Resumable LLC studies: a grid of ``estimate_llc`` cells → a crash-safe results store.

A study is a TOML spec (or a ``Spec``) naming a problem entry point (``"module:function"`` →
``(loss_fn, data)``), checkpoints (an orbax directory or in-memory pytrees) and a grid of
``estimate_llc`` settings; every combination × checkpoint is a cell, identified by a hash of
its settings. ``run`` executes the cells not yet stored (locally, reusing compiled programs, or
as Ray tasks), writing each to a SQLite store the moment it finishes; a crash loses at most the
cells in flight and a rerun skips finished cells. ``status``, ``report``, ``load_results`` and
``to_csv`` read it back. Command line: ``jaxslt study run|status|report SPEC``.

Modules: ``spec`` (TOML → cells), ``store`` (SQLite + sidecar traces), ``runner`` (local),
``distributed`` (Ray), ``report`` (status, table, plots), ``examples`` (ready entry points).
"""

from jaxslt.study.report import (
    StudyReport,
    StudyStatus,
    load_results,
    plot_llc_vs_checkpoint,
    report,
    status,
    to_csv,
)
from jaxslt.study.runner import RunSummary, execute_cell, run
from jaxslt.study.spec import (
    FULL_DATA,
    Cell,
    EntryPointCheckpoints,
    EntryPointError,
    MemoryCheckpoints,
    OrbaxCheckpoints,
    Spec,
    StudyProblem,
    expand,
    load_spec,
    spec_from_dict,
)
from jaxslt.study.store import SCHEMA_VERSION, CellOutcome, Store, StoreError

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
