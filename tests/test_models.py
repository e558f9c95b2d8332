"""Parameters of any pytree shape: ``None`` and empty nodes (Equinox's ``partition`` leaves
``None`` where a field is static), NamedTuples, Equinox modules. The "Any JAX model" blocks of
docs/models.md (run by test_readme.py) cover Flax Linen, NNX, Equinox and Haiku end to end."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jaxslt

KW = dict(step_size=1e-4, num_chains=2, num_draws=20, num_burnin=10, batch_size=32,
          diagnostics=False, progress=False)  # fmt: skip


class Affine(NamedTuple):
    w: jax.Array
    b: jax.Array | None


def _data():
    x = jax.random.normal(jax.random.key(0), (128, 3))
    return x, x @ jnp.array([1.0, -2.0, 0.5]) + 0.1


def _loss(p, batch):
    x, y = batch
    return jnp.mean((x @ p["layer"].w + p["bias"]["b"] - y) ** 2)


PLAIN = {"layer": Affine(jnp.array([1.0, -2.0, 0.5]), None), "bias": {"b": jnp.array(0.1)}}
HOLLOW = {  # the same leaves, with None and empty nodes around them
    "layer": Affine(jnp.array([1.0, -2.0, 0.5]), None),
    "bias": {"b": jnp.array(0.1), "none": None, "empty": {}},
    "tuple": (),
}


def _mesh():
    return jax.make_mesh((1, 1), ("chain", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"mesh": "mesh"},
        {"restrict": "bias/**"},
        {"observables": True, "observable_draws": 5},
        {"sampler": "sghmc"},
    ],
    ids=["plain", "mesh", "restrict", "observables", "sghmc"],
)
def test_none_and_empty_nodes_change_nothing(extra):
    extra = {**extra, **({"mesh": _mesh()} if "mesh" in extra else {})}
    data = _data()
    hollow = jaxslt.estimate_llc(_loss, HOLLOW, data, key=jax.random.key(1), **KW, **extra)
    plain = jaxslt.estimate_llc(_loss, PLAIN, data, key=jax.random.key(1), **KW, **extra)
    np.testing.assert_array_equal(hollow.loss_trace, plain.loss_trace)
    np.testing.assert_array_equal(hollow.llc_per_chain, plain.llc_per_chain)


def test_param_specs_may_mirror_none_nodes_or_list_the_leaves():
    data, mesh = _data(), _mesh()
    tree = {"layer": Affine(P("model"), None), "bias": {"b": None, "none": None, "empty": {}},
            "tuple": ()}  # fmt: skip
    results = [
        jaxslt.estimate_llc(
            _loss, HOLLOW, data, key=jax.random.key(1), mesh=mesh, param_specs=specs, **KW
        )
        for specs in (tree, [None, P("model")], None)
    ]
    for other in results[1:]:
        np.testing.assert_array_equal(other.loss_trace, results[0].loss_trace)
    with pytest.raises(ValueError, match="param_specs must have the structure of params"):
        jaxslt.estimate_llc(_loss, HOLLOW, data, key=jax.random.key(1), mesh=mesh,
                            param_specs=[None], **KW)  # fmt: skip


def test_all_none_params_are_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="params is an empty pytree"):
        jaxslt.estimate_llc(_loss, {"w": None, "e": {}}, _data(), key=jax.random.key(1), **KW)


def test_equinox_partition_combine_and_restrict():
    eqx = pytest.importorskip("equinox")
    model = eqx.nn.MLP(3, "scalar", 8, 2, activation=jnp.tanh, key=jax.random.key(2))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    x, y = _data()

    def loss(p, batch):
        return jnp.mean((jax.vmap(eqx.combine(p, static))(batch[0]) - batch[1]) ** 2)

    full = jaxslt.estimate_llc(loss, params, (x, y), key=jax.random.key(1), **KW)
    last = jaxslt.estimate_llc(loss, params, (x, y), key=jax.random.key(1), restrict="layers/2/**",
                               **KW)  # fmt: skip
    assert np.isfinite(full.llc_per_chain).all() and np.isfinite(last.llc_per_chain).all()
    assert "layers/2/weight" in jaxslt.tree_paths(params)
    mesh_run = jaxslt.estimate_llc(loss, params, (x, y), key=jax.random.key(1), mesh=_mesh(), **KW)
    np.testing.assert_allclose(mesh_run.loss_trace, full.loss_trace, rtol=1e-5, atol=1e-7)
