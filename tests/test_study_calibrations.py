"""jaxslt.study.calibrations: a study's step_size="auto" cells share one calibration per group,
calibrated once at the last checkpoint, stored, reused by later runs, and each cell's numbers
are exactly those of estimate_llc at the calibrated settings."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import jaxslt
from jaxslt import study
from jaxslt.study import driver, examples
from jaxslt.study.calibrations import group_of
from jaxslt.study.execution import load_problem

pytestmark = pytest.mark.usefixtures("restore_compilation_cache")

PROBLEM_KWARGS = {"widths": [3, 2, 3], "rank": 1, "num_examples": 64}
SETTINGS = {"num_chains": 2, "num_draws": 30, "num_burnin": 10, "batch_size": 16,
            "acceptance_checks": 5}  # fmt: skip


@pytest.fixture(scope="module")
def checkpoints():
    return examples.dln_checkpoints([3, 2, 3], 1, steps=[0, 200], num_examples=64)


def make_spec(tmp_path, checkpoints, seeds):
    return study.Spec(
        problem="jaxslt.study.examples:dln_problem",
        problem_kwargs=PROBLEM_KWARGS,
        checkpoints=checkpoints,
        store=tmp_path / "auto.sqlite",
        settings=SETTINGS,
        grid={"step_size": ["auto"], "seed": seeds},
        name="auto",
    )


def test_group_leaves_out_seed_and_checkpoint_only():
    base = {"step_size": "auto", "nbeta": None, "num_draws": 30}
    assert group_of("full", base) == group_of("full", dict(base))
    assert group_of("full", base) != group_of("full", {**base, "nbeta": 10.0})
    assert group_of("full", base) != group_of("other", base)
    assert group_of("full", {**base, "step_size": 1e-3}) is None


def test_auto_cells_share_one_stored_calibration(tmp_path, checkpoints, monkeypatch):
    spec = make_spec(tmp_path, checkpoints, [0, 1])
    summary = study.run(spec, progress=False)
    assert (summary.ran, summary.failed) == (4, 0)
    with study.Store(spec.store_path, create=False) as store:
        calibrations = store.calibrations()
    assert len(calibrations) == 1  # not one per cell
    (cal,) = calibrations.values()
    assert cal.step == 200  # the last checkpoint, as llc_trajectory calibrates
    assert cal.settings["num_draws"] >= SETTINGS["num_draws"]
    table = study.load_results(spec)
    assert (table["step_size_used"] == np.float32(cal.settings["step_size"])).all()
    assert (table["localization_used"] == cal.settings["localization"]).all()
    assert (table["num_draws_used"] == cal.settings["num_draws"]).all()
    assert (table["num_draws"] == SETTINGS["num_draws"]).all()  # the spec's, as the identity
    for caution in cal.cautions:  # the group's cautions reach every cell's warnings
        expected = f"the study's calibration at step 200: {caution}"
        assert all(expected in json.loads(w) for w in table["warnings"])

    # each cell is exactly estimate_llc at its group's settings, with the cell's own key
    problem = load_problem(spec)  # the study's own loss_fn object: its programs are reused
    row = table[(table["step"] == 0) & (table["seed"] == 1)].iloc[0]
    settings = {k: v for k, v in SETTINGS.items()} | dict(cal.settings)
    direct = jaxslt.estimate_llc(
        problem.loss_fn,
        checkpoints[0],
        problem.slice(study.FULL_DATA),
        key=jax.random.key(1),
        diagnostics=False,
        **settings,
    )
    assert row["llc_mean"] == float(direct.llc_mean)

    # the report says which setting the cells used, and why
    summary = study.report(spec).summary
    assert "step_size='auto', calibrated at step 200: step_size = " in summary
    assert cal.explanation.splitlines()[-1] in summary

    # more seeds later: the stored calibration is reused, not recomputed
    def refuse(*args, **kwargs):
        raise AssertionError("calibrated again")

    monkeypatch.setattr(driver, "calibrate_group", refuse)
    summary = study.run(make_spec(tmp_path, checkpoints, [0, 1, 2]), progress=False)
    assert (summary.ran, summary.failed, summary.skipped) == (2, 0, 4)
    table = study.load_results(make_spec(tmp_path, checkpoints, [0, 1, 2]))
    assert table["step_size_used"].nunique() == 1


def test_failed_calibration_fails_its_cells_not_the_study(tmp_path, checkpoints, monkeypatch):
    def no_setting(*args, **kwargs):
        raise RuntimeError("step_size='auto' found no usable setting")

    monkeypatch.setattr(driver, "calibrate_group", no_setting)
    summary = study.run(make_spec(tmp_path, checkpoints, [0]), progress=False)
    assert (summary.ran, summary.failed) == (2, 2)
    assert all("calibration at step 200: RuntimeError: " in e for e in summary.errors)
    with study.Store(tmp_path / "auto.sqlite", create=False) as store:
        assert store.calibrations() == {}  # nothing stored: a retry calibrates again
