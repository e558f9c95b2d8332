"""Chains spread over a device mesh, and parameters split over a model axis, give the same
result as on one device.

The mesh runs are in subprocesses with 8 emulated CPU devices (XLA_FLAGS must be set before JAX
starts); the rules and argument checks run here on abstract or one-device meshes.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import AbstractMesh, AxisType
from jax.sharding import PartitionSpec as P

import jaxslt
from jaxslt import problems, validation
from jaxslt.sharding import MIN_SHARDED_SIZE, param_partition_specs

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    import jaxslt
    from jaxslt import problems
    assert jax.device_count() == 8, jax.devices()
    p = problems.deep_linear_network([4, 3, 4], 1, key=jax.random.key(0), num_examples=2000)
    kw = dict(key=jax.random.key(1), step_size=1e-4, localization=10.0, num_chains=8,
              num_draws=200, num_burnin=50, diagnostics=False)
    auto = (jax.sharding.AxisType.Auto,)
    mesh8 = jax.make_mesh((8,), ("chain",), axis_types=auto)
    mesh4 = jax.make_mesh((4, 2), ("chain", "model"), axis_types=auto * 2)
    one = jaxslt.estimate_llc(p.loss_fn, p.params, p.data, **kw)
    spread = jaxslt.estimate_llc(p.loss_fn, p.params, p.data, mesh=mesh8, **kw)
    grouped = jaxslt.estimate_llc(p.loss_fn, p.params, p.data, mesh=mesh4, chain_batch_size=4,
                                  **kw)
    for other in (spread, grouped):
        np.testing.assert_allclose(other.loss_trace, one.loss_trace, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(other.llc_per_chain, one.llc_per_chain, rtol=1e-4)
    hlo = jaxslt.sample_llc_jit.lower(
        p.loss_fn, p.params, p.data, kw["key"], step_size=1e-4, nbeta=1.0, localization=1.0,
        config=jaxslt.SamplingConfig(num_chains=8, num_draws=5, num_burnin=0, mesh=mesh8,
                                     step_check=False),
    ).compile().as_text()
    # after SPMD partitioning each device holds one chain's (4, 3) first layer, not all eight
    assert "f32[1,4,3]" in hlo and "f32[8,4,3]" not in hlo, "chain states are not sharded"
    try:
        jaxslt.estimate_llc(p.loss_fn, p.params, p.data, mesh=mesh8, **(kw | {"num_chains": 6}))
    except ValueError as err:
        assert "multiple of 8" in str(err)
    else:
        raise AssertionError("6 chains on an 8-device chain axis must be refused")
    print("OK")
    """
)


def _run_on_8_devices(script: str) -> None:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


@pytest.mark.xla_internals
def test_chains_over_a_mesh_match_one_device():
    _run_on_8_devices(SCRIPT)


