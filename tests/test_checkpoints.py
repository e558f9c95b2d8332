"""jaxslt.checkpoints: orbax round trips (Linen, NNX, arbitrary trees), step discovery, reading
directories written by a user's own orbax CheckpointManager, and the errors people hit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxslt.checkpoints import checkpoint_steps, load_checkpoint, load_checkpoints, save_checkpoint


def assert_trees_equal(actual, expected):
    """Same structure, shapes, dtypes and bit-identical values."""
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert np.asarray(a).dtype == np.asarray(e).dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(nn.LayerNorm()(nn.Dense(5)(x)))


class NNXModel(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.dense = nnx.Linear(3, 4, rngs=rngs)
        self.norm = nnx.LayerNorm(4, rngs=rngs)

    def __call__(self, x):
        return self.norm(self.dense(x))


def linen_variables(seed: int):
    return MLP().init(jax.random.key(seed), jnp.ones((1, 3)))


def test_linen_variables_round_trip(tmp_path):
    variables = linen_variables(0)
    path = save_checkpoint(tmp_path, 7, variables)
    assert path == tmp_path.resolve() / "7"
    # as saved (nested dicts of jax arrays) and into an abstract target from eval_shape
    assert_trees_equal(load_checkpoint(tmp_path, 7), variables)
    like = jax.eval_shape(MLP().init, jax.random.key(0), jnp.ones((1, 3)))
    restored = load_checkpoint(str(tmp_path), 7, like=like)
    assert_trees_equal(restored, variables)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(restored))
    x = jax.random.normal(jax.random.key(1), (4, 3))
    np.testing.assert_array_equal(MLP().apply(restored, x), MLP().apply(variables, x))


def test_nnx_state_round_trip(tmp_path):
    graphdef, state = nnx.split(NNXModel(nnx.Rngs(0)))
    save_checkpoint(tmp_path, 1, state)
    abstract = nnx.state(nnx.eval_shape(lambda: NNXModel(nnx.Rngs(0))))
    restored = load_checkpoint(tmp_path, 1, like=abstract)
    assert isinstance(restored, nnx.State)
    assert_trees_equal(restored, state)
    x = jax.random.normal(jax.random.key(1), (2, 3))
    np.testing.assert_array_equal(nnx.merge(graphdef, restored)(x), nnx.merge(graphdef, state)(x))
    # without `like` the State's nesting comes back as plain dicts with the same leaves
    plain = load_checkpoint(tmp_path, 1)
    assert isinstance(plain, dict)
    assert_trees_equal(jax.tree.leaves(plain), jax.tree.leaves(state))


def test_concrete_like_casts_dtypes(tmp_path):
    variables = linen_variables(0)
    save_checkpoint(tmp_path, 0, variables)
    like = jax.tree.map(lambda x: x.astype(jnp.bfloat16), variables)
    restored = load_checkpoint(tmp_path, 0, like=like)
    assert_trees_equal(restored, like)  # the float32 values rounded to bfloat16, exactly


trees = st.dictionaries(
    st.text("abcdefgh", min_size=1, max_size=4),
    hnp.arrays(
        st.sampled_from([np.float32, np.float16, np.int32]),
        hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=8)
@given(tree=trees, step=st.integers(0, 10**9))
def test_round_trip_property(tmp_path_factory, tree, step):
    directory = tmp_path_factory.mktemp("prop")
    params = {"w": jax.tree.map(jnp.asarray, tree), "nested": {"b": jnp.arange(3.0)}}
    save_checkpoint(directory, step, params)
    assert checkpoint_steps(directory) == [step]
    assert_trees_equal(load_checkpoint(directory, step), params)


def test_steps_sorted_whatever_the_save_order(tmp_path):
    order = [100, 3, 20, 0, 1000]
    for step in order:
        save_checkpoint(tmp_path, np.int64(step), {"w": jnp.full((2,), float(step))})
    assert checkpoint_steps(tmp_path) == sorted(order)
    loaded = load_checkpoints(tmp_path)
    assert [s for s, _ in loaded] == sorted(order)
    for step, params in loaded:
        np.testing.assert_array_equal(params["w"], np.full((2,), float(step), np.float32))
    assert [s for s, _ in load_checkpoints(tmp_path, [20, 3])] == [20, 3]  # the order asked
    # an unfinished (temporary) step folder, as orbax leaves after a crash, is not a step
    (tmp_path / "5.orbax-checkpoint-tmp-17").mkdir()
    (tmp_path / "notes").mkdir()
    assert checkpoint_steps(tmp_path) == sorted(order)


def test_reads_a_users_checkpoint_manager_directory(tmp_path):
    """A typical Flax training loop: a CheckpointManager keeping the last few steps."""
    options = ocp.CheckpointManagerOptions(max_to_keep=3, enable_async_checkpointing=False)
    states = {step: linen_variables(step) for step in (10, 20, 30, 40)}
    with ocp.CheckpointManager(tmp_path, options=options) as manager:
        for step, variables in states.items():
            manager.save(step, args=ocp.args.StandardSave(variables))
    assert checkpoint_steps(tmp_path) == [20, 30, 40]
    for step, params in load_checkpoints(tmp_path):
        assert_trees_equal(params, states[step])
    # and the reverse: a directory we wrote restores in the user's own manager
    ours = tmp_path / "ours"
    save_checkpoint(ours, 5, states[10])
    with ocp.CheckpointManager(ours) as manager:
        assert manager.all_steps() == [5]
        assert_trees_equal(manager.restore(5, args=ocp.args.StandardRestore()), states[10])


def test_reads_composite_items_and_prefixed_step_names(tmp_path):
    options = ocp.CheckpointManagerOptions(
        step_prefix="ckpt", step_format_fixed_length=6, enable_async_checkpointing=False
    )
    variables = linen_variables(0)
    with ocp.CheckpointManager(tmp_path, options=options, item_names=("state", "meta")) as m:
        m.save(
            250,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave({"lr": 1e-3})
            ),
        )
    assert (tmp_path / "ckpt_000250").is_dir()
    assert checkpoint_steps(tmp_path) == [250]
    # "meta" is JSON, so the only pytree item is chosen without asking
    assert_trees_equal(load_checkpoint(tmp_path, 250), variables)
    assert_trees_equal(load_checkpoint(tmp_path, 250, item="state"), variables)
    with pytest.raises(ValueError, match=r"item 'params' is not a pytree item .*\['state'\]"):
        load_checkpoint(tmp_path, 250, item="params")


def test_several_pytree_items_need_item(tmp_path):
    with ocp.CheckpointManager(tmp_path, item_names=("params", "opt_state")) as m:
        m.save(
            1,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave({"w": jnp.ones(2)}),
                opt_state=ocp.args.StandardSave({"mu": jnp.zeros(2)}),
            ),
        )
        m.wait_until_finished()
    with pytest.raises(ValueError, match=r"several pytree items \['opt_state', 'params'\].*item="):
        load_checkpoint(tmp_path, 1)
    np.testing.assert_array_equal(load_checkpoint(tmp_path, 1, item="params")["w"], np.ones(2))


def test_step_folder_that_is_itself_the_pytree(tmp_path):
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "12", {"w": jnp.arange(4.0)})
    assert checkpoint_steps(tmp_path) == [12]
    np.testing.assert_array_equal(load_checkpoint(tmp_path, 12)["w"], np.arange(4.0))


def test_saved_on_devices_this_process_lacks(tmp_path):
    """A checkpoint written on a device this process does not have (e.g. a GPU run read on a
    laptop) loads onto the default device instead of failing on the topology."""
    devices = jax.device_count() + 1
    script = textwrap.dedent(f"""
        import jax, jax.numpy as jnp
        from jaxslt.checkpoints import save_checkpoint
        x = jax.device_put(jnp.arange(3.0), jax.devices()[-1])
        save_checkpoint({str(tmp_path)!r}, 4, {{"w": x}})
    """)
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    }
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120)
    restored = load_checkpoint(tmp_path, 4)["w"]
    np.testing.assert_array_equal(restored, np.arange(3.0))
    assert restored.sharding == jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def test_missing_directory(tmp_path):
    missing = tmp_path / "nope"
    for call in (
        lambda: checkpoint_steps(missing),
        lambda: load_checkpoint(missing, 0),
        lambda: load_checkpoints(missing),
    ):
        with pytest.raises(FileNotFoundError, match=r"checkpoint directory .*nope.* does not"):
            call()
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        checkpoint_steps(tmp_path / "file")
    with pytest.raises(FileNotFoundError, match="no orbax checkpoints in"):
        load_checkpoints(tmp_path)
    assert checkpoint_steps(tmp_path) == []


def test_missing_step_lists_the_steps_there(tmp_path):
    for step in (2, 8):
        save_checkpoint(tmp_path, step, {"w": jnp.ones(1)})
    with pytest.raises(
        FileNotFoundError, match=r"no checkpoint for step 5 .* steps there are \[2, 8\]"
    ):
        load_checkpoint(tmp_path, 5)
    with pytest.raises(FileNotFoundError, match=r"step 9"):
        load_checkpoints(tmp_path, [2, 9])


def test_bad_arguments(tmp_path):
    params = {"w": jnp.ones(2)}
    save_checkpoint(tmp_path, 3, params)
    with pytest.raises(FileExistsError, match="step 3 already exists"):
        save_checkpoint(tmp_path, 3, params)
    with pytest.raises(ValueError, match="step must be >= 0; got -1"):
        save_checkpoint(tmp_path, -1, params)
    for bad in (True, 2.5, "3"):
        with pytest.raises(TypeError, match="step must be a non-negative integer"):
            load_checkpoint(tmp_path, bad)
    with pytest.raises(TypeError, match="steps must be a sequence of integers"):
        load_checkpoints(tmp_path, 3)
    with pytest.raises(TypeError, match=r"directory must be a str or pathlib\.Path"):
        checkpoint_steps(3)
    with pytest.raises(ValueError, match="params has no array leaves"):
        save_checkpoint(tmp_path, 4, {})
    with pytest.raises(ValueError, match=r"step 3 .* does not match .* `like`"):
        load_checkpoint(tmp_path, 3, like={"w": jax.ShapeDtypeStruct((5,), jnp.float32)})
    with pytest.raises(ValueError, match=r"step 3 .* does not match .* `like`"):
        load_checkpoint(tmp_path, 3, like={"v": jax.ShapeDtypeStruct((2,), jnp.float32)})
