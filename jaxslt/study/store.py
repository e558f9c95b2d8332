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
import zipfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from jaxslt.study.calibrations import StudyCalibration
from jaxslt.study.cells import Cell
from jaxslt.study.identity import SCHEMA_VERSION  # one version: this layout and the identities

__all__ = [
    "COLUMNS",
    "SCHEMA_VERSION",
    "STATUSES",
    "CellOutcome",
    "Store",
    "StoreError",
    "describe_sqlite_error",
    "sidecar_problem",
]

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
# step_size="auto": one calibration per group (jaxslt.study.calibrations). Created by every
# writer that opens the store, so a store made before the table existed gains it.
_CALIBRATIONS = """
CREATE TABLE IF NOT EXISTS calibrations (
    group_id TEXT PRIMARY KEY,
    step INTEGER NOT NULL,
    settings TEXT NOT NULL,
    cautions TEXT NOT NULL,
    explanation TEXT NOT NULL,
    created_at REAL NOT NULL
)
"""
COLUMNS = (
    "cell_id", "status", "step", "data", "seed", "settings", "identity", "attempts",
    *_RESULT_COLUMNS, *_RUN_COLUMNS,
)  # fmt: skip


class StoreError(RuntimeError):
    """A store that cannot be read or written: not SQLite, corrupted, or on read-only media.
    The message is one line naming the file, what is wrong and what to do."""


def describe_sqlite_error(path: pathlib.Path, err: sqlite3.Error, writing: bool) -> StoreError:
    """A one-line ``StoreError`` for ``err`` raised on the store at ``path`` (``writing``:
    while writing): what is wrong and what to do."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    lowered = text.lower()
    if "readonly" in lowered or "read-only" in lowered or "unable to open" in lowered:
        what = "cannot be written (read-only file or folder?)" if writing else "cannot be opened"
        todo = (
            "make its folder writable, or point the spec's store at a writable place"
            if writing
            else "check that it exists and is readable"
        )
    elif "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
        what = "is not a readable SQLite store (corrupted, truncated or another kind of file)"
        todo = "move it aside (and its .traces folder) and run the study again to rebuild it"
    elif "locked" in lowered or "busy" in lowered:
        what = "is locked by another process"
        todo = "wait for the other process to finish, then try again"
    else:
        what = "failed"
        todo = "check the file, or move it aside and run the study again"
    return StoreError(f"study store {str(path)!r} {what} ({text}); {todo}")


def _guarded(method: Callable) -> Callable:
    """Turn an ``sqlite3`` error inside a ``Store`` method into a one-line ``StoreError``."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as err:
            raise describe_sqlite_error(self.path, err, not self.read_only) from err

    return wrapper


class CellOutcome(NamedTuple):
    """What running one cell produced, ready to store.

    Attributes:
      cell: the ``Cell``.
      status: "done" or "failed".
      values: the result columns (estimate, diagnostics, warnings).
      traces: the arrays of the sidecar (done cells); None for failed ones.
      error: the failure's message (failed cells); else None.
      started_at: when the cell started (Unix time).
      finished_at: when it finished (Unix time).
      load_seconds: seconds spent loading its checkpoint.
      run_seconds: seconds spent running it.
      worker: the process that ran it, ``host:pid``.
      versions: the library versions it ran with.
      transient: a failure that may not repeat (out of memory, a lost worker).
    """

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
    transient: bool = False  # a failure that may not repeat (out of memory, a lost worker)


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


def _connect(path: pathlib.Path, *, read_only: bool = False) -> sqlite3.Connection:
    if read_only:  # no journal-mode switch, no file created: works on read-only media
        uri = pathlib.Path(os.path.abspath(path)).as_uri()
        try:
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=60, isolation_level=None)
            conn.execute("PRAGMA user_version").fetchone()
        except sqlite3.OperationalError:  # a WAL store whose folder is read-only
            conn = sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)
        conn.row_factory = sqlite3.Row
        return conn
    conn = sqlite3.connect(path, timeout=60, isolation_level=None)  # explicit transactions
    conn.row_factory = sqlite3.Row
    return conn  # WAL and synchronous=FULL are set once the file is known to be a study store