MODEL_SCRIPT = textwrap.dedent(
    """
    import re, tempfile
    import jax, jax.numpy as jnp, numpy as np
    # a persistent compilation cache lets layer_shapes reuse estimate_llc's executables
    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp())
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    from jax.sharding import AxisType, PartitionSpec as P
    import jaxslt
    from jaxslt import problems
    from jaxslt import SamplingConfig, sample_llc_jit
    from jaxslt.sharding import MIN_SHARDED_SIZE, place_params
    assert jax.device_count() == 8, jax.devices()
    # W1 (8, 2048) and W2 (2048, 8) have MIN_SHARDED_SIZE elements: the automatic rule splits
    # their 2048 dimension over "model". Label noise keeps the residuals O(1): near a noise-free
    # fit the loss would be a difference of nearly equal outputs, magnifying rounding.
    p = problems.deep_linear_network([8, 2048, 8], 2, key=jax.random.key(0), num_examples=512,
                                     noise=1.0)
    assert MIN_SHARDED_SIZE == 8 * 2048
    key = jax.random.key(1)
    kw = dict(step_size=1e-5, localization=10.0, num_chains=8, num_draws=40, num_burnin=0,
              batch_size=32, acceptance_checks=0)
    one = jaxslt.estimate_llc(p.loss_fn, p.params, p.data, key=key, diagnostics=False, **kw)

    def layer_shapes(mesh, specs, group):
        # per-device f32 shapes of the (chain-stacked) layers in the partitioned program
        statics = {k: v for k, v in kw.items() if k not in ("step_size", "localization")}
        config = SamplingConfig(chain_batch_size=group, mesh=mesh, param_specs=specs,
                                step_check=False, **statics)
        hlo = sample_llc_jit.lower(
            p.loss_fn, place_params(p.params, mesh, specs), p.data, key,
            step_size=jnp.float32(1e-5), nbeta=jnp.float32(one.nbeta),
            localization=jnp.float32(10.0), config=config,
        ).compile().as_text()
        return set(re.findall(r"f32\\[[\\d,]+\\]", hlo))

    def mesh(shape, names):
        return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names))

    explicit = (P("model", None), None)  # W1 split along its 8 rows, W2 replicated
    cases = [
        (mesh((2, 4), ("chain", "model")), None, None, {"f32[4,8,512]", "f32[4,512,8]"}),
        (mesh((1, 8), ("chain", "model")), None, None, {"f32[8,8,256]", "f32[8,256,8]"}),
        (mesh((8,), ("model",)), None, None, {"f32[8,8,256]", "f32[8,256,8]"}),
        (mesh((2, 4), ("chain", "model")), explicit, None, {"f32[4,2,2048]", "f32[4,2048,8]"}),
        # one chain at a time, carried without its chain axis, still split over "model"
        (mesh((1, 8), ("chain", "model")), None, 1, {"f32[8,256]", "f32[256,8]"}),
    ]
    for m, specs, group, expected in cases:
        split = jaxslt.estimate_llc(p.loss_fn, p.params, p.data, key=key, diagnostics=False,
                                    mesh=m, param_specs=specs, chain_batch_size=group, **kw)
        # float rounding only: split contractions are summed in another order
        np.testing.assert_allclose(split.loss_trace, one.loss_trace, rtol=1e-5)
        np.testing.assert_allclose(split.llc_per_chain, one.llc_per_chain, rtol=1e-4)
        np.testing.assert_allclose(split.init_loss, one.init_loss, rtol=1e-6)
        shapes = layer_shapes(m, None if specs is None else tuple(P() if s is None else s
                                                                     for s in specs), group)
        assert expected <= shapes, (dict(m.shape), specs, shapes)
        whole = {s for s in shapes if s.endswith(("8,2048]", "2048,8]"))}
        # no device ever holds a whole layer (chain state, w*, gradient, noise or temporary)
        assert specs is not None or not whole, f"not split on {dict(m.shape)}: {whole}"
    print("OK")
    """
)


@pytest.mark.xla_internals
def test_parameters_split_over_a_model_axis_match_one_device():
    _run_on_8_devices(MODEL_SCRIPT)


def _mesh(**sizes: int) -> AbstractMesh:
    return AbstractMesh(
        tuple(sizes.values()), tuple(sizes), axis_types=(AxisType.Auto,) * len(sizes)
    )


@pytest.mark.parametrize(
    ("shape", "model", "expected"),
    [
        ((8, 2048), 4, P(None, "model")),  # the largest divisible dimension
        ((4096, 4), 4, P("model")),
        ((4096, 6), 4, P("model")),  # 6 does not split 4 ways
        ((128, 128), 4, P(None, "model")),  # a tie goes to the last dimension
        ((MIN_SHARDED_SIZE,), 8, P("model")),  # at the threshold: split
        ((MIN_SHARDED_SIZE - 1,), 1, P()),
        ((MIN_SHARDED_SIZE - 8,), 8, P()),  # below the threshold: replicated
        ((129, 129), 4, P()),  # no dimension divisible by 4
        ((8, 2048), 1, P()),  # a model axis of size 1 splits nothing
    ],
)
def test_automatic_model_axis_rule(shape, model, expected):
    params = {"w": jax.ShapeDtypeStruct(shape, jnp.float32)}
    assert param_partition_specs(params, _mesh(chain=2, model=model)) == {"w": expected}


@settings(max_examples=40)
@given(
    shape=st.lists(st.integers(1, 300), min_size=0, max_size=3),
    model=st.sampled_from([1, 2, 3, 4, 8]),
)
def test_automatic_rule_splits_one_largest_divisible_dimension_of_large_leaves(shape, model):
    (spec,) = jax.tree.leaves(
        param_partition_specs(jax.ShapeDtypeStruct(tuple(shape), jnp.float32), _mesh(model=model)),
        is_leaf=lambda x: isinstance(x, P),
    )
    divisible = [length for length in shape if length % model == 0]
    if model == 1 or not divisible or math.prod(shape) < MIN_SHARDED_SIZE:
        assert spec == P()
    else:
        (dim,) = [d for d, entry in enumerate(spec) if entry is not None]
        assert spec[dim] == "model" and shape[dim] == max(divisible)


