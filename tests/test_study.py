"""jaxslt.study: spec parsing and its errors, cell identity, the store's idempotence and
consistency, orbax checkpoints, the report, the CLI. (Crash safety under kill -9 and the Ray
runner: test_study_crash.py.)"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
import tomllib
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxslt import cli, study
from jaxslt.study import examples
from jaxslt.study.entry_points import FULL_DATA
from jaxslt.study.identity import cell_identity

# study.run points JAX's persistent compilation cache at the store's folder: undo it
pytestmark = pytest.mark.usefixtures("restore_compilation_cache")

# Tiny cells (a [3, 2, 3] deep linear network, 64 examples, 2 chains × 30 draws): each runs in
# milliseconds once compiled, and all share one compiled program.
PROBLEM = "jaxslt.study.examples:dln_problem"
PROBLEM_KWARGS = {"widths": [3, 2, 3], "rank": 1, "num_examples": 64}
SETTINGS = {
    "num_chains": 2,
    "num_draws": 30,
    "num_burnin": 10,
    "batch_size": 16,
    "localization": 10.0,
    "acceptance_checks": 5,
}


@pytest.fixture(scope="module")
def checkpoints():
    return examples.dln_checkpoints([3, 2, 3], 1, steps=[0, 200], num_examples=64)


def make_spec(tmp_path, checkpoints, **changes):
    fields = {
        "problem": PROBLEM,
        "problem_kwargs": PROBLEM_KWARGS,
        "checkpoints": checkpoints,
        "store": tmp_path / "study.sqlite",
        "settings": SETTINGS,
        "grid": {"step_size": [1e-4, 3e-4], "seed": [0, 1]},
        "name": "tiny",
    }
    return study.Spec(**{**fields, **changes})


def write_toml(path, text):
    path.write_text(text)
    return path


TOML = """
[study]
name = "tiny"
problem = "jaxslt.study.examples:dln_problem"
problem_kwargs = { widths = [3, 2, 3], rank = 1, num_examples = 64 }
store = "out/tiny.sqlite"

[checkpoints]
entry_point = "jaxslt.study.examples:dln_checkpoints"
kwargs = { widths = [3, 2, 3], rank = 1, num_examples = 64, steps = [0, 200] }

[settings]
num_chains = 2
num_draws = 30
num_burnin = 10
batch_size = 16
localization = 10
acceptance_checks = 5

