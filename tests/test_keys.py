"""Old-style keys (``jax.random.PRNGKey``, uint32 words) and new-style typed keys
(``jax.random.key``) of the same seed give the same numbers everywhere, bit for bit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import dummy_data, quadratic_loss, quadratic_params

import jaxslt

KW = dict(step_size=1e-3, num_draws=20, num_burnin=10, batch_size=16, diagnostics=False,
          progress=False)  # fmt: skip


def _regression():
    x = jax.random.normal(jax.random.key(0), (128, 3))
    data = (x, x @ jnp.array([1.0, -2.0, 0.5]))

    def loss(p, batch):
        x, y = batch
        return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    return loss, {"w": jnp.array([1.0, -2.0, 0.5]), "b": jnp.zeros(())}, data


def _same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("chain_batch_size", [None, 2])  # "auto" resolves to one of them
def test_estimate_llc_old_and_new_keys_agree(chain_batch_size):
    loss, params, data = _regression()
    results = [
        jaxslt.estimate_llc(
            loss, params, data, key=key, num_chains=8, chain_batch_size=chain_batch_size, **KW
        )
        for key in (jax.random.PRNGKey(3), jax.random.key(3))
    ]
    _same(results[0].loss_trace, results[1].loss_trace)
    _same(results[0].llc_per_chain, results[1].llc_per_chain)
    _same(results[0].mala_accept, results[1].mala_accept)


def test_an_old_style_key_reuses_the_typed_keys_program(traces):
    """Both spellings of a seed give the same numbers, so the shell wraps an old-style key
    before anything compiles: switching spelling costs no second compile."""
    loss, params, data = _regression()
    jaxslt.estimate_llc(loss, params, data, key=jax.random.key(3), num_chains=2, **KW)
    before = traces["sample_llc"]
    jaxslt.estimate_llc(loss, params, data, key=jax.random.PRNGKey(4), num_chains=2, **KW)
    assert traces["sample_llc"] == before


def test_mesh_old_and_new_keys_agree():
    loss, params, data = _regression()
    mesh = jax.make_mesh((1, 1), ("chain", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    results = [
        jaxslt.estimate_llc(
            loss, params, data, key=key, num_chains=4, chain_batch_size=2, mesh=mesh, **KW
        )
        for key in (jax.random.PRNGKey(7), jax.random.key(7))
    ]
    _same(results[0].loss_trace, results[1].loss_trace)


@pytest.mark.parametrize("sampler", ["sghmc", "mala"])
def test_other_samplers_old_and_new_keys_agree(sampler):
    loss, params, data = _regression()
    kw = KW | ({"batch_size": 128} if sampler == "mala" else {})
    results = [
        jaxslt.estimate_llc(
            loss, params, data, key=key, num_chains=4, chain_batch_size=2, sampler=sampler, **kw
        )
        for key in (jax.random.PRNGKey(2), jax.random.key(2))
    ]
    _same(results[0].loss_trace, results[1].loss_trace)


def test_calibrate_old_and_new_keys_agree():
    kw = dict(localizations=(1.0,), num_chains=4, num_draws=50, num_burnin=20, batch_size=16,
              cell_batch_size=2)  # fmt: skip
    tables = [
        jaxslt.calibrate(quadratic_loss, quadratic_params(), dummy_data(), key=key, **kw).table
        for key in (jax.random.PRNGKey(0), jax.random.key(0))
    ]
    assert tables[0].equals(tables[1])


def test_llc_trajectory_old_and_new_keys_agree():
    loss, params, data = _regression()
    checkpoints = [jax.tree.map(lambda w, s=s: w + s, params) for s in (0.0, 0.05)]
    tables = [
        jaxslt.llc_trajectory(
            loss, checkpoints, data, key=key, num_chains=4, chain_batch_size=2, **KW
        )
        for key in (jax.random.PRNGKey(4), jax.random.key(4))
    ]
    assert tables[0]["llc_mean"].tolist() == tables[1]["llc_mean"].tolist()


def test_sample_llc_under_vmap_over_old_style_keys():
    loss, params, data = _regression()
    config = jaxslt.SamplingConfig(num_chains=4, num_draws=5, batch_size=16, chain_batch_size=2)
    kw = dict(step_size=1e-3, nbeta=10.0, localization=1.0, config=config)
    seeds = jnp.arange(2)
    old = jax.vmap(lambda k: jaxslt.sample_llc(loss, params, data, k, **kw).llc_per_chain)(
        jax.vmap(jax.random.PRNGKey)(seeds)
    )
    new = jax.vmap(lambda k: jaxslt.sample_llc(loss, params, data, k, **kw).llc_per_chain)(
        jax.vmap(jax.random.key)(seeds)
    )
    _same(old, new)


def test_a_bad_key_names_the_argument():
    loss, params, data = _regression()
    with pytest.raises(TypeError, match="key must be one PRNG key"):
        jaxslt.estimate_llc(loss, params, data, key=3, num_chains=2, **KW)


def test_a_study_cell_equals_estimate_llc_with_an_old_style_key_of_its_seed():
    from jaxslt import study
    from jaxslt.study import examples

    spec = study.Spec(
        problem="jaxslt.study.examples:dln_problem",
        problem_kwargs={"widths": [3, 2, 3], "rank": 1, "num_examples": 64},
        checkpoints={0: examples.dln_checkpoints([3, 2, 3], 1, steps=[0], num_examples=64)[0]},
        store=":memory:",
        name="keys",
        settings={
            "num_chains": 2,
            "num_draws": 20,
            "num_burnin": 10,
            "batch_size": 16,
            "step_size": 1e-4,
            "localization": 10.0,
        },
        grid={"seed": [5]},
    )
    (cell,) = study.expand(spec)
    problem = examples.dln_problem([3, 2, 3], 1, num_examples=64)
    params = spec.checkpoints.trees[0]
    outcome = study.execute_cell(problem, params, cell)
    key = jax.random.PRNGKey(5)  # the cell runs with jax.random.key(seed)
    direct = jaxslt.estimate_llc(
        problem.loss_fn, params, problem.data, key=key, progress=False, **cell.kwargs()
    )
    np.testing.assert_array_equal(outcome.traces["loss_trace"], direct.loss_trace)