def test_no_model_axis_means_replicated_and_given_specs_are_kept():
    params = {"a": jnp.zeros((64, 512)), "b": (jnp.zeros(4), jnp.zeros((2, 2)))}
    assert jax.tree.leaves(param_partition_specs(params, _mesh(chain=8)),
                           is_leaf=lambda x: isinstance(x, P)) == [P()] * 3  # fmt: skip
    assert param_partition_specs(params, None) == {"a": P(), "b": (P(), P())}
    given_specs = {"a": P("model"), "b": (None, P(None, "model"))}
    expected = {"a": P("model"), "b": (P(), P(None, "model"))}
    assert param_partition_specs(params, _mesh(model=2), given_specs) == expected
    flat = (P("model"), P(), P(None, "model"))  # jax.tree.leaves(params) order
    assert param_partition_specs(params, _mesh(model=2), flat) == expected


def test_param_specs_are_checked_against_params_and_mesh():
    params = {"a": jnp.zeros((6, 4)), "b": jnp.zeros(3)}
    mesh = _mesh(chain=2, model=4)
    ok = validation.check_param_specs({"a": P(None, "model"), "b": None}, params, mesh)
    assert ok == (P(None, "model"), P())
    assert validation.check_param_specs([P(None, "model"), P()], params, mesh) == ok
    assert validation.check_param_specs(None, params, mesh) is None
    bad = [
        ({"a": P("model")}, ValueError, "structure of params"),
        ({"a": P("model"), "b": None}, ValueError, "dimension 0 (length 6)"),
        ({"a": P(None, "chain"), "b": None}, ValueError, "other than 'chain'"),
        ({"a": P(None, "data"), "b": None}, ValueError, "names axis 'data'"),
        ({"a": P(None, None, "model"), "b": None}, ValueError, "at most 2 entries"),
        ({"a": P(("model", "model")), "b": None}, ValueError, "uses a mesh axis twice"),
        ({"a": "model", "b": None}, TypeError, "PartitionSpec or None"),
    ]
    for specs, error, words in bad:
        with pytest.raises(error, match=re.escape(words)):
            validation.check_param_specs(specs, params, mesh)
    with pytest.raises(ValueError, match="pass mesh="):
        validation.check_param_specs({"a": None, "b": None}, params, None)
    with pytest.raises(ValueError, match="restrict"):
        validation.check_param_specs({"a": None, "b": None}, params, mesh, restricted=True)


def test_mesh_axes_are_checked():
    device = np.array(jax.devices()[:1])
    auto = (AxisType.Auto,)
    validation.check_mesh(jax.sharding.Mesh(device, ("model",), axis_types=auto), 3, None)
    with pytest.raises(TypeError, match="'chain' axis, a 'model' axis or both"):
        validation.check_mesh(jax.sharding.Mesh(device, ("x",), axis_types=auto), 4, None)
    two = jax.sharding.Mesh(device.reshape(1, 1), ("chain", "data"), axis_types=auto * 2)
    with pytest.raises(ValueError, match=r"\['data'\] are used neither"):
        validation.check_mesh(two, 4, None)
    validation.check_mesh(two, 4, None, param_specs=(P("data"),))


def test_estimate_llc_checks_param_specs_before_compiling():
    p = problems.deep_linear_network([4, 3, 4], 1, key=jax.random.key(0), num_examples=64)
    mesh = jax.make_mesh((1, 1), ("chain", "model"), axis_types=(AxisType.Auto,) * 2)
    kw = dict(key=jax.random.key(1), step_size=1e-4)
    with pytest.raises(ValueError, match="at most 2 entries"):
        jaxslt.estimate_llc(p.loss_fn, p.params, p.data, mesh=mesh,
                            param_specs=(P(), P(None, None, "model")), **kw)  # fmt: skip
    with pytest.raises(ValueError, match="pass mesh="):
        jaxslt.estimate_llc(p.loss_fn, p.params, p.data, param_specs=(P(), P()), **kw)
    with pytest.raises(ValueError, match="restrict"):
        jaxslt.estimate_llc(p.loss_fn, p.params, p.data, mesh=mesh, param_specs=(P(), P()),
                            restrict="0", **kw)  # fmt: skip
