"""Stored cell identities never move: ids pinned as computed by jaxslt before the identity
defaults were frozen (commit 3c5d807; the "auto" spec, which that commit's value check refused,
with the check fixed and the identity code unchanged), and estimate_llc's defaults checked
against the frozen table the identities are made from."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from jaxslt import config, study
from jaxslt.study import identity, settings
from jaxslt.study.entry_points import FULL_DATA
from jaxslt.study.identity import cell_identity

# plain numpy checkpoints: their content hash does not depend on any computation
TREES = {
    0: {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(3, np.float32)},
    7: {"w": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)},
}
PROBLEM = "jaxslt.study.examples:dln_problem"
CHECKPOINT_0 = (
    '{"sha256":"e0efa895b68cb3dd3452efd04f5e2037496ef0c5f3b013330e151ea9741715d5","step":0}'
)
HEAD = '{"checkpoint":' + CHECKPOINT_0 + ',"problem":"jaxslt.study.examples:dln_problem",'
HEAD += '"problem_kwargs":{"rank":1,"widths":[3,2,3]},'

# name: (settings, grid, number of cells, first cell id, sha256 of all ids joined by spaces,
#        first cell's identity after HEAD)
PINNED = {
    "plain": (
        {"num_chains": 2, "num_draws": 30},
        {"step_size": [1e-4, 3e-4], "seed": [0, 1]},
        8,
        "3ae06affa5a9e7a45be511bceb16d82764eedf6d86cfd3f02568c60286ce5cea",
        "4a492df6963d58cfc8bd6e32c968ca522274611f749da8f6999c3f4a08aded36",
        '"settings":{"num_chains":2,"num_draws":30,"step_size":0.0001}}',
    ),
    "defaults_written": (
        {"num_chains": 4, "num_draws": 1000, "sampler": "sgld", "thinning": 1, "localization": 100},
        {"step_size": [1e-4]},
        2,
        "9ad5c9f09878c7569c11367ab48220c4c06e57fb0d66b22c60dcb42125366182",
        "f298bb590ba1560d449cd6067019a304bc776f5d73c9c66205a43a69df4feee3",
        '"settings":{"step_size":0.0001}}',
    ),
    "auto": (
        {"step_size": "auto"},
        {"nbeta": [10.0, 20]},
        4,
        "d0c8dc6357091ae1b0c07b2f372ece48c61cba8f03dabbc195ae15a54da6d6de",
        "dab3cd7b1d51eb3651d8b5cb75aeb7c36c7764ae5fb3d190a22f029715e630db",
        '"settings":{"localization":null,"nbeta":10.0,"step_size":"auto"}}',
    ),
    "many": (
        {
            "step_size": 1e-5,
            "sampler": "mala",
            "sampler_options": {},
            "batch_size": 32,
            "eval_batch_size": 64,
            "chain_batch_size": None,
            "observables": True,
            "observable_draws": 10,
            "diagnostics": False,
            "acceptance_checks": 0,
            "compute_dtype": "bfloat16",
        },
        {"restrict": [["layer_0/**"], None], "data": ["full", "half"]},
        8,
        "4eaa98ae5b46cb2fe4d40de8de3c69f6c3dca3b0883acdc6b8d67534eee4baff",
        "0033963238852c2f7cdaeb5d4ddaa75e884de5de9d2fa9a62d13365950489a57",
        '"settings":{"acceptance_checks":0,"batch_size":32,"chain_batch_size":null,'
        '"compute_dtype":"bfloat16","diagnostics":false,"eval_batch_size":64,'
        '"observable_draws":10,"observables":true,"restrict":["layer_0/**"],"sampler":"mala",'
        '"sampler_options":{},"step_size":1e-05}}',
    ),
}


def _spec(tmp_path, name, settings, grid, **changes):
    fields = {
        "problem": PROBLEM,
        "problem_kwargs": {"widths": [3, 2, 3], "rank": 1},
        "checkpoints": TREES,
        "store": tmp_path / "x.sqlite",
        "name": name,
        "settings": settings,
        "grid": grid,
    }
    return study.Spec(**{**fields, **changes})


@pytest.mark.parametrize("name", sorted(PINNED))
def test_cell_ids_are_pinned(tmp_path, name):
    settings, grid, count, first, digest, identity = PINNED[name]
    cells = study.expand(_spec(tmp_path, name, settings, grid))
    ids = [c.cell_id for c in cells]
    assert len(ids) == count and ids[0] == first
    assert hashlib.sha256(" ".join(ids).encode()).hexdigest() == digest
    assert cells[0].identity == HEAD + identity


def test_stored_settings_are_pinned(tmp_path):
    """A row's settings column: every default filled in, in this order."""
    settings, grid, *_ = PINNED["plain"]
    cell = study.expand(_spec(tmp_path, "plain", settings, grid))[0]
    assert json.dumps(cell.settings) == (
        '{"num_chains": 2, "num_draws": 30, "num_burnin": 500, "thinning": 1, '
        '"batch_size": null, "nbeta": null, "localization": 100.0, "sampler": "sgld", '
        '"sampler_options": null, "eval_batch_size": null, "acceptance_checks": 50, '
        '"chain_batch_size": "auto", "param_specs": null, "compute_dtype": null, '
        '"restrict": null, "observables": false, "observable_draws": 100, '
        '"diagnostics": true, "step_size": 0.0001}'
    )


