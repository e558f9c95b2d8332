"""Stored cell identities never move: ids pinned as computed by jaxslt before the identity
defaults were frozen (commit 3c5d807), and estimate_llc's defaults checked against the frozen
table the identities are made from."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from jaxslt import study
from jaxslt.study.spec import cell_identity

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
