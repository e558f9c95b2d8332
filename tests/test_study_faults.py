"""Studies under faults (issue 15, items 6-10): damaged or foreign stores, damaged trace
sidecars, a store reached through a symlink, import hygiene of entry points, and what a failed
or interrupted run leaves behind. (kill -9 at random moments: test_study_crash.py.)"""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxslt import cli, study
from jaxslt.study import execution
from jaxslt.study import store as store_module

# study.run points JAX's persistent compilation cache at the store's folder: undo it
pytestmark = pytest.mark.usefixtures("restore_compilation_cache")

TOML = """
[study]
name = "faults"
problem = "{problem}"
problem_kwargs = {{ widths = [3, 2, 3], rank = 1, num_examples = 64 }}
store = "{store}"

[checkpoints]
entry_point = "jaxslt.study.examples:dln_checkpoints"
kwargs = {{ widths = [3, 2, 3], rank = 1, num_examples = 64, steps = [0, 200] }}

[settings]
num_chains = 2
num_draws = 20
num_burnin = 5
batch_size = 16
localization = 10
acceptance_checks = 2

[grid]
step_size = [1e-4, 3e-4]
"""
PROBLEM = "jaxslt.study.examples:dln_problem"


def write_spec(folder: Path, problem: str = PROBLEM, store: str = "faults.sqlite") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "faults.toml"
    path.write_text(TOML.format(problem=problem, store=store))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    spec_path = write_spec(tmp_path_factory.mktemp("finished"))
    summary = study.run(spec_path, progress=False, compilation_cache=False)
    assert summary.ran == 4 and summary.failed == 0
    return spec_path


def copy_study(spec_path: Path, to: Path) -> Path:
    """A copy of a finished study (spec, store, sidecars) in ``to``."""
    import shutil

    to.mkdir(parents=True, exist_ok=True)
    for item in spec_path.parent.iterdir():
        if item.suffix == ".lock":
            continue
        target = to / item.name
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, target)
    return to / spec_path.name


def cli_error(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main(list(argv))
    assert info.value.code == 2
    err = capsys.readouterr().err
    return err


# -- 6. store errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["not sqlite", "truncated", "empty header"])
@pytest.mark.parametrize("command", ["status", "report", "run"])
def test_a_damaged_or_foreign_store_is_one_clear_line(finished, tmp_path, capsys, damage, command):
    spec = copy_study(finished, tmp_path / "s")
    store = spec.with_suffix(".sqlite")
    if damage == "not sqlite":
        store.write_text("step,llc\n0,1.0\n" * 50)
    elif damage == "truncated":
        data = store.read_bytes()
        store.write_bytes(data[:100])
    else:
        store.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    for extra in store.parent.glob("faults.sqlite-*"):  # stale WAL/shm of the copy
        extra.unlink()
    err = cli_error(capsys, "study", command, str(spec))
    assert err.count("\n") == 1, err  # one line
    assert "faults.sqlite" in err and "SQLite" in err and "move it aside" in err
    assert "Traceback" not in err


def test_another_programs_sqlite_file_is_refused_not_written(tmp_path, capsys):
    spec = write_spec(tmp_path / "o")
    store = spec.with_suffix(".sqlite")
    with sqlite3.connect(store) as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER)")
    before = store.read_bytes()
    for command in ("run", "status"):
        err = cli_error(capsys, "study", command, str(spec))
        assert err.count("\n") == 1 and "not a jaxslt study store" in err, err
    assert store.read_bytes() == before


def test_store_error_wording_for_read_only_media(tmp_path):
    err = sqlite3.OperationalError("attempt to write a readonly database")
    text = str(store_module.describe_sqlite_error(tmp_path / "x.sqlite", err, True))
    assert "x.sqlite" in text and "cannot be written" in text and "writable" in text
    assert "\n" not in text


