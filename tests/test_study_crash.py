"""jaxslt.study under failure: a real ``jaxslt study run`` subprocess killed with SIGKILL at
random moments, again and again, then resumed; and the Ray runner on a real local cluster
with a worker process that dies mid-task."""

from __future__ import annotations

import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxslt import study

KILLS = 8
SEEDS = 100  # × 2 checkpoints = 200 cells, tens of milliseconds each once compiled

CRASH_TOML = f"""
[study]
name = "crash"
problem = "jaxslt.study.examples:dln_problem"
problem_kwargs = {{ widths = [3, 2, 3], rank = 1, num_examples = 64 }}

[checkpoints]
entry_point = "jaxslt.study.examples:dln_checkpoints"
kwargs = {{ widths = [3, 2, 3], rank = 1, num_examples = 64, steps = [0, 200] }}

[settings]
step_size = 1e-4
localization = 10
num_chains = 2
num_draws = 20
num_burnin = 10
batch_size = 16
acceptance_checks = 0
diagnostics = false   # spares each restarted process the ArviZ import

[grid]
seed = {list(range(SEEDS))}
"""


def _done_rows(store) -> dict[str, tuple]:
    """cell id → (finished_at, llc_mean, sidecar) of the done rows; {} before the store exists
    (opened read-only: polling must not create the file)."""
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as conn:
            rows = conn.execute(
                "SELECT cell_id, finished_at, llc_mean, traces FROM cells WHERE status = 'done'"
            ).fetchall()
    except sqlite3.OperationalError:  # not created yet, or its schema not committed yet
        return {}
    return {r[0]: r[1:] for r in rows}


def _check_store(spec, snapshot: dict[str, tuple]) -> dict[str, tuple]:
    """The store is sound after a kill: SQLite's integrity check passes, each cell has at most
    one row, every done row's sidecar exists, loads and reproduces the row's estimate, no
    temporary sidecar is mistaken for a finished one, and every row that was done before is
    unchanged (its cell was not run again)."""
    store = spec.store_path
    with sqlite3.connect(store) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        total, distinct = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT cell_id) FROM cells"
        ).fetchone()
        assert total == distinct
        statuses = dict(conn.execute("SELECT status, COUNT(*) FROM cells GROUP BY status"))
    assert set(statuses) <= {"done", "running"}, statuses  # no cell failed
    assert statuses.get("running", 0) <= 1  # the local runner has one cell in flight
    done = _done_rows(store)
    with study.Store(store, create=False) as reader:
        rows = {r["cell_id"]: r for r in reader.rows()}
        for cell_id in done:
            traces = reader.load_traces(cell_id)
            row = rows[cell_id]
            per_chain = np.float32(row["nbeta_used"]) * (
                traces["loss_trace"].mean(axis=1) - np.float32(row["init_loss"])
            )
            np.testing.assert_allclose(per_chain, row["llc_per_chain"], rtol=1e-5, atol=1e-5)
    for cell_id, before in snapshot.items():
        assert done[cell_id] == before, "a finished cell was run or written again"
    return done


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(tmp_path):
    spec_path = tmp_path / "crash.toml"
    spec_path.write_text(CRASH_TOML)
    spec = study.load_spec(spec_path)
    rng = random.Random(7)
    snapshot: dict[str, tuple] = {}
    log = open(tmp_path / "runs.log", "wb")
    command = [sys.executable, "-m", "jaxslt.cli", "study", "run", str(spec_path)]
    for _ in range(KILLS):
        before = len(snapshot)
        proc = subprocess.Popen(command, stdout=log, stderr=log)
        if rng.random() < 0.2:
            time.sleep(rng.uniform(0.0, 4.0))  # somewhere in start-up (or the first cells)
        else:  # somewhere among the cells: after this run stored one, plus a random delay
            deadline = time.monotonic() + 120
            while len(_done_rows(spec.store_path)) <= before and proc.poll() is None:
                assert time.monotonic() < deadline, "the run made no progress"
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.05))  # within the next cell or two
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the run finished before it was killed"
        if spec.store_path.exists():
            snapshot = _check_store(spec, snapshot)
    assert 0 < len(snapshot) < 2 * SEEDS  # the kills landed mid-study
    with sqlite3.connect(spec.store_path) as conn:
        (running,) = conn.execute("SELECT COUNT(*) FROM cells WHERE status = 'running'").fetchone()
    state = study.status(spec)  # a killed run's in-flight cell shows as interrupted
    assert not state.active
    assert (state.done, state.interrupted, state.running) == (len(snapshot), running, 0)
    assert state.pending == 2 * SEEDS - len(snapshot)
    resumed = subprocess.run(command, stdout=log, stderr=log, timeout=300, check=False)
    log.close()
    assert resumed.returncode == 0, (tmp_path / "runs.log").read_text()[-3000:]
    done = _check_store(spec, snapshot)
    assert len(done) == 2 * SEEDS  # nothing lost
    cells = study.expand(spec)
    assert set(done) == {c.cell_id for c in cells}
    # Each stored estimate is the one an uninterrupted run computes (same key, same program).
    problem = study.execution.load_problem(spec)
    checkpoints = study.cells.resolve_checkpoints(spec)
    for cell in rng.sample(cells, 2):
        direct = study.execute_cell(problem, checkpoints.load(cell.step), cell)
        assert done[cell.cell_id][1] == direct.values["llc_mean"]


