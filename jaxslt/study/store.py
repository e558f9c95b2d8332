"""The results store: one SQLite file, one row per cell, loss traces in sidecar ``.npz`` files.

Guarantees, and the protocol that gives them (tests kill -9 a writer at random moments and check
each one):

- **Idempotent.** The primary key is the cell id (a hash of the cell's settings), so a cell has
  at most one row; a run skips every cell whose row says ``done``, and an update never touches a
  ``done`` row.
- **Crash-safe.** A finished cell is written in two steps: its traces go to a temporary file in
  ``<store>.traces/`` that is fsynced, atomically renamed to ``<cell_id>.npz``, and the folder
  fsynced; only then is its row committed, in one transaction. A kill at any moment therefore
  loses at most the cells in flight: a committed row always has its sidecar, and a sidecar
  without a row (killed between rename and commit) is simply rewritten by the rerun. SQLite runs
  in WAL mode with ``synchronous=FULL``: a commit is on disk before it returns (WAL+NORMAL would
  survive a killed process too, the OS holding the written WAL, but could drop the last commits
  on power loss; FULL costs one fsync per cell, nothing next to a cell's sampling time), and an
  interrupted transaction rolls back on the next open (SQLite's atomic commit), never a torn row.
- **One writer.** A run holds an exclusive ``flock`` on ``<store>.lock`` for its lifetime; the
  kernel drops it when the process dies, so a killed run never blocks the next one, and a
  second concurrent run fails fast instead of interleaving. Readers (status, report) take no
  write lock: WAL lets them read while a run commits.
- **Versioned.** ``PRAGMA user_version`` holds the schema version; a store from a newer jaxslt
  is refused rather than misread.

Row states: ``running`` (started or dispatched, not finished: after a crash, such a row is
rerun), ``done`` (estimate and traces stored) and ``failed`` (the error message stored; rerun
only when asked, since most failures — every chain diverged, a bad setting — repeat).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pathlib
import socket
import sqlite3
import time
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from jaxslt.study.spec import Cell

SCHEMA_VERSION = 1
STATUSES = ("running", "done", "failed")

_RESULT_COLUMNS = {
    "llc_mean": "REAL",
    "llc_std": "REAL",
    "llc_per_chain": "TEXT",  # JSON list; null for diverged chains
    "init_loss": "REAL",
    "nbeta_used": "REAL",  # the nβ, γ and ε the run used (resolved defaults, "auto")
    "localization_used": "REAL",
    "step_size_used": "REAL",
    "num_chains": "INTEGER",
    "num_draws": "INTEGER",
    "num_diverged": "INTEGER",
    "mala_accept": "REAL",
    "accept_rate": "REAL",
    "diagnostics_ok": "INTEGER",
    "rhat": "REAL",
    "ess_bulk": "REAL",
    "ess_tail": "REAL",
    "trend": "REAL",
    "warnings": "TEXT",  # JSON list of the run's warnings
    "observables": "TEXT",  # JSON object (observables=True), else null
}
_RUN_COLUMNS = {
    "error": "TEXT",
    "traces": "TEXT",  # sidecar path relative to the store's folder
    "started_at": "REAL",  # unix times
    "finished_at": "REAL",
    "load_seconds": "REAL",  # loading the checkpoint
    "run_seconds": "REAL",  # the estimate_llc call, compilation included when it compiled
    "worker": "TEXT",  # host:pid that ran it
    "versions": "TEXT",  # JSON: jaxslt, jax, jaxlib, numpy, python, backend
}
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS cells (
    cell_id TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN {STATUSES}),
    step INTEGER NOT NULL,
    data TEXT NOT NULL,
    seed INTEGER NOT NULL,
    settings TEXT NOT NULL,
    identity TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    {", ".join(f"{k} {v}" for k, v in {**_RESULT_COLUMNS, **_RUN_COLUMNS}.items())}
);
CREATE INDEX IF NOT EXISTS cells_status ON cells (status);
"""
COLUMNS = (
    "cell_id", "status", "step", "data", "seed", "settings", "identity", "attempts",
    *_RESULT_COLUMNS, *_RUN_COLUMNS,
)  # fmt: skip


class CellOutcome(NamedTuple):
    """What running one cell produced, ready to store: ``status`` "done" or "failed",
    ``values`` the result columns, ``traces`` the arrays of the sidecar (done cells)."""

    cell: Cell
    status: str
    values: Mapping[str, Any]
    traces: Mapping[str, np.ndarray] | None
    error: str | None
    started_at: float
    finished_at: float
    load_seconds: float
    run_seconds: float
    worker: str
    versions: Mapping[str, str]