def test_an_unwritable_store_folder_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "blocked").write_text("a file where the store's folder should be")
    spec = write_spec(tmp_path / "s", store=str(tmp_path / "blocked" / "faults.sqlite"))
    err = cli_error(capsys, "study", "run", str(spec))
    assert err.count("\n") == 1 and "faults.sqlite" in err and "writable" in err, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_a_finished_store_on_read_only_media_is_readable(finished, tmp_path, capsys):
    spec = copy_study(finished, tmp_path / "ro")
    os.chmod(spec.parent / "faults.traces", 0o555)
    os.chmod(spec.parent, 0o555)
    try:
        assert "4/4 done" in str(study.status(spec))
        assert len(study.load_results(spec, traces=True)) == 4
        assert study.report(spec).status.done == 4
        err = cli_error(capsys, "study", "run", str(spec))
        assert err.count("\n") == 1 and "faults.sqlite" in err
    finally:
        os.chmod(spec.parent, 0o755)


def test_readers_open_read_only_and_never_switch_the_journal(finished, tmp_path):
    spec = copy_study(finished, tmp_path / "j")
    store = spec.with_suffix(".sqlite")
    with sqlite3.connect(store) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
    before = store.read_bytes()
    assert "4/4 done" in str(study.status(spec))
    assert len(study.load_results(spec)) == 4
    with sqlite3.connect(store) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert store.read_bytes() == before
    assert not list(store.parent.glob("faults.sqlite-wal"))


# -- 7. sidecar integrity -----------------------------------------------------------------------


def test_damaged_sidecars_are_reported_named_and_recomputed(finished, tmp_path):
    spec = copy_study(finished, tmp_path / "c")
    before = study.load_results(spec, traces=True).sort_values("cell_id")
    sidecars = sorted((spec.parent / "faults.traces").glob("*.npz"))
    sidecars[0].unlink()
    sidecars[1].write_bytes(sidecars[1].read_bytes()[:60])
    state = study.status(spec)
    assert state.damaged == 2 and "2 damaged" in str(state)
    with pytest.raises(study.StoreError, match=rf"cell {sidecars[0].stem}.*missing"):
        study.load_results(spec, traces=True)
    summary = study.run(spec, progress=False, compilation_cache=False)
    assert summary.ran == 2 and summary.failed == 0
    assert study.status(spec).damaged == 0
    after = study.load_results(spec, traces=True).sort_values("cell_id")
    np.testing.assert_array_equal(after["llc_mean"], before["llc_mean"])  # same key, same bits
    for a, b in zip(after["loss_trace"], before["loss_trace"], strict=True):
        np.testing.assert_array_equal(a, b)


# -- 8. one writer per store --------------------------------------------------------------------


def test_the_writer_lock_holds_through_a_symlink(finished, tmp_path):
    spec = copy_study(finished, tmp_path / "l")
    real = spec.with_suffix(".sqlite")
    link = tmp_path / "elsewhere.sqlite"
    link.symlink_to(real)
    with study.Store(real) as first, first.writer():
        with study.Store(link) as second:
            assert second.writer_active()
            with pytest.raises(RuntimeError, match="another study run"):
                with second.writer():
                    pass


# -- 9. import hygiene and the trust model ------------------------------------------------------


def test_files_beside_a_spec_never_shadow_installed_modules(tmp_path):
    folder = tmp_path / "hyg"
    folder.mkdir()
    (folder / "arviz.py").write_text("raise ImportError('the fake arviz beside the spec')\n")
    (folder / "my_problem.py").write_text(
        "from jaxslt.study.examples import dln_problem\n\n"
        "def problem(**kw):\n    return dln_problem(**kw)\n"
    )
    spec = write_spec(folder, problem="my_problem:problem")
    path_before = list(sys.path)
    summary = study.run(spec, progress=False, compilation_cache=False)
    assert summary.failed == 0, summary.errors
    assert sys.path == path_before
    import arviz

    assert Path(arviz.__file__).parent.name == "arviz"  # the installed package


