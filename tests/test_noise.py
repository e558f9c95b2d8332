"""jaxslt.noise draws jax.random.normal's numbers exactly, fused into their consumer."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxslt import noise


@pytest.mark.jax_internals
class NormalTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_equals_jax_random_normal_bit_for_bit(self):
        key = jax.random.key(7)
        for shape in [(), (1,), (7,), (3, 5), (2, 3, 4), (257, 129), (0, 3)]:
            got = self.variant(noise.normal, static_argnums=1)(key, shape)
            want = jax.random.normal(key, shape)
            chex.assert_trees_all_equal(got, want)
            self.assertEqual(got.dtype, jnp.float32)

    @chex.variants(with_jit=True, without_jit=True)
    def test_vmapped_keys(self):
        keys = jax.random.split(jax.random.key(3), 5)
        draw = self.variant(jax.vmap(lambda k: noise.normal(k, (4, 6))))
        chex.assert_trees_all_equal(
            draw(keys), jax.vmap(lambda k: jax.random.normal(k, (4, 6)))(keys)
        )


@pytest.mark.jax_internals
@settings(max_examples=12)  # each new shape compiles (~1 s)
@given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=4).map(tuple),
    raw=st.booleans(),
)
def test_same_numbers_for_any_seed_and_shape(seed, shape, raw):
    key = jax.random.PRNGKey(seed) if raw else jax.random.key(seed)
    np.testing.assert_array_equal(noise.normal(key, shape), jax.random.normal(key, shape))


@pytest.mark.parametrize(
    "key, dtype",
    [
        (jax.random.key(1, impl="rbg"), jnp.float32),
        (jax.random.key(1), jnp.bfloat16),
        (jax.random.key(1), jnp.float16),
    ],
    ids=["rbg-key", "bfloat16", "float16"],
)
def test_falls_back_to_jax_where_the_fused_form_does_not_apply(key, dtype):
    got = noise.normal(key, (5, 3), dtype)
    chex.assert_trees_all_equal(got, jax.random.normal(key, (5, 3), dtype))
    assert got.dtype == dtype


@pytest.mark.jax_internals
def test_equals_jax_in_the_non_partitionable_threefry_mode_too():
    key = jax.random.key(5)
    with jax.threefry_partitionable(False):
        chex.assert_trees_all_equal(noise.normal(key, (6, 7)), jax.random.normal(key, (6, 7)))


def test_tree_normal_splits_keys_like_optax():
    tree = {"a": jnp.zeros((5, 4)), "b": (jnp.zeros(3), jnp.zeros((2, 2), jnp.bfloat16))}
    key = jax.random.key(11)
    chex.assert_trees_all_equal(
        noise.tree_normal(key, tree), optax.tree.random_like(key, tree, jax.random.normal)
    )


@pytest.mark.jax_internals
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), raw=st.booleans())
def test_sign_normal_is_the_sign_of_the_normal_bit_for_bit(seed, raw):
    # 2**16 draws per key: both signs, and any draw where erfinv could flip or zero the sign
    key = jax.random.PRNGKey(seed) if raw else jax.random.key(seed)
    got = noise.sign_normal(key, (256, 256))
    chex.assert_trees_all_equal(got, jnp.sign(jax.random.normal(key, (256, 256))))
    assert got.dtype == jnp.float32


@pytest.mark.parametrize(
    "key, dtype",
    [(jax.random.key(1, impl="rbg"), jnp.float32), (jax.random.key(1), jnp.bfloat16)],
    ids=["rbg-key", "bfloat16"],
)
def test_sign_normal_falls_back_to_jax_like_normal(key, dtype):
    got = noise.sign_normal(key, (5, 3), dtype)
    chex.assert_trees_all_equal(got, jnp.sign(jax.random.normal(key, (5, 3), dtype)))


def test_tree_sign_normal_is_the_sign_of_tree_normal():
    tree = {"a": jnp.zeros((5, 4)), "b": (jnp.zeros(3), jnp.zeros((2, 2), jnp.bfloat16))}
    key = jax.random.key(12)
    chex.assert_trees_all_equal(
        noise.tree_sign_normal(key, tree), jax.tree.map(jnp.sign, noise.tree_normal(key, tree))
    )


def test_threefry2x32_known_answer():
    # Random123's known-answer vectors for threefry2x32_20 (also in JAX's own tests)
    cases = [
        ((0x0, 0x0), (0x0, 0x0), (0x6B200159, 0x99BA4EFE)),
        ((0xFFFFFFFF,) * 2, (0xFFFFFFFF,) * 2, (0x1CB996FC, 0xBB002BE7)),
        ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
    ]
    for key, count, expected in cases:
        words = [jnp.uint32(v) for v in (*key, *count)]
        got = noise.threefry2x32(*words)
        assert tuple(int(g) for g in got) == expected


@pytest.mark.xla_internals
def test_fused_into_the_update_no_noise_array_is_stored():
    # A Langevin-type update w ← a·w + b·ξ with w donated: XLA computes ξ inside the update's
    # loop, so the temporaries are far below one copy of w (JAX's own CPU lowering stores the
    # counters, hash state and normals: several copies).
    w = jnp.zeros((512, 512), jnp.float32)
    update = jax.jit(lambda w, k: 0.9 * w + 0.1 * noise.normal(k, w.shape), donate_argnums=0)
    memory = update.lower(w, jax.random.key(0)).compile().memory_analysis()
    assert memory.temp_size_in_bytes < w.nbytes / 8


@pytest.mark.parametrize("draw", [noise.tree_normal, noise.tree_sign_normal])
def test_leaves_of_one_shape_share_one_trace_of_the_hash(draw, monkeypatch):
    # tracing the hash's ~130 operations per leaf was most of the tracing of a 200-leaf model;
    # a shape seen before reuses its trace, and the program is the same equations either way
    calls = []
    hash_ = noise.threefry2x32
    monkeypatch.setattr(noise, "threefry2x32", lambda *a: calls.append(1) or hash_(*a))
    jax.clear_caches()  # no trace left over from another test
    tree = {"a": [jnp.zeros(()) for _ in range(30)], "b": [jnp.zeros(3) for _ in range(5)]}
    keys = jax.random.split(jax.random.key(21), 4)
    jaxpr = jax.make_jaxpr(jax.vmap(lambda k: draw(k, tree)))(keys)
    assert len(calls) == 2  # one per shape, not 35
    with jax.disable_jit():  # traced per leaf, as before the cache
        unshared = jax.make_jaxpr(jax.vmap(lambda k: draw(k, tree)))(keys)
    assert len(calls) == 37
    assert str(jaxpr) == str(unshared)
