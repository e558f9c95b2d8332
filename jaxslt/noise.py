"""Gaussian noise for the samplers: ``jax.random.normal``'s exact numbers, drawn in a form that
XLA fuses into the update that consumes them.

Every SGLD-type step adds N(0, ε·I) noise, one normal per parameter per chain per step. On CPU,
JAX lowers the Threefry-2x32 hash behind ``jax.random.normal`` to a rolled five-iteration loop
(to save compile time), so the counters, the hash state and the normals are materialised as
full-size arrays (≈ 2 extra copies of the parameters live at once) and the draw costs about as
much as a gradient of a wide network. ``normal`` below computes the same function as
``jax.random.normal`` (default, partitionable Threefry mode: element i of a shape gets
threefry2x32(key, (0, i)), hi ^ lo word, mapped to (−1, 1) and through √2·erfinv) from
straight-line elementwise operations: identical bits (tested), ~4× faster on CPU, and fused into
the parameter update so no noise array is ever stored. On GPU/TPU, JAX's own lowering is
already this unrolled form (read from JAX's source; not measured here), so there the gain is
nil and the numbers are again the same.

``sign_normal`` gives the signs of those draws (the Rademacher probes of the step check's
curvature) without the inverse error function, about half of what each leaf's draw costs to
compile (3.8 of 8.6 s in that program's compile, MLP of 48 leaves).

Keys other than Threefry (``jax.random.key(0, impl="rbg")``), dtypes other than float32,
leaves of 2**32 elements or more, and the non-default ``jax_threefry_partitionable=False`` mode
are drawn by ``jax.random.normal`` itself, so the numbers always equal JAX's.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxslt.types import PyTree

__all__ = [
    "normal",
    "sign_normal",
    "threefry2x32",
    "tree_normal",
    "tree_sign_normal",
]

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)
_LOW = np.nextafter(np.float32(-1.0), np.float32(0.0))  # jax's open lower end of (−1, 1)


def _rotate_left(x: jax.Array, d: int) -> jax.Array:
    return lax.shift_left(x, np.uint32(d)) | lax.shift_right_logical(x, np.uint32(32 - d))


def threefry2x32(
    k1: jax.Array, k2: jax.Array, x1: jax.Array, x2: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The Threefry-2x32 block cipher with 20 rounds (Salmon et al. 2011), as in JAX: key words
    (k1, k2), counter words (x1, x2), all uint32 and broadcastable; returns the two output
    words. Unrolled, elementwise, so XLA fuses it with its producers and consumers."""
    ks = (k1, k2, k1 ^ k2 ^ _PARITY)
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = _rotate_left(x2, r) ^ x1
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


def _is_threefry(key: jax.Array) -> bool:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return str(jax.random.key_impl(key)) == "threefry2x32"
    return jax.config.jax_default_prng_impl == "threefry2x32"


def _linear_index(shape: tuple[int, ...]) -> jax.Array:
    """uint32 row-major index of every element of ``shape`` (< 2**32 elements), from per-axis
    iotas so that a sharded consumer gets only its own block of counters."""
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
        stride *= shape[axis]
    return index


def normal(key: jax.Array, shape: tuple[int, ...] = (), dtype: Any = jnp.float32) -> jax.Array:
    """Standard normal draws of ``shape``, equal bit for bit to ``jax.random.normal(key, shape,
    dtype)`` (JAX's default partitionable Threefry mode), computed so XLA can fuse them into
    the consumer. Falls back to ``jax.random.normal`` where the fused form does not apply."""
    shape, dtype = tuple(int(d) for d in shape), jnp.dtype(dtype)
    if not _fused(key, shape, dtype):
        return jax.random.normal(key, shape, dtype)
    return _fused_normal(key, shape)


# Jitted and inlined: the same equations land in the caller's program (the same bits), but
# they are traced once per shape instead of once per leaf and per trace of the step (a step is
# traced three times with the checks on). Tracing the ~130 operations of the hash was most of
# the tracing of a 200-leaf model; leaves of one shape now share one trace.
@functools.partial(jax.jit, static_argnums=(1,), inline=True)
def _fused_normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return np.float32(np.sqrt(2.0)) * lax.erf_inv(_open_uniform(key, shape))


@functools.partial(jax.jit, static_argnums=(1,), inline=True)
def _fused_sign(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jnp.sign(_open_uniform(key, shape))


def sign_normal(key: jax.Array, shape: tuple[int, ...] = (), dtype: Any = jnp.float32) -> jax.Array:
    """``jnp.sign(normal(key, shape, dtype))`` bit for bit (a Rademacher draw), without the
    inverse error function: √2·erfinv(u) = u·p(u) with p > 0 (XLA's polynomial approximates
    erfinv(u)/u ≥ √π/2), so its sign is the sign of u. About half the draw's compile time."""
    shape, dtype = tuple(int(d) for d in shape), jnp.dtype(dtype)
    if not _fused(key, shape, dtype):
        return jnp.sign(jax.random.normal(key, shape, dtype))
    return _fused_sign(key, shape)


def _fused(key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> bool:
    """Whether the fused form equals ``jax.random.normal`` here (see the module docstring)."""
    return (
        dtype == jnp.float32
        and math.prod(shape) < 2**32
        and _is_threefry(key)
        and jax.config.jax_threefry_partitionable
    )


def _open_uniform(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``jax.random.uniform(key, shape, minval=−1, maxval=1)`` clipped to the open interval, as
    ``jax.random.normal`` draws it before its erfinv."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    k1, k2 = key[..., 0], key[..., 1]
    hi, lo = threefry2x32(k1, k2, jnp.zeros(shape, jnp.uint32), _linear_index(shape))
    # 23 random mantissa bits under exponent 0: a float in [1, 2), shifted to [0, 1), then
    # scaled to [−1, 1) and clipped to jax's open interval, exactly as jax.random.uniform does.
    mantissa = lax.shift_right_logical(hi ^ lo, np.uint32(9)) | np.uint32(0x3F800000)
    unit = lax.bitcast_convert_type(mantissa, jnp.float32) - np.float32(1.0)
    return lax.max(_LOW, unit * (np.float32(1.0) - _LOW) + _LOW)


def tree_normal(key: jax.Array, tree: PyTree) -> PyTree:
    """A standard normal draw shaped like ``tree``, one key per leaf as
    ``optax.tree.random_like`` splits them, each leaf in its own dtype."""
    return optax.tree.random_like(key, tree, normal)


def tree_sign_normal(key: jax.Array, tree: PyTree) -> PyTree:
    """The signs of ``tree_normal(key, tree)`` (a Rademacher probe), by ``sign_normal``."""
    return optax.tree.random_like(key, tree, sign_normal)