def sidecar_problem(path: pathlib.Path) -> str | None:
    """Why the trace sidecar at ``path`` is unusable ("missing", "truncated or corrupted"),
    or None when it is a whole ``.npz`` holding ``loss_trace``."""
    if not path.exists():
        return "missing"
    try:
        with zipfile.ZipFile(path) as archive:
            if archive.testzip() is not None or "loss_trace.npy" not in archive.namelist():
                return "truncated or corrupted"
    except (zipfile.BadZipFile, OSError, EOFError):
        return "truncated or corrupted"
    return None


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
    ".traces")``. Open it with ``Store(path)``; only the run holding ``writer()`` writes.

    Args:
      path: the SQLite file.
      create: create the store if missing and open it for writing; False opens an existing
        store read-only (status, report, load_results: nothing is written, so a store on
        read-only media can be read).

    Raises:
      FileNotFoundError: ``create=False`` and the store does not exist yet.
      StoreError: not SQLite, corrupted, or on read-only media.
      RuntimeError: a store written by a newer jaxslt (a newer schema).
    """

    def __init__(self, path: str | pathlib.Path, *, create: bool = True) -> None:
        """``create=False`` opens an existing store read-only (status, report, load_results:
        nothing is written, so a store on read-only media can be read)."""
        self.path = pathlib.Path(path)
        self.traces_dir = self.path.with_suffix(".traces")
        self.read_only = not create
        if not create and not self.path.exists():
            raise FileNotFoundError(
                f"study store {str(self.path)!r} does not exist yet: run the study first"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(
                f"study store {str(self.path)!r}: cannot create its folder ({err.strerror}); "
                "point the spec's store at a writable place"
            ) from None
        try:
            self._open(create)
        except sqlite3.Error as err:
            raise describe_sqlite_error(self.path, err, create) from err

    def _open(self, create: bool) -> None:
        self._conn = _connect(self.path, read_only=not create)
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            self._conn.close()
            raise RuntimeError(
                f"study store {str(self.path)!r} has schema version {version}, newer than this "
                f"jaxslt's {SCHEMA_VERSION}: upgrade jaxslt to read it"
            )
        tables = {
            row[0]
            for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if (version > 0 or tables) and "cells" not in tables:
            self._conn.close()
            raise StoreError(
                f"study store {str(self.path)!r} is an SQLite database but not a jaxslt study "
                f"store (tables {sorted(tables)}); point the spec's store at another file"
            )
        self._empty = version == 0 and not create  # a reader racing the first writer
        if create:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
        if version < SCHEMA_VERSION and create:
            with _transaction(self._conn):
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        if create:
            with _transaction(self._conn):
                self._conn.execute(_CALIBRATIONS)

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

        real = self.path.resolve()  # one lock per store, whatever path (symlink) reached it
        lock_path = real.with_name(real.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise StoreError(
                f"study store {str(self.path)!r}: cannot create its lock file {str(lock_path)!r} "
                f"({err.strerror}); make its folder writable, or point the spec's store at a "
                "writable place"
            ) from None
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

        real = self.path.resolve()
        lock_path = real.with_name(real.name + ".lock")
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

    @_guarded
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

    @_guarded
    def record(self, outcome: CellOutcome) -> None:
        """Store a finished cell: sidecar first (temp file, fsync, rename, fsync the folder),
        then its row in one transaction. A ``done`` row is never overwritten."""
        cell = outcome.cell
        traces = None
        if outcome.traces is not None:
            traces = self._write_sidecar(cell.cell_id, outcome.traces)
        row = {
            "cell_id": cell.cell_id,
            # a transient failure is not stored as "failed" (which a run skips): the row
            # stays "running", i.e. interrupted, and the next run retries it
            "status": "running" if outcome.transient else outcome.status,
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

    @_guarded
    def record_calibration(self, calibration: StudyCalibration) -> None:
        """Store a calibration group's calibration (one committed transaction); the first one
        stored for a group is kept."""
        with _transaction(self._conn) as conn:
            conn.execute(
                "INSERT INTO calibrations (group_id, step, settings, cautions, explanation, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (group_id) DO NOTHING",
                (
                    calibration.group, calibration.step, _sql_value(dict(calibration.settings)),
                    _sql_value(list(calibration.cautions)), calibration.explanation, time.time(),
                ),
            )  # fmt: skip

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

    @_guarded
    def statuses(self) -> dict[str, str]:
        """cell id → status, for every stored cell."""
        if self._empty:
            return {}
        return dict(self._conn.execute("SELECT cell_id, status FROM cells").fetchall())

    @_guarded
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

    @_guarded
    def calibrations(self) -> dict[str, StudyCalibration]:
        """group id → its stored ``StudyCalibration`` (``step_size="auto"`` cells)."""
        if (
            self._empty
            or not self._conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'calibrations'"
            ).fetchone()
        ):
            return {}
        rows = self._conn.execute(
            "SELECT group_id, step, settings, cautions, explanation FROM calibrations"
        )
        return {
            group: StudyCalibration(
                group, step, json.loads(settings), tuple(json.loads(cautions)), explanation
            )
            for group, step, settings, cautions, explanation in rows.fetchall()
        }

    @_guarded
    def load_traces(self, cell_id: str) -> dict[str, np.ndarray]:
        """The sidecar arrays of a finished cell (``loss_trace``: (chains, draws) minibatch
        losses at the kept draws; ``burnin_loss_trace``: (chains, burn-in))."""
        row = self._conn.execute(
            "SELECT status, traces, step, seed FROM cells WHERE cell_id = ?", (cell_id,)
        ).fetchone()
        if row is None:
            raise KeyError(f"cell {cell_id!r} is not in {str(self.path)!r}")
        if row["traces"] is None:
            raise KeyError(f"cell {cell_id!r} has no traces (status {row['status']!r})")
        path = self.path.parent / row["traces"]
        problem = sidecar_problem(path)
        if problem:
            raise StoreError(
                f"cell {cell_id} (step {row['step']}, seed {row['seed']}): its trace sidecar "
                f"{str(path)!r} is {problem}; run the study again to recompute the cell"
            )
        with np.load(path) as npz:
            return {k: npz[k] for k in npz.files}

    @_guarded
    def damaged(self) -> dict[str, str]:
        """cell id → what is wrong, for every ``done`` cell whose trace sidecar is missing,
        truncated or corrupted (each sidecar is read through: CRC-checked)."""
        if self._empty:
            return {}
        rows = self._conn.execute("SELECT cell_id, traces FROM cells WHERE status = 'done'")
        out = {}
        for cell_id, traces in rows.fetchall():
            problem = "missing" if traces is None else sidecar_problem(self.path.parent / traces)
            if problem:
                out[cell_id] = f"trace sidecar {problem}"
        return out

    @_guarded
    def invalidate(self, cell_ids: list[str], reason: str) -> None:
        """Set ``done`` cells back to ``running`` (rerun by this or the next run), e.g. when
        their sidecar is damaged; the reason goes to ``error``."""
        with _transaction(self._conn) as conn:
            conn.executemany(
                "UPDATE cells SET status = 'running', error = ? WHERE cell_id = ?",
                [(reason, cell_id) for cell_id in cell_ids],
            )

    @_guarded
    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` ("ok" for a sound file)."""
        return self._conn.execute("PRAGMA integrity_check").fetchone()[0]
