"""Weight-refined LLC: selections, gather/scatter, and equality with a model whose other weights
are constants."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxslt
from jaxslt.restriction import glob_to_regex, make_restriction

SETTINGS = dict(step_size=1e-4, num_chains=2, num_draws=30, num_burnin=10, batch_size=32,
                nbeta=200.0, localization=5.0, diagnostics=False)  # fmt: skip


@pytest.mark.parametrize(
    "pattern, path, hit",
    [
        ("params/*/kernel", "params/layer_0/kernel", True),
        ("params/*/kernel", "params/block/attn/kernel", False),  # * stays in one segment
        ("params/**", "params/block/attn/kernel", True),
        ("params/**", "params", False),
        ("params/**/kernel", "params/kernel", True),  # ** may be zero segments
        ("params/**/kernel", "params/a/b/kernel", True),
        ("params/**/kernel", "params/a/b/bias", False),
        ("**/bias", "bias", True),
        ("**", "a/b", True),
        ("layer_?", "layer_1", True),
        ("layer_?", "layer_10", False),
        ("layer_[01]", "layer_1", True),
        ("layer_[!01]", "layer_1", False),
        ("a.b", "axb", False),  # '.' is literal
    ],
)
def test_glob_semantics(pattern, path, hit):
    assert bool(glob_to_regex(pattern).match(path)) is hit


def test_glob_rejects_partial_double_star():
    with pytest.raises(ValueError, match="whole path segment"):
        glob_to_regex("params/a**")


def test_tree_paths_for_linen_nnx_and_plain_trees():
    key = jax.random.key(0)
    linen = jaxslt.problems.deep_linear_network([3, 4, 2], 1, key=key, module="linen")
    nnx = jaxslt.problems.deep_linear_network([3, 4, 2], 1, key=key, module="nnx")
    plain = jaxslt.problems.deep_linear_network([3, 4, 2], 1, key=key)
    assert jaxslt.tree_paths(linen.params) == ["params/layer_0/kernel", "params/layer_1/kernel"]
    assert jaxslt.tree_paths(nnx.params) == ["layers/0/kernel", "layers/1/kernel"]
    assert jaxslt.tree_paths(plain.params) == ["0", "1"]


def _dln(module="linen"):
    return jaxslt.problems.deep_linear_network(
        [4, 5, 3, 4], 2, key=jax.random.key(1), num_examples=256, module=module
    )


@pytest.mark.parametrize("module", ["linen", "nnx"])
def test_one_layer_equals_a_model_whose_other_layers_are_constants(module):
    """The defining property: restricting to layer 1 is sampling layer 1 alone, the other
    layers closed over as constants. Same key, same draws: equal to float rounding."""
    problem = _dln(module)
    pattern = "params/layer_1/**" if module == "linen" else "layers/1/**"
    key = jax.random.key(7)
    restricted = jaxslt.estimate_llc(
        problem.loss_fn, problem.params, problem.data, key=key, restrict=pattern, **SETTINGS
    )
    leaves, treedef = jax.tree.flatten(problem.params)

    def layer_loss(layer, batch):  # a model with one free layer and constant others
        return problem.loss_fn(treedef.unflatten([leaves[0], layer[0], leaves[2]]), batch)

    reference = jaxslt.estimate_llc(layer_loss, (leaves[1],), problem.data, key=key, **SETTINGS)
    np.testing.assert_allclose(restricted.loss_trace, reference.loss_trace, rtol=1e-6)
    np.testing.assert_allclose(restricted.llc_per_chain, reference.llc_per_chain, rtol=1e-5)
    # and it differs from the unrestricted estimate (the frozen layers matter)
    full = jaxslt.estimate_llc(problem.loss_fn, problem.params, problem.data, key=key, **SETTINGS)
    assert not np.allclose(full.loss_trace, restricted.loss_trace)


def test_element_mask_equals_a_model_of_those_elements_only():
    """One 'head': a block of columns of one kernel, selected per element by a predicate."""
    problem = _dln("linen")
    cols = slice(1, 3)

    def head(path, leaf):
        mask = np.zeros(leaf.shape, bool)
        if path == "params/layer_1/kernel":
            mask[:, cols] = True
        return mask

    key = jax.random.key(3)
    restricted = jaxslt.estimate_llc(
        problem.loss_fn, problem.params, problem.data, key=key, restrict=head, **SETTINGS
    )
    kernel = problem.params["params"]["layer_1"]["kernel"]
    index = np.flatnonzero(head("params/layer_1/kernel", kernel))

    def block_loss(free, batch):
        new = jnp.ravel(kernel).at[index].set(free[0]).reshape(kernel.shape)
        params = jax.tree.map(lambda x: x, problem.params)
        params["params"]["layer_1"]["kernel"] = new
        return problem.loss_fn(params, batch)

    reference = jaxslt.estimate_llc(
        block_loss, (jnp.ravel(kernel)[index],), problem.data, key=key, **SETTINGS
    )
    np.testing.assert_allclose(restricted.loss_trace, reference.loss_trace, rtol=1e-6)


def test_mask_pytree_and_selecting_everything():
    problem = _dln("linen")
    key = jax.random.key(5)
    everything = jax.tree.map(lambda _: True, problem.params)
    restricted = jaxslt.estimate_llc(
        problem.loss_fn, problem.params, problem.data, key=key, restrict=everything, **SETTINGS
    )
    full = jaxslt.estimate_llc(problem.loss_fn, problem.params, problem.data, key=key, **SETTINGS)
    np.testing.assert_allclose(restricted.loss_trace, full.loss_trace, rtol=1e-6)
    by_glob = jaxslt.estimate_llc(
        problem.loss_fn, problem.params, problem.data, key=key, restrict="params/**", **SETTINGS
    )
    np.testing.assert_array_equal(by_glob.loss_trace, restricted.loss_trace)


def test_smaller_part_gives_smaller_llc():
    """λ(w*; V) ≤ λ(w*; V') for V ⊂ V' is not a theorem, but a single layer of a DLN has far
    fewer effective directions than the whole: the restricted estimate must be smaller."""
    problem = _dln("linen")
    settings_ = {**SETTINGS, "num_draws": 300, "num_burnin": 200}
    key = jax.random.key(11)
    one = jaxslt.estimate_llc(problem.loss_fn, problem.params, problem.data, key=key,
                              restrict="params/layer_0/**", **settings_)  # fmt: skip
    full = jaxslt.estimate_llc(problem.loss_fn, problem.params, problem.data, key=key, **settings_)
    assert 0 < float(one.llc_mean) < float(full.llc_mean)


def test_same_selection_reuses_the_compiled_program(traces):
    problem = _dln("linen")

    jaxslt.estimate_llc(problem.loss_fn, problem.params, problem.data, key=jax.random.key(0),
                        restrict=["params/layer_0/**"], **SETTINGS)  # fmt: skip
    size = traces["sample_llc"]
    jaxslt.estimate_llc(problem.loss_fn, problem.params, problem.data, key=jax.random.key(1),
                        restrict=("params/layer_0/**",), **SETTINGS)  # fmt: skip
    assert traces["sample_llc"] == size


def test_two_heads_of_one_layer_share_the_compiled_program(traces):
    """Selections with the same layout and sizes differ only in traced index arrays."""
    problem = _dln("linen")

    def head(cols):
        def select(path, leaf):
            mask = np.zeros(leaf.shape, bool)
            if path == "params/layer_1/kernel":
                mask[:, cols] = True
            return mask

        return select

    def run(cols):
        key = jax.random.key(0)
        return jaxslt.estimate_llc(problem.loss_fn, problem.params, problem.data, key=key,
                                   restrict=head(cols), **SETTINGS)  # fmt: skip

    first = run(slice(0, 1))  # layer_1 kernel is (5, 3): one column each
    size = traces["sample_llc"]
    second = run(slice(2, 3))
    assert traces["sample_llc"] == size
    assert not np.allclose(first.loss_trace, second.loss_trace)


def test_sample_llc_takes_a_restriction_under_jit():
    problem = _dln("linen")
    r = make_restriction(problem.params, "params/layer_2/**")
    run = jax.jit(
        lambda p, k: jaxslt.sample_llc(
            problem.loss_fn, p, problem.data, k, step_size=1e-4, restrict=r,
            config=jaxslt.SamplingConfig(num_chains=2, num_draws=10, num_burnin=0),
        )
    )  # fmt: skip
    result = run(problem.params, jax.random.key(0))
    assert np.isfinite(result.llc_mean)
    assert r.num_free == 3 * 4


@settings(max_examples=30)
@given(st.lists(st.booleans(), min_size=12, max_size=12), st.integers(0, 2**31 - 1))
def test_scatter_gather_round_trip(bits, seed):
    keys = jax.random.split(jax.random.key(seed), 2)
    w = {"a": jax.random.normal(keys[0], (3, 4)), "b": jnp.arange(2.0)}
    other = jax.tree.map(lambda x: x + 10.0, w)
    mask = {"a": np.array(bits).reshape(3, 4), "b": True}
    r = make_restriction(w, mask)
    chex.assert_trees_all_equal(r.scatter(w, r.gather(w)), w)
    mixed = r.scatter(w, r.gather(other))
    np.testing.assert_array_equal(mixed["a"], np.where(mask["a"], other["a"], w["a"]))
    np.testing.assert_array_equal(mixed["b"], other["b"])
    assert r.num_free == int(np.sum(bits)) + 2


def test_errors_name_the_problem():
    params = {"params": {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}}}
    with pytest.raises(ValueError, match=r"'params/attn/\*\*' matches no parameter.*dense/kernel"):
        make_restriction(params, "params/attn/**")
    with pytest.raises(ValueError, match="selects no parameter"):
        make_restriction(params, lambda path, leaf: False)
    with pytest.raises(TypeError, match="dtype"):
        make_restriction(params, lambda path, leaf: np.ones(leaf.shape))
    with pytest.raises(ValueError, match="leaf's shape"):
        make_restriction(params, lambda path, leaf: np.ones((7,), bool))
    with pytest.raises(ValueError, match="structure of params"):
        make_restriction(params, {"params": {"dense": {"kernel": True}}})
    problem = _dln("linen")
    with pytest.raises(ValueError, match="matches no parameter"):
        jaxslt.estimate_llc(problem.loss_fn, problem.params, problem.data,
                            key=jax.random.key(0), restrict="nope/**", **SETTINGS)  # fmt: skip


def test_attention_head_selects_one_heads_slices_of_q_k_v_and_o():
    """Flax's MultiHeadAttention layout: q/k/v kernels (d_model, heads, head_dim), the output
    kernel (heads, head_dim, d_model). Head 1 of 2 with d_model 6, head_dim 3: 18 entries of
    each of the four kernels; the biases, another module and head 0 stay frozen."""
    attn = {name: {"kernel": np.zeros((6, 2, 3)), "bias": np.zeros((2, 3))}
            for name in ("query", "key", "value")}  # fmt: skip
    attn["out"] = {"kernel": np.zeros((2, 3, 6)), "bias": np.zeros(6)}
    params = {"block_0": {"attn": attn}, "block_1": {"attn": jax.tree.map(np.copy, attn)}}
    restriction = jaxslt.make_restriction(params, jaxslt.attention_head("block_0/attn/", 1))
    assert restriction.num_free == 4 * 18
    free = restriction.gather(params)
    moved = restriction.scatter(params, jax.tree.map(lambda v: jnp.ones_like(v), free))
    for name, axis in (("query", 1), ("key", 1), ("value", 1), ("out", 0)):
        kernel = np.moveaxis(np.asarray(moved["block_0"]["attn"][name]["kernel"]), axis, 0)
        np.testing.assert_array_equal(kernel[1], 1.0)
        np.testing.assert_array_equal(kernel[0], 0.0)
        np.testing.assert_array_equal(moved["block_0"]["attn"][name]["bias"], 0.0)
    assert not any(np.any(leaf) for leaf in jax.tree.leaves(moved["block_1"]))
