"""Smoke test of examples/icl_transformer.py (--quick): it trains, checkpoints, measures the LLC
and per-head LLC curves, finds stages and writes every output; plus its pure helpers."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from conftest import example_module

import jaxslt


@pytest.fixture(scope="module")
def icl():
    with example_module("icl_transformer") as module:
        yield module


def test_quick_run_writes_every_output(icl, tmp_path, capsys):
    assert icl.main(["--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("llc_curve.png", "head_llcs.png", "llc_curve.csv", "stages.csv", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    steps = icl.checkpoint_schedule(icl.QUICK["train_steps"], icl.QUICK["checkpoints"])
    assert jaxslt.checkpoints.checkpoint_steps(tmp_path / "checkpoints") == steps
    table = pd.read_csv(tmp_path / "llc_curve.csv")
    assert table["step"].tolist() == steps  # one row per checkpoint
    heads = [f"L1H{h}" for h in range(icl.QUICK["heads"])]  # --quick refines layer 1's heads
    for column in ["llc_mean", "llc_std", "loss"] + [f"{h}_llc_mean" for h in heads]:
        assert np.isfinite(table[column]).all(), column
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["step_size"] == icl.QUICK["step_size"]
    assert summary["nbeta"] == pytest.approx(
        icl.QUICK["eval_size"] / np.log(icl.QUICK["eval_size"])
    )
    assert set(summary["timings_s"]) >= {"train", "load", "llc_full", "llc_heads"}
    # the Bayes-optimal loss is below predicting zero, which is E[y²] ≈ d + σ²
    assert summary["baselines"]["bayes_optimal"] < summary["baselines"]["predict_zero"]
    assert "wall time: train" in out


def test_head_selector_masks_exactly_one_head(icl):
    model = icl.ICLTransformer(d_model=8, heads=2, layers=2)
    tokens, _ = icl.make_batch(jax.random.key(0), 1, 3, 4)
    params = model.init(jax.random.key(1), tokens)
    restriction = jaxslt.make_restriction(params, icl.head_selector(1, 1))
    head_dim = 8 // 2
    # W_Q, W_K, W_V: d_model × head_dim each; W_O: head_dim × d_model
    assert restriction.num_free == 4 * 8 * head_dim
    lines = sorted(restriction.describe().splitlines())
    assert lines == [
        f"params/block_1/attn/{name}/kernel: {8 * head_dim}/{8 * 8} sampled"
        for name in ("key", "out", "query", "value")
    ]
    # the sampled elements are head 1's: writing a constant into them changes exactly those
    free = restriction.gather(params)
    moved = restriction.scatter(params, jax.tree.map(lambda v: jnp.full_like(v, 7.0), free))
    for name, head_axis in (("query", 1), ("key", 1), ("value", 1), ("out", 0)):
        new = np.moveaxis(moved["params"]["block_1"]["attn"][name]["kernel"], head_axis, 0)
        old = np.moveaxis(params["params"]["block_1"]["attn"][name]["kernel"], head_axis, 0)
        np.testing.assert_array_equal(new[1], 7.0)
        np.testing.assert_array_equal(new[0], old[0])
    same = jax.tree.map(np.array_equal, moved["params"]["block_0"], params["params"]["block_0"])
    assert all(jax.tree.leaves(same))


def test_make_batch_is_the_regression_task(icl):
    tokens, y = icl.make_batch(jax.random.key(0), 5, 3, 4, noise_std=0.0)
    assert tokens.shape == (5, 8, 4) and y.shape == (5, 4)
    x = tokens[:, 0::2, 1:]
    np.testing.assert_array_equal(tokens[:, 0::2, 0], 0.0)  # x tokens: (0, x_k)
    np.testing.assert_array_equal(tokens[:, 1::2, 0], y)  # y tokens: (y_k, 0, ..., 0)
    np.testing.assert_array_equal(tokens[:, 1::2, 1:], 0.0)
    # noise-free: every sequence's y is one linear function of its x (4 pairs, 3 unknowns)
    task = jnp.linalg.lstsq(x[0], y[0])[0]
    np.testing.assert_allclose(x[0] @ task, y[0], atol=1e-5)


def test_bayes_mse_without_noise(icl):
    """σ² → 0, d = 2, t ~ N(0, I): at position 0 the prediction is 0 and the error E[(t·x)²] = d;
    after one pair t is known up to the direction orthogonal to x_1, error d − 1; after d pairs
    it is known exactly, error 0. Mean over K = 4 positions: (2 + 1 + 0 + 0)/4. 20,000
    sequences: Monte-Carlo standard error ≈ 1% of that."""
    tokens, y = icl.make_batch(jax.random.key(1), 20_000, 2, 4, noise_std=0.0)
    assert icl.bayes_mse(tokens, y, noise_var=1e-10) == pytest.approx(0.75, rel=0.04)


def test_checkpoint_schedule(icl):
    steps = icl.checkpoint_schedule(3000, 16)
    assert steps[0] == 0 and steps[1] == 10 and steps[-1] == 3000
    assert steps == sorted(set(steps)) and len(steps) == 16
    ratios = np.diff(np.log(steps[1:]))
    np.testing.assert_allclose(ratios, np.log(300) / 14, atol=0.06)  # log-spaced