CRASHY = '''
import os
import pathlib

import ray

from jaxslt.study.examples import dln_problem


def problem(marker, **kwargs):
    """dln_problem, except that the first Ray worker to call it dies on the spot."""
    if ray.get_runtime_context().get_task_id() is not None:  # inside a Ray task
        path = pathlib.Path(marker)
        if not path.exists():
            path.write_text(str(os.getpid()))
            os._exit(1)
    return dln_problem(**kwargs)
'''


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # ray.init starts its daemons
def test_ray_cells_whose_worker_dies_are_retried_and_stored_once(tmp_path):
    ray = pytest.importorskip("ray", reason="the Ray runner needs ray: pip install 'jaxslt[study]'")
    from jaxslt.study import examples

    (tmp_path / "crashy.py").write_text(CRASHY)
    marker = tmp_path / "died"
    spec = study.Spec(
        problem="crashy:problem",
        problem_kwargs={"marker": str(marker), "widths": [3, 2, 3], "rank": 1, "num_examples": 64},
        checkpoints=examples.dln_checkpoints([3, 2, 3], 1, steps=[0, 200], num_examples=64),
        store="ray.sqlite",
        settings={"step_size": 1e-4, "localization": 10.0, "num_chains": 2, "num_draws": 20,
                  "num_burnin": 10, "batch_size": 16, "diagnostics": False},
        grid={"seed": [0, 1, 2]},
        root=tmp_path,
        max_retries=2,
    )  # fmt: skip
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = study.run(spec, address="auto", progress=False)
    finally:
        ray.shutdown()
    assert marker.exists(), "no worker died: the test did not test retries"
    dead = f"{socket.gethostname()}:{int(marker.read_text())}"
    assert (summary.ran, summary.failed, summary.remaining) == (6, 0, 0)
    table = study.load_results(spec)
    assert len(table) == 6 and table["cell_id"].is_unique and (table["status"] == "done").all()
    assert dead not in set(table["worker"])  # the dead worker's cell was finished elsewhere
    assert (table["attempts"] == 1).all()  # dispatched once each: Ray did the retry
    assert set(table["worker"]) != {study.execution.worker_name()}  # ran in workers, not here
    with sqlite3.connect(spec.store_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # Same numbers as running the cell here (same program, same key).
    cell = study.expand(spec)[0]
    direct = study.execute_cell(
        examples.dln_problem([3, 2, 3], 1, 64), spec.checkpoints.load(cell.step), cell
    )
    row = table.set_index("cell_id").loc[cell.cell_id]
    assert row["llc_mean"] == direct.values["llc_mean"]
    assert os.path.exists(spec.store_path.with_suffix(".jaxcache"))  # workers' shared cache