def _sql_value(value: Any) -> Any:
    """Python → SQLite: non-finite floats as NULL (SQLite has no NaN), containers as JSON."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, allow_nan=False, default=_json_default)
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    raise TypeError(f"cannot store {type(value).__name__} in JSON")


def _connect(path: pathlib.Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)  # explicit transactions
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.row_factory = sqlite3.Row
    return conn


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    """A study's results store at ``path`` (SQLite) with sidecars in ``path.with_suffix(
    ".traces")``. Open it with ``Store(path)``; only the run holding ``writer()`` writes."""

    def __init__(self, path: str | pathlib.Path, *, create: bool = True) -> None:
        self.path = pathlib.Path(path)
        self.traces_dir = self.path.with_suffix(".traces")
        if not create and not self.path.exists():
            raise FileNotFoundError(
                f"study store {str(self.path)!r} does not exist yet: run the study first"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = _connect(self.path)
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            self._conn.close()
            raise RuntimeError(
                f"study store {str(self.path)!r} has schema version {version}, newer than this "
                f"jaxslt's {SCHEMA_VERSION}: upgrade jaxslt to read it"
            )
        self._empty = version == 0 and not create  # a reader racing the first writer
        if version < SCHEMA_VERSION and create:
            with _transaction(self._conn):
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing (only under writer()) -------------------------------------------------------

    @contextlib.contextmanager
    def writer(self) -> Iterator[Store]:
        """Hold the store's writer lock (``flock``; released by the kernel if the process
        dies) and clear temporary sidecars a killed writer left behind."""
        import fcntl

        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            for attempt in range(40):  # a reader's momentary shared lock must not fail a run
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if attempt == 39:
                        holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                        raise RuntimeError(
                            f"another study run ({holder or 'unknown process'}) is writing "
                            f"{str(self.path)!r}; wait for it to finish or stop it"
                        ) from None
                    time.sleep(0.05)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
            self.traces_dir.mkdir(exist_ok=True)
            for stale in self.traces_dir.glob("*.tmp"):
                stale.unlink(missing_ok=True)
            yield self
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def writer_active(self) -> bool:
        """Whether some process holds the writer lock now (a run is in progress)."""
        import fcntl

        lock_path = self.path.with_name(self.path.name + ".lock")
        if not lock_path.exists():
            return False
        fd = os.open(lock_path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def mark_running(self, cell: Cell, worker: str) -> None:
        """Record that ``cell`` started (or was dispatched): one committed transaction."""
        with _transaction(self._conn) as conn:
            conn.execute(
                "INSERT INTO cells (cell_id, status, step, data, seed, settings, identity, "
                "attempts, started_at, worker) VALUES (?, 'running', ?, ?, ?, ?, ?, 1, ?, ?) "
                "ON CONFLICT (cell_id) DO UPDATE SET status = 'running', error = NULL, "
                "attempts = attempts + 1, started_at = excluded.started_at, "
                "worker = excluded.worker WHERE status != 'done'",
                (
                    cell.cell_id, cell.step, cell.data, cell.seed,
                    _sql_value(cell.settings), cell.identity, time.time(), worker,
                ),
            )  # fmt: skip

    def record(self, outcome: CellOutcome) -> None:
        """Store a finished cell: sidecar first (temp file, fsync, rename, fsync the folder),
        then its row in one transaction. A ``done`` row is never overwritten."""
        cell = outcome.cell
        traces = None
        if outcome.traces is not None:
            traces = self._write_sidecar(cell.cell_id, outcome.traces)
        row = {
            "cell_id": cell.cell_id,
            "status": outcome.status,
            "step": cell.step,
            "data": cell.data,
            "seed": cell.seed,
            "settings": cell.settings,
            "identity": cell.identity,
            **{k: outcome.values.get(k) for k in _RESULT_COLUMNS},
            "error": outcome.error,
            "traces": traces,
            "started_at": outcome.started_at,
            "finished_at": outcome.finished_at,
            "load_seconds": outcome.load_seconds,
            "run_seconds": outcome.run_seconds,
            "worker": outcome.worker,
            "versions": dict(outcome.versions),
        }
        names = list(row)
        update = ", ".join(f"{k} = excluded.{k}" for k in names if k != "cell_id")
        with _transaction(self._conn) as conn:
            conn.execute(
                f"INSERT INTO cells ({', '.join(names)}, attempts) "
                f"VALUES ({', '.join('?' * len(names))}, 1) "
                f"ON CONFLICT (cell_id) DO UPDATE SET {update} WHERE status != 'done'",
                [_sql_value(row[k]) for k in names],
            )

    def _write_sidecar(self, cell_id: str, arrays: Mapping[str, np.ndarray]) -> str:
        self.traces_dir.mkdir(exist_ok=True)
        final = self.traces_dir / f"{cell_id}.npz"
        tmp = self.traces_dir / f"{cell_id}.{os.getpid()}.tmp"
        buffer = io.BytesIO()
        np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
        with open(tmp, "wb") as f:
            f.write(buffer.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)  # atomic: the final name holds a whole file or nothing
        _fsync_dir(self.traces_dir)
        return f"{self.traces_dir.name}/{final.name}"

    # -- reading -----------------------------------------------------------------------------

    def statuses(self) -> dict[str, str]:
        """cell id → status, for every stored cell."""
        if self._empty:
            return {}
        return dict(self._conn.execute("SELECT cell_id, status FROM cells").fetchall())

    def rows(self) -> list[dict[str, Any]]:
        """Every stored row as a dict (JSON columns decoded)."""
        out: list[dict[str, Any]] = []
        if self._empty:
            return out
        for row in self._conn.execute("SELECT * FROM cells ORDER BY step, started_at"):
            record = dict(row)
            for key in ("settings", "llc_per_chain", "warnings", "observables", "versions"):
                if record.get(key) is not None:
                    record[key] = json.loads(record[key])
            out.append(record)
        return out

    def load_traces(self, cell_id: str) -> dict[str, np.ndarray]:
        """The sidecar arrays of a finished cell (``loss_trace``: (chains, draws) minibatch
        losses at the kept draws; ``burnin_loss_trace``: (chains, burn-in))."""
        row = self._conn.execute(
            "SELECT status, traces FROM cells WHERE cell_id = ?", (cell_id,)
        ).fetchone()
        if row is None:
            raise KeyError(f"cell {cell_id!r} is not in {str(self.path)!r}")
        if row["traces"] is None:
            raise KeyError(f"cell {cell_id!r} has no traces (status {row['status']!r})")
        with np.load(self.path.parent / row["traces"]) as npz:
            return {k: npz[k] for k in npz.files}

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` ("ok" for a sound file)."""
        return self._conn.execute("PRAGMA integrity_check").fetchone()[0]