def test_orbax_cell_identities_are_pinned(tmp_path):
    """Orbax checkpoints are named by directory, item and step (nothing is read)."""
    checkpoints = study.OrbaxCheckpoints("ckpts", item="params")
    spec = _spec(tmp_path, "orbax", {}, {"step_size": [1e-3]}, checkpoints=checkpoints,
                 problem_kwargs={})  # fmt: skip
    texts = [
        cell_identity(spec, spec.checkpoints.identity(step), point)
        for step in (3, 9)
        for point in spec.grid_points()
    ]
    assert texts == [
        '{"checkpoint":{"item":"params","orbax":"ckpts","step":' + str(step) + '},"problem":'
        '"jaxslt.study.examples:dln_problem","problem_kwargs":{},"settings":{"step_size":0.001}}'
        for step in (3, 9)
    ]


# ---------------------------------------------------------------------------------------------
# the frozen identity defaults against estimate_llc's


def _drift(live: Mapping[str, Any], frozen: Mapping[str, Any]) -> list[str]:
    """How estimate_llc's settings (``live``, as ``jaxslt.config.ESTIMATE_SETTINGS``) differ
    from a frozen identity table (equal meaning, not spelling: ``sampler_options`` None is the
    ``()`` that SamplingConfig makes of it; ``localization`` None means DEFAULT_LOCALIZATION)."""
    live = {k: v for k, v in live.items() if k not in settings.NOT_SETTINGS}
    names = {k for k, v in live.items() if v is not config.REQUIRED} | set(settings.EXTRA_SETTINGS)
    problems = [
        f"{k}: a setting of estimate_llc, not in the table" for k in sorted(names - set(frozen))
    ]
    problems += [
        f"{k}: in the table, not a setting of estimate_llc" for k in sorted(set(frozen) - names)
    ]
    fields = {f.name for f in dataclasses.fields(config.SamplingConfig)}
    for key in sorted(names & set(frozen) - set(settings.EXTRA_SETTINGS)):
        value, table = live[key], frozen[key]
        if key == "localization":
            same = value is None and table == config.DEFAULT_LOCALIZATION
            value = f"{value!r} (DEFAULT_LOCALIZATION = {config.DEFAULT_LOCALIZATION!r})"
        elif key in fields:

            def made(v, key=key):  # both through SamplingConfig: its normal form of the value
                return getattr(config.SamplingConfig(**{key: settings.hashable(v)}), key)

            same = made(table) == made(value)
        else:
            same = settings.json_value(key, value) == table
        if not same:
            problems.append(f"{key}: estimate_llc's default is {value}, the table's {table!r}")
    if frozen.get("seed") != 0 or frozen.get("data") != FULL_DATA:
        problems.append(f"seed/data: the table has {frozen.get('seed')!r}/{frozen.get('data')!r}")
    return problems


def test_estimate_llc_defaults_are_the_frozen_identity_defaults():
    """A cell id leaves out the settings at their default, so a default of estimate_llc that
    changes would silently relabel every stored result: the frozen table must follow."""
    assert sorted(identity.IDENTITY_DEFAULTS) == list(range(1, identity.SCHEMA_VERSION + 1))
    frozen = identity.IDENTITY_DEFAULTS[identity.SCHEMA_VERSION]
    problems = _drift(config.ESTIMATE_SETTINGS, frozen)
    assert not problems, (
        "estimate_llc's settings (jaxslt.config.ESTIMATE_SETTINGS) no longer match the identity "
        f"defaults frozen for schema version {identity.SCHEMA_VERSION} "
        "(jaxslt/study/identity.py, IDENTITY_DEFAULTS):\n  " + "\n  ".join(problems) + "\n"
        "Stored cell ids leave out the settings at these defaults, so they must not move. "
        "Either restore estimate_llc's default, or bump SCHEMA_VERSION (jaxslt/study/identity.py) "
        "and add IDENTITY_DEFAULTS[new version] with the new defaults (keep the old tables: "
        "identities leave a setting out only at its value in the first table that has it)."
    )


def test_drift_is_caught():
    frozen = identity.IDENTITY_DEFAULTS[identity.SCHEMA_VERSION]
    live = dict(config.ESTIMATE_SETTINGS)
    assert _drift({**live, "num_draws": 2000}, frozen) == [
        "num_draws: estimate_llc's default is 2000, the table's 1000"
    ]
    assert _drift({**live, "new_setting": 1}, frozen) == [
        "new_setting: a setting of estimate_llc, not in the table"
    ]
    assert _drift({**live, "sampler_options": (("a", 1.0),)}, frozen)
    assert _drift({**live, "localization": 10.0}, frozen)
    assert not _drift({**live, "mesh": "anything", "step_size": config.REQUIRED}, frozen)


def test_identities_leave_settings_out_at_their_first_frozen_value(monkeypatch):
    """A later schema version that changes a default names its cells explicitly (no stored
    result relabelled); one that adds a setting keeps every existing id."""
    first = identity.IDENTITY_DEFAULTS[1]
    later = {**first, "num_draws": 2000, "new_setting": "off"}
    monkeypatch.setattr(identity, "IDENTITY_DEFAULTS", {1: first, 2: later})
    left_out = identity.left_out_values()
    assert left_out == {**first, "new_setting": "off"}