def test_an_entry_point_that_raises_is_named_with_its_traceback(tmp_path, capsys):
    folder = tmp_path / "raises"
    folder.mkdir()
    (folder / "bad_problem.py").write_text(
        "def problem(**kw):\n    return helper()\n\ndef helper():\n"
        "    raise KeyError('no such column')\n"
    )
    spec = write_spec(folder, problem="bad_problem:problem")
    with pytest.raises(study.EntryPointError) as info:
        study.run(spec, progress=False, compilation_cache=False)
    text = str(info.value)
    assert "'bad_problem:problem' raised KeyError" in text and "helper()" in text
    assert "run only specs you trust" in text
    err = cli_error(capsys, "study", "run", str(spec))
    assert "bad_problem:problem" in err and "Traceback" in err
    assert sorted(p.name for p in folder.iterdir() if p.name != "__pycache__") == [
        "bad_problem.py", "faults.toml",
    ]  # fmt: skip


# -- 10. hygiene --------------------------------------------------------------------------------


def test_a_spec_that_fails_validation_leaves_nothing_behind(tmp_path):
    spec = write_spec(tmp_path / "v")
    spec.write_text(spec.read_text().replace("step_size = [1e-4, 3e-4]", 'step_size = ["x"]'))
    with pytest.raises((TypeError, ValueError)):
        study.run(spec, progress=False)
    assert [p.name for p in spec.parent.iterdir()] == ["faults.toml"]


def test_a_relative_store_stays_inside_the_spec_folder(tmp_path):
    spec = write_spec(tmp_path / "r", store="../outside.sqlite")
    with pytest.raises(ValueError, match="outside the spec's folder"):
        study.load_spec(spec)
    spec = write_spec(tmp_path / "r", store=str(tmp_path / "absolute.sqlite"))
    assert study.load_spec(spec).store_path == tmp_path / "absolute.sqlite"


def test_transient_failures_are_not_stored_as_permanent(tmp_path, monkeypatch):
    import jaxslt.estimator

    real = jaxslt.estimator.estimate_llc

    def out_of_memory(*args, **kwargs):
        raise MemoryError("RESOURCE_EXHAUSTED: out of memory allocating 10 GiB")

    monkeypatch.setattr(jaxslt.estimator, "estimate_llc", out_of_memory)
    spec = write_spec(tmp_path / "t")
    summary = study.run(spec, progress=False, compilation_cache=False)
    assert summary.failed == 4 and "transient" in summary.errors[0]
    state = study.status(spec)
    assert state.failed == 0 and state.interrupted == 4
    monkeypatch.setattr(jaxslt.estimator, "estimate_llc", real)
    summary = study.run(spec, progress=False, compilation_cache=False)
    assert summary.ran == 4 and summary.failed == 0
    assert execution.is_transient(MemoryError()) and not execution.is_transient(ValueError("x"))


def test_an_unforeseen_error_is_one_line_with_the_traceback_on_request(
    finished, capsys, monkeypatch
):
    def broken(*args, **kwargs):
        raise KeyError("something nobody planned for")

    monkeypatch.setattr(study, "status", broken)
    err = cli_error(capsys, "study", "status", str(finished))
    assert err.count("\n") == 1 and "KeyError" in err and "JAXSLT_DEBUG=1" in err
    monkeypatch.setenv("JAXSLT_DEBUG", "1")
    with pytest.raises(KeyError):
        cli.main(["study", "status", str(finished)])


@pytest.mark.parametrize(
    ("setting", "words"),
    [('compute_dtype = "int32"', "floating"), ('diagnostics = "no"', "True or False"),
     ("chain_batch_size = 0", "chain_batch_size must be >= 1")],
)  # fmt: skip
def test_bad_cell_settings_fail_before_any_store_exists(tmp_path, setting, words):
    spec = write_spec(tmp_path / "b")
    spec.write_text(spec.read_text().replace("[settings]\n", f"[settings]\n{setting}\n"))
    with pytest.raises((TypeError, ValueError), match=words):
        study.run(spec, progress=False)
    assert [p.name for p in spec.parent.iterdir()] == ["faults.toml"]