[grid]
step_size = [1e-4, 3e-4]
seed = [0, 1]
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A TOML study run to completion once (2 checkpoints × 2 step sizes × 2 seeds)."""
    folder = tmp_path_factory.mktemp("finished")
    spec_path = write_toml(folder / "tiny.toml", TOML)
    summary = study.run(spec_path, progress=False)
    return spec_path, summary


# ---------------------------------------------------------------------------------------------
# spec parsing and its errors


def test_toml_spec_parses_relative_paths_and_grid(tmp_path):
    spec = study.load_spec(write_toml(tmp_path / "s.toml", TOML))
    assert spec.name == "tiny"
    assert spec.store_path == (tmp_path / "out" / "tiny.sqlite").resolve()
    assert spec.grid == {"step_size": (1e-4, 3e-4), "seed": (0, 1)}
    assert spec.settings["localization"] == 10.0 and isinstance(
        spec.settings["localization"], float
    )
    assert isinstance(spec.checkpoints, study.EntryPointCheckpoints)
    points = spec.grid_points()
    assert [(p["step_size"], p["seed"]) for p in points] == [
        (1e-4, 0), (1e-4, 1), (3e-4, 0), (3e-4, 1),
    ]  # fmt: skip
    assert all(p["num_draws"] == 30 and p["data"] == FULL_DATA for p in points)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("[grid]", "[grid\n"), "not valid TOML"),
        (lambda t: t + "\n[sampling]\nx = 1\n", "unknown table [sampling]"),
        (lambda t: t.replace('name = "tiny"', 'nme = "tiny"'), "unknown key 'nme' in [study]"),
        (lambda t: t.replace("num_draws = 30", "num_drawz = 30"), "'num_drawz' is not a study"),
        (lambda t: t.replace("seed = [0, 1]", "stepsize = [1, 2]"), "'stepsize' is not a study"),
        (lambda t: t.replace("num_draws = 30", "key = 3"), "pass seed instead of key"),
        (lambda t: t.replace("seed = [0, 1]", "seed = 1"), "seed must be a non-empty list"),
        (lambda t: t.replace("seed = [0, 1]", "seed = [1, 1]"), "lists a value twice"),
        (lambda t: t.replace("seed = [0, 1]", "num_chains = [2, 4]"), "both [settings] and"),
        (lambda t: t.replace("step_size = [1e-4, 3e-4]", ""), "['step_size'] must be set"),
        (lambda t: t.replace("3e-4]", "-3e-4]"), "step_size must be > 0"),
        (lambda t: t.replace("num_draws = 30", "num_draws = 2.5"), "num_draws must be an int"),
        (lambda t: t.replace("seed = [0, 1]", "seed = [0, -1]"), "seed must be an integer >= 0"),
        (lambda t: t.replace("num_draws = 30", 'sampler = "sgldd"'), "sampler='sgldd' is unknown"),
        (lambda t: t.replace('problem = "jaxslt.study.examples:dln_problem"\n', ""), "problem is"),
        (lambda t: t.replace("examples:dln_problem", "examples.dln_problem"), "module:function"),
        (lambda t: t.replace("entry_point = ", 'directory = "c"\nentry_point = '), "exactly one"),
        (lambda t: t.replace("\nkwargs = {", "\nsteps = [1]\nkwargs = {"), "steps only goes with"),
    ],
)
def test_spec_errors_name_the_problem(tmp_path, edit, message):
    path = write_toml(tmp_path / "bad.toml", edit(TOML))
    with pytest.raises((ValueError, TypeError)) as info:
        study.load_spec(path)
    assert message in str(info.value)
    assert "bad.toml" in str(info.value)


def test_unimportable_problem_and_unknown_slice_fail_before_any_cell(tmp_path, checkpoints):
    spec = make_spec(tmp_path, checkpoints, problem="no_such_module_xyz:f")
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        study.run(spec, progress=False)
    spec = make_spec(tmp_path, checkpoints, grid={"step_size": [1e-4], "data": ["full", "code"]})
    with pytest.raises(ValueError, match=r"data slice 'code' is not defined.*'first_half'"):
        study.run(spec, progress=False)
    assert list(tmp_path.iterdir()) == []  # no store, lock, traces or cache folder left


def test_unstorable_setting_is_a_type_error(tmp_path, checkpoints):
    with pytest.raises(TypeError, match=r"restrict = .* cannot be stored"):
        make_spec(tmp_path, checkpoints, settings={**SETTINGS, "restrict": lambda p, x: True})


def test_step_size_auto_is_a_study_setting(tmp_path, checkpoints):
    """step_size="auto" (one calibration per group: test_study_calibrations.py) passes the
    spec's checks; γ left out stays None (calibrated too) and is named in the identity, unlike
    γ = 100 with a numeric step size."""
    settings = {k: v for k, v in SETTINGS.items() if k != "localization"}
    spec = make_spec(tmp_path, checkpoints, settings=settings, grid={"step_size": ["auto"]})
    cells = study.expand(spec)
    assert [c.settings["step_size"] for c in cells] == ["auto", "auto"]
    assert all(c.settings["localization"] is None for c in cells)
    assert all('"localization":null' in c.identity for c in cells)


# ---------------------------------------------------------------------------------------------
# cell identity


def test_cell_identity_is_documented_canonical_json(tmp_path, checkpoints):
    spec = make_spec(tmp_path, checkpoints, grid={"step_size": [1e-4]})
    cells = study.expand(spec)
    assert [c.step for c in cells] == [0, 200]
    leaves = jax.tree_util.tree_flatten_with_path(checkpoints[0])[0]
    digest = hashlib.sha256()
    for path, leaf in leaves:
        a = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.tobytes())
    expected = (
        '{"checkpoint":{"sha256":"' + digest.hexdigest() + '","step":0},'
        '"problem":"jaxslt.study.examples:dln_problem",'
        '"problem_kwargs":{"num_examples":64,"rank":1,"widths":[3,2,3]},'
        '"settings":{"acceptance_checks":5,"batch_size":16,"localization":10.0,'
        '"num_burnin":10,"num_chains":2,"num_draws":30,"step_size":0.0001}}'
    )
    assert cells[0].identity == expected
    assert cells[0].cell_id == hashlib.sha256(expected.encode()).hexdigest()


def test_cell_id_ignores_spelling_of_the_same_settings(tmp_path, checkpoints):
    base = make_spec(tmp_path, checkpoints)
    same = make_spec(
        tmp_path,
        {200: checkpoints[200], 0: checkpoints[0]},  # another dict order
        settings={
            **{k: SETTINGS[k] for k in reversed(SETTINGS)},
            "localization": 10,  # int for a float setting
            "thinning": 1,  # a default, written out
            "sampler": "sgld",
        },
        grid={"seed": [1, 0], "step_size": [3e-4, 1e-4]},  # other axis and value order
        problem_kwargs={"rank": 1, "num_examples": 64, "widths": (3, 2, 3)},
    )
    assert sorted(c.cell_id for c in study.expand(base)) == sorted(
        c.cell_id for c in study.expand(same)
    )
    none = make_spec(tmp_path, checkpoints, settings={**SETTINGS, "localization": None})
    hundred = make_spec(tmp_path, checkpoints, settings={**SETTINGS, "localization": 100.0})
    assert [c.cell_id for c in study.expand(none)] == [c.cell_id for c in study.expand(hundred)]


def test_cell_id_changes_with_anything_that_changes_the_result(tmp_path, checkpoints):
    reference = {c.cell_id for c in study.expand(make_spec(tmp_path, checkpoints))}
    assert len(reference) == 8  # 2 checkpoints × 2 step sizes × 2 seeds, all distinct
    nudged = jax.tree.map(np.copy, checkpoints[0])
    nudged["layer_0"][0, 0] = np.nextafter(nudged["layer_0"][0, 0], np.float32(1))
    variants = [
        {"settings": {**SETTINGS, "num_draws": 31}},
        {"settings": {**SETTINGS, "localization": 10.000001}},
        {"grid": {"step_size": [1e-4, 3e-4], "seed": [2, 3]}},
        {"grid": {"step_size": [1e-4, 3e-4], "seed": [0, 1], "data": ["first_half"]}},
        {"problem_kwargs": {**PROBLEM_KWARGS, "num_examples": 65}},
        {"problem": "jaxslt.study.examples:other"},
        {"checkpoints": {0: nudged, 200: checkpoints[200]}, "_only_step_0": True},
        {"checkpoints": {1: checkpoints[0], 200: checkpoints[200]}, "_only_step_0": True},
    ]
    for changes in variants:
        only_step_0 = changes.pop("_only_step_0", False)
        cells = study.expand(
            make_spec(tmp_path, changes.pop("checkpoints", checkpoints), **changes)
        )
        changed = [c for c in cells if not only_step_0 or c.step in (0, 1)]
        assert not {c.cell_id for c in changed} & reference, changes
        if only_step_0:  # the untouched checkpoint keeps its ids
            assert {c.cell_id for c in cells if c.step == 200} <= reference


json_values = st.one_of(
    st.integers(-5, 5),
    st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
    st.sampled_from(["sgld", "mala", "a/b/**"]),
    st.booleans(),
    st.lists(st.integers(0, 3), max_size=3),
)


@settings(max_examples=200)
@given(
    a=st.dictionaries(st.sampled_from(["num_draws", "restrict", "x", "y"]), json_values),
    b=st.dictionaries(st.sampled_from(["num_draws", "restrict", "x", "y"]), json_values),
)
def test_cell_identity_equal_exactly_when_settings_equal(a, b):
    """Injective and order-free: two setting dicts name one cell iff they are equal (as JSON).
    (The values drawn never equal these settings' estimate_llc defaults, which are dropped.)"""

    from types import SimpleNamespace

    fake = SimpleNamespace(problem_name="m:f", problem_kwargs={})

    same = json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    ida = cell_identity(fake, {"step": 0}, a)
    idb = cell_identity(fake, {"step": 0}, dict(reversed(list(b.items()))))
    assert (ida == idb) == same


# ---------------------------------------------------------------------------------------------
# runs, the store, idempotence


def test_rerun_executes_nothing_and_changes_nothing(finished):
    spec_path, first = finished
    assert (first.total, first.ran, first.failed, first.skipped) == (8, 8, 0, 0)
    store = study.load_spec(spec_path).store_path
    with sqlite3.connect(store) as conn:
        before = conn.execute("SELECT * FROM cells ORDER BY cell_id").fetchall()
    # the run turned on JAX's persistent compilation cache, and it holds programs
    assert any(Path(jax.config.jax_compilation_cache_dir).glob("*-cache*"))
    again = study.run(spec_path, progress=False)
    assert (again.ran, again.skipped, again.remaining) == (0, 8, 0)
    with sqlite3.connect(store) as conn:
        assert conn.execute("SELECT * FROM cells ORDER BY cell_id").fetchall() == before
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == study.SCHEMA_VERSION


def test_the_summary_names_the_cells_that_failed_their_diagnostics(finished):
    """Warnings say where they come from: each cell that ran but failed its diagnostics is
    named by step and grid values with its first warning (30 draws: they all fail here)."""
    spec_path, summary = finished
    table = study.load_results(spec_path)
    flagged = table[table["diagnostics_ok"] == 0]
    assert len(summary.flagged) == len(flagged) > 0
    expected = {
        f"step {r.step} (step_size={r.step_size}, seed={r.seed}): {json.loads(r.warnings)[0]}"
        for r in flagged.itertuples()
    }
    assert set(summary.flagged) == expected
    text = str(summary)
    assert f"{len(flagged)} cell(s) failed their diagnostics" in text
    shown = min(len(flagged), study.driver.FLAGGED_SHOWN)
    assert sum(line.startswith("    step ") for line in text.splitlines()) == shown


def test_rows_match_their_sidecar_traces_and_a_direct_call(finished, checkpoints):
    """λ̂_c = nβ·(mean_t L(w_t) − L_n(w*)) from the sidecar reproduces the row; the row equals
    a plain estimate_llc call with the cell's settings (bit for bit: same program, same key)."""
    spec_path, _ = finished
    spec = study.load_spec(spec_path)
    table = study.load_results(spec_path)
    assert len(table) == 8 and (table["status"] == "done").all()
    with study.Store(spec.store_path, create=False) as store:
        for row in table.itertuples():
            traces = store.load_traces(row.cell_id)
            assert traces["loss_trace"].shape == (2, 30)
            assert traces["burnin_loss_trace"].shape == (2, 10)
            per_chain = np.float32(row.nbeta_used) * (
                traces["loss_trace"].mean(axis=1) - np.float32(row.init_loss)
            )
            np.testing.assert_allclose(per_chain, row.llc_per_chain, rtol=1e-5, atol=1e-5)
            assert row.llc_mean == pytest.approx(np.mean(row.llc_per_chain), rel=1e-6)
            assert row.llc_std == pytest.approx(np.std(row.llc_per_chain, ddof=1), rel=1e-5)
    import jaxslt

    problem = examples.dln_problem(**PROBLEM_KWARGS)
    row = table[(table["step"] == 200) & (table["seed"] == 1)].iloc[-1]
    direct = jaxslt.estimate_llc(
        problem.loss_fn, checkpoints[200], problem.data, key=jax.random.key(1),
        step_size=row["step_size"], **{k: v for k, v in SETTINGS.items()}, progress=False,
    )  # fmt: skip
    assert row["llc_mean"] == float(direct.llc_mean)
    assert row["nbeta_used"] == float(direct.nbeta) == pytest.approx(64 / math.log(64))
    assert json.loads(row["versions"])["jax"] == jax.__version__


def test_backends_are_interchangeable_behind_the_protocol(tmp_path, checkpoints):
    """Local and Ray backends implement execution.Backend; a backend driven by hand reports
    each cell to the Recorder, which stores it at once."""
    from jaxslt.study.distributed import RayBackend
    from jaxslt.study.execution import Backend, Recorder, Tracker, load_problem
    from jaxslt.study.runner import LocalBackend

    spec = make_spec(tmp_path, checkpoints, grid={"step_size": [1e-4], "seed": [0, 1]})
    memory = study.cells.resolve_checkpoints(spec)
    cells = study.expand(spec, memory)[:2]
    local = LocalBackend(load_problem(spec), memory)
    ray_backend = RayBackend(spec, memory, address="auto")
    assert isinstance(local, Backend) and isinstance(ray_backend, Backend)
    with study.Store(spec.store_path) as store, store.writer():
        recorder = Recorder(store, Tracker(spec.name, len(cells), 0, len(cells), False))
        ray_backend.run([], recorder)  # nothing to run: no cluster contacted
        local.run(cells, recorder)
        assert [o.cell for o in recorder.outcomes] == cells
        assert all(o.status == "done" for o in recorder.outcomes)
        assert store.statuses() == {c.cell_id: "done" for c in cells}


def test_max_cells_then_resume_and_status(tmp_path, checkpoints):
    spec = make_spec(tmp_path, checkpoints)
    assert str(study.status(spec)).startswith("study 'tiny': 0/8 done")
    first = study.run(spec, max_cells=3, progress=False)
    assert (first.ran, first.remaining) == (3, 5)
    state = study.status(spec)
    assert (state.done, state.pending, state.running, state.failed) == (3, 5, 0, 0)
    rest = study.run(spec, progress=False)
    assert (rest.ran, rest.skipped, rest.remaining) == (5, 3, 0)
    assert study.status(spec).done == 8


def test_failed_cells_are_stored_skipped_and_retried_on_request(tmp_path, checkpoints):
    spec = make_spec(tmp_path, checkpoints, grid={"step_size": [1e-4, 1e3]})  # 1e3 diverges
    summary = study.run(spec, progress=False)
    assert (summary.ran, summary.failed) == (4, 2)
    assert all("FloatingPointError: all 2 chains diverged" in e for e in summary.errors)
    table = study.load_results(spec)
    failed = table[table["status"] == "failed"]
    assert sorted(failed["step_size"]) == [1e3, 1e3]
    assert failed["llc_mean"].isna().all() and failed["traces"].isna().all()
    assert study.run(spec, progress=False).ran == 0  # failures repeat: not rerun by default
    retried = study.run(spec, progress=False, retry_failed=True)
    assert (retried.ran, retried.failed) == (2, 2)
    assert (study.load_results(spec).set_index("step_size").loc[1e3, "attempts"] == 2).all()


def test_second_writer_is_refused(tmp_path, checkpoints):
    spec = make_spec(tmp_path, checkpoints)
    with study.Store(spec.store_path) as store, store.writer():
        assert store.writer_active()
        with pytest.raises(RuntimeError, match=r"another study run \(pid \d+"):
            study.run(spec, progress=False)
    with study.Store(spec.store_path) as store:
        assert not store.writer_active()


def test_store_from_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "future.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="schema version 99, newer"):
        study.Store(path)


def test_csv_export_round_trips(finished, tmp_path):
    spec_path, _ = finished
    table = study.load_results(spec_path)
    path = study.to_csv(spec_path, tmp_path / "r" / "results.csv")
    back = pd.read_csv(path)
    assert list(back["cell_id"]) == list(table["cell_id"])
    np.testing.assert_array_equal(back["llc_mean"], table["llc_mean"])
    for column in ("step", "seed", "step_size", "llc_std", "run_seconds", "num_draws"):
        assert column in back
    with_traces = study.load_results(study.load_spec(spec_path).store_path, traces=True)
    assert all(t.shape == (2, 30) for t in with_traces["loss_trace"])


# ---------------------------------------------------------------------------------------------
# checkpoints from orbax, data slices


def test_orbax_checkpoints_give_the_in_memory_results(tmp_path, checkpoints):
    from jaxslt.checkpoints import save_checkpoint

    for step, params in checkpoints.items():
        save_checkpoint(tmp_path / "ckpt", step, params)
    disk = make_spec(
        tmp_path, "ckpt", store="disk.sqlite", root=tmp_path, grid={"step_size": [3e-4]}
    )
    memory = make_spec(tmp_path, checkpoints, store=tmp_path / "mem.sqlite", grid=disk.grid)
    ids = [c.identity for c in study.expand(disk)]
    assert json.loads(ids[0])["checkpoint"] == {"orbax": "ckpt", "item": None, "step": 0}
    assert study.run(disk, progress=False).ran == 2
    study.run(memory, progress=False)
    a, b = study.load_results(disk), study.load_results(memory)
    np.testing.assert_array_equal(a["llc_mean"], b["llc_mean"])
    only = make_spec(tmp_path, study.OrbaxCheckpoints("ckpt", steps=(200,)), root=tmp_path)
    assert {c.step for c in study.expand(only)} == {200}
    with pytest.raises(ValueError, match=r"steps \[5\] are not in"):
        study.expand(make_spec(tmp_path, study.OrbaxCheckpoints("ckpt", (5,)), root=tmp_path))


def test_data_slice_cells_use_the_slice(tmp_path, checkpoints):
    spec = make_spec(
        tmp_path, {200: checkpoints[200]},
        grid={"step_size": [1e-4], "data": ["full", "first_half"]},
    )  # fmt: skip
    study.run(spec, progress=False)
    table = study.load_results(spec).set_index("data")
    assert table.loc["full", "nbeta_used"] == pytest.approx(64 / math.log(64))
    assert table.loc["first_half", "nbeta_used"] == pytest.approx(32 / math.log(32))


def test_restrict_patterns_as_grid_values(tmp_path, checkpoints):
    """A pattern and a list of patterns (a TOML array, passed on as a hashable tuple) each make
    a weight-refined cell; the table keeps the setting as text."""
    spec = make_spec(
        tmp_path, {200: checkpoints[200]},
        grid={"step_size": [1e-4], "restrict": ["layer_0", ["layer_0", "layer_1"]]},
    )  # fmt: skip
    summary = study.run(spec, progress=False)
    assert (summary.ran, summary.failed) == (2, 0), summary.errors
    table = study.load_results(spec).set_index("restrict")
    assert sorted(table.index) == ['["layer_0", "layer_1"]', "layer_0"]
    assert table["llc_mean"].notna().all()


# ---------------------------------------------------------------------------------------------
# report and CLI


def test_report_table_figure_and_files(finished, tmp_path):
    spec_path, _ = finished
    rep = study.report(spec_path, out=tmp_path / "rep")
    assert [p.name for p in rep.files] == ["results.csv", "llc_vs_checkpoint.png", "summary.txt"]
    assert all(p.stat().st_size > 0 for p in rep.files)
    assert list(rep.figures) == ["full"]
    ax = rep.figures["full"].axes[0]
    bars = ax.containers  # one errorbar container per setting
    assert [c.get_label() for c in bars] == ["step_size=0.0001", "step_size=0.0003"]
    for container, eps in zip(bars, (1e-4, 3e-4), strict=True):
        line = container.lines[0]
        rows = rep.table[rep.table["step_size"] == eps]
        means = rows.groupby("step")["llc_mean"].mean()
        np.testing.assert_array_equal(line.get_xdata(), means.index.to_numpy())
        np.testing.assert_allclose(line.get_ydata(), means.to_numpy(), rtol=1e-12)
    assert "8/8 done" in rep.summary and "llc_mean" in rep.summary
    # the plots' convention: one slice's Figure, written only when given path=
    spec = study.load_spec(spec_path)
    table = study.load_results(spec)
    fig = study.plot_llc_vs_checkpoint(table, spec, path=tmp_path / "one" / "llc.pdf")
    assert (tmp_path / "one" / "llc.pdf").read_bytes()[:5] == b"%PDF-"
    assert fig.axes[0].get_title() == rep.figures["full"].axes[0].get_title()
    assert study.plot_llc_vs_checkpoint(table, spec, data="full").axes[0].containers
    with pytest.raises(ValueError, match="no finished cell of data slice 'half'"):
        study.plot_llc_vs_checkpoint(table, spec, data="half")


def test_llc_vs_checkpoint_is_readable_on_an_uneven_curve(tmp_path):
    """One early outlier (λ̂ = −250 at step 0) no longer squashes the other points into a line,
    steps across four decades get a log axis, and cells that failed their diagnostics are
    ringed (the study plot used to do none of these)."""
    from types import SimpleNamespace

    steps = [0, 10, 100, 1000, 10_000]
    table = pd.DataFrame({
        "status": "done", "data": "full", "seed": 0, "step_size": 1e-4, "step": steps,
        "llc_mean": [-250.0, 5.0, 7.0, 9.0, 10.0], "llc_std": 0.5,
        "diagnostics_ok": [0, 1, 1, None, 1],
    })  # fmt: skip
    spec = SimpleNamespace(name="uneven", grid={"step_size": [1e-4], "seed": [0]})
    fig = study.plot_llc_vs_checkpoint(table, spec, path=tmp_path / "uneven.png")
    ax = fig.axes[0]
    assert ax.get_xscale() == "symlog"
    lo, hi = ax.get_ylim()
    assert -250 < lo < 4.5 and 10.5 < hi < 40  # the others fill the axis
    arrows = [a for a in ax.texts if a.get_text()]
    assert [a.get_text() for a in arrows] == ["-250 (failed)"]
    rings = [ln for ln in ax.lines if ln.get_marker() == "o" and ln.get_markersize() == 11]
    assert len(rings) == 1 and rings[0].get_xdata().tolist() == [0.0]  # None: not diagnosed
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "failed diagnostics (1 point(s))" in labels


def test_cli_study_commands(finished, tmp_path, capsys):
    spec_path, _ = finished
    assert cli.main(["study", "run", str(spec_path)]) == 0
    assert "ran 0 cell(s)" in capsys.readouterr().out
    assert cli.main(["study", "status", str(spec_path)]) == 0
    assert "study 'tiny': 8/8 done, 0 running, 0 failed, 0 pending" in capsys.readouterr().out
    assert cli.main(["study", "report", str(spec_path), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and (tmp_path / "o" / "llc_vs_checkpoint.png").exists()
    bad = write_toml(tmp_path / "bad.toml", TOML.replace("num_draws", "num_drawz"))
    with pytest.raises(SystemExit) as info:
        cli.main(["study", "run", str(bad)])
    assert info.value.code == 2
    assert "jaxslt study run: error:" in capsys.readouterr().err


def test_docs_study_spec_expands(tmp_path):
    """The TOML example of docs/studies.md (linked from the README) is a valid spec: 4
    checkpoints × 2 step sizes × 3 seeds. (Its Python examples run in test_readme.py.)"""
    page = (Path(__file__).resolve().parents[1] / "docs" / "studies.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", page, flags=re.S)
    assert blocks, "docs/studies.md lacks its TOML example"
    spec = study.spec_from_dict(tomllib.loads(blocks[0]), root=tmp_path, default_name="dln")
    assert spec.store_path == (tmp_path / "dln.sqlite").resolve()
    assert len(study.expand(spec)) == 4 * 2 * 3
