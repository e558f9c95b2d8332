"""Weight-refined LLC: sample some of the weights and freeze the rest at w*.

Split w = (u, v). The weight-refined LLC λ(w*; V) freezes u = u* (no drift, no noise) and
samples v only from p(v) ∝ exp(−nβ·L_n(u*, v) − γ/2·||v − v*||²); the estimate is
λ̂ = nβ·(E[L_n(u*, v)] − L_n(w*)) with the usual conventions. V is typically one attention head.

A ``Restriction`` turns a selection into a gather/scatter pair: the chains carry only the free
elements ``v`` (whole leaves as they are, element-selected leaves as 1-D vectors of their free
entries), so memory scales with the restricted part, and every kernel works unchanged on the
smaller pytree. The loss sees ``scatter(w*, v)``.

Selections (``restrict=``):

- glob pattern(s) over the "/"-joined leaf paths of ``tree_paths(params)`` (``*`` and ``?``
  stay inside one path segment, ``**`` spans any number of segments), e.g.
  ``"params/block_0/attn/**"``;
- a predicate ``(path, leaf) -> bool or boolean array of leaf.shape`` (an array selects
  elements, e.g. one head along the head axis of a packed attention kernel);
- a mask pytree with the structure of ``params`` whose leaves are bools or boolean arrays of
  the leaf's shape.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxslt.types import PyTree

__all__ = [
    "Restriction",
    "Selection",
    "attention_head",
    "glob_to_regex",
    "make_restriction",
    "tree_paths",
]

Selection = str | Sequence[str] | Callable[[str, Any], Any] | PyTree

_FREE, _PARTIAL, _FROZEN = "free", "partial", "frozen"


def _entry_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _leaf_path(path: tuple) -> str:
    # NNX Variables flatten to (..., GetAttrKey("value")); users think of "l1/kernel".
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        path = path[:-1]
    return "/".join(_entry_name(entry) for entry in path)


def tree_paths(params: PyTree) -> list[str]:
    """The "/"-joined path of every leaf of ``params``, in leaf order: what ``restrict=``
    patterns match.

    Dict keys, attribute names and sequence indices become segments; the ``value`` attribute
    of NNX Variables is dropped (``"layers/0/kernel"``).

    Args:
      params: any pytree.

    Returns:
      One path per leaf, in ``jax.tree.leaves`` order.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxslt import tree_paths
      >>> params = {"layer": {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}, "head": [jnp.ones(3)]}
      >>> tree_paths(params)
      ['head/0', 'layer/b', 'layer/w']
    """
    return [_leaf_path(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def glob_to_regex(pattern: str) -> re.Pattern:
    """Compile a path glob: ``*``/``?``/``[...]`` within one segment, ``**`` across segments
    (``a/**`` matches everything below ``a``; ``a/**/b`` matches ``a/b``, ``a/x/y/b``)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            before_slash = i == 0 or pattern[i - 1] == "/"
            after = pattern[i + 2 : i + 3]
            if before_slash and after == "/":
                out.append("(?:[^/]+/)*")
                i += 3
                continue
            if before_slash and after == "":
                out.append(".*")
                i += 2
                continue
            raise ValueError(f"restrict pattern {pattern!r}: '**' must be a whole path segment")
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise ValueError(f"restrict pattern {pattern!r}: unclosed '['")
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


@jax.tree_util.register_pytree_node_class
class Restriction:
    """Which elements of each leaf are sampled (build one with ``make_restriction``).

    ``gather(w)`` returns the tuple of sampled parts v of the non-frozen leaves;
    ``scatter(w, v)`` writes them back into ``w``.

    A pytree: the index arrays are its leaves and the layout (structure, shapes, kinds) its
    static part, so under ``jit`` two selections of the same layout and sizes (say two heads
    of one layer) share one compiled program.

    Attributes:
      treedef: the structure of ``params``.
      shapes: the shape of each leaf.
      kinds: per leaf, ``"free"`` (whole leaf sampled), ``"frozen"`` or ``"partial"`` (the
        flat indices ``indices[i]`` are sampled).
      indices: per leaf, the sampled flat indices of a ``"partial"`` leaf (int32), else None.
      paths: the ``tree_paths`` of the leaves.
      num_free: the number of sampled scalar parameters.
    """

    def __init__(self, treedef, shapes, kinds, indices, paths):
        self.treedef = treedef
        self.shapes = tuple(shapes)
        self.kinds = tuple(kinds)
        self.indices = tuple(indices)
        self.paths = tuple(paths)

    def tree_flatten(self):
        return self.indices, (self.treedef, self.shapes, self.kinds, self.paths)

    @classmethod
    def tree_unflatten(cls, aux, indices):
        treedef, shapes, kinds, paths = aux
        return cls(treedef, shapes, kinds, indices, paths)

    @property
    def num_free(self) -> int:
        """Number of sampled scalar parameters."""
        return sum(
            int(np.prod(shape)) if kind == _FREE else len(ix) if kind == _PARTIAL else 0
            for shape, kind, ix in zip(self.shapes, self.kinds, self.indices, strict=True)
        )

    def gather(self, params: PyTree) -> tuple:
        leaves = self.treedef.flatten_up_to(params)
        return tuple(
            leaf if kind == _FREE else jnp.ravel(leaf)[ix]
            for leaf, kind, ix in zip(leaves, self.kinds, self.indices, strict=True)
            if kind != _FROZEN
        )

    def scatter(self, params: PyTree, free: tuple) -> PyTree:
        leaves = self.treedef.flatten_up_to(params)
        parts = iter(free)
        out = []
        for leaf, kind, ix in zip(leaves, self.kinds, self.indices, strict=True):
            if kind == _FREE:
                out.append(next(parts))
            elif kind == _PARTIAL:
                flat = jnp.ravel(leaf).at[ix].set(next(parts), unique_indices=True)
                out.append(flat.reshape(leaf.shape))
            else:
                out.append(leaf)
        return self.treedef.unflatten(out)

    def describe(self) -> str:
        """One line per sampled leaf: its path and how many of its elements are sampled."""
        lines = []
        for path, shape, kind, ix in zip(
            self.paths, self.shapes, self.kinds, self.indices, strict=True
        ):
            size = int(np.prod(shape))
            if kind != _FROZEN:
                count = size if kind == _FREE else len(ix)
                lines.append(f"{path or '<root>'}: {count}/{size} sampled")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Restriction({self.num_free} sampled parameters)\n{self.describe()}"


# Flax's MultiHeadAttention (Linen and NNX): its query/key/value kernels are (d_model, heads,
# head_dim), its output kernel (heads, head_dim, d_model); the axis of the heads in each
_HEAD_AXIS = {"query/kernel": 1, "key/kernel": 1, "value/kernel": 1, "out/kernel": 0}


def attention_head(prefix: str, head: int) -> Callable[[str, Any], bool | np.ndarray]:
    """``restrict=`` predicate for one head of a Flax ``MultiHeadAttention`` (Linen or NNX,
    ``use_bias=False`` or not: biases stay frozen): the head's slices of W_Q, W_K, W_V (along the
    heads axis of the (d_model, heads, head_dim) kernels) and of W_O (the (heads, head_dim,
    d_model) kernel), sampled; every other weight frozen at w*. The LLC restricted so is the
    head's weight-refined LLC λ(w*; V) of this module's docstring.

    Args:
      prefix: the attention module's path in ``tree_paths(params)``, with a trailing "/", e.g.
        ``"params/block_0/attn/"`` (Linen) or ``"blocks/0/attn/"`` (an ``nnx.State``).
      head: the head's index.

    Returns:
      A predicate ``(path, leaf) -> False | boolean mask of leaf.shape``. Heads of one module
      differ only in their masks, so their restricted runs share one compiled program.
    """

    def select(path: str, leaf: Any) -> bool | np.ndarray:
        axis = _HEAD_AXIS.get(path.removeprefix(prefix)) if path.startswith(prefix) else None
        if axis is None:
            return False
        mask = np.zeros(np.shape(leaf), dtype=bool)
        index = [slice(None)] * mask.ndim
        index[axis] = head
        mask[tuple(index)] = True
        return mask

    return select


def _as_mask(value: Any, shape: tuple, where: str) -> np.ndarray:
    mask = np.asarray(value)
    if mask.dtype != np.bool_:
        raise TypeError(f"restrict: {where} gave dtype {mask.dtype}; return a bool or a boolean "
                        f"array of the leaf's shape {shape}")  # fmt: skip
    if mask.shape not in ((), shape):
        raise ValueError(f"restrict: {where} has shape {mask.shape}; a mask must be a bool or "
                         f"have the leaf's shape {shape}")  # fmt: skip
    return mask


def make_restriction(params: PyTree, restrict: Selection | Restriction) -> Restriction:
    """Build the ``Restriction`` of ``params`` that ``restrict`` selects.

    The weight-refined LLC λ(w*; V) samples only the selected weights v and freezes the rest
    at w* (see the module docstring).

    Args:
      params: w*, the pytree to select from.
      restrict: glob pattern(s) over ``tree_paths(params)``, a predicate
        ``(path, leaf) -> bool or boolean array of leaf.shape``, a mask pytree with the
        structure of ``params``, or a ``Restriction`` (returned as is).

    Returns:
      The ``Restriction``: which elements of each leaf are sampled.

    Raises:
      ValueError: a pattern matches no leaf, or nothing at all is selected (the message
        lists the available paths); a mask of the wrong structure or shape.
      TypeError: a predicate or mask that is not boolean.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxslt import make_restriction
      >>> params = {"layer": {"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}, "head": jnp.ones(3)}
      >>> r = make_restriction(params, "layer/*")
      >>> r.kinds, r.num_free
      (('frozen', 'free', 'free'), 6)
      >>> make_restriction(params, lambda path, leaf: leaf.ndim == 2).kinds  # a predicate
      ('frozen', 'frozen', 'free')
      >>> mask = {"head": jnp.array([True, False, True]), "layer": {"w": False, "b": False}}
      >>> [v.shape for v in make_restriction(params, mask).gather(params)]  # 2 of head's 3
      [(2,)]
    """
    if isinstance(restrict, Restriction):
        return restrict
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [_leaf_path(path) for path, _ in flat]
    leaves = [leaf for _, leaf in flat]
    shapes = [tuple(np.shape(leaf)) for leaf in leaves]
    listing = "available paths: " + ", ".join(paths[:30]) + (" ..." if len(paths) > 30 else "")

    if isinstance(restrict, str) or (
        isinstance(restrict, Sequence) and restrict and all(isinstance(p, str) for p in restrict)
    ):
        patterns = [restrict] if isinstance(restrict, str) else list(restrict)
        masks = [False] * len(paths)
        for pattern in patterns:
            regex = glob_to_regex(pattern)
            hits = [bool(regex.match(path)) for path in paths]
            if not any(hits):
                raise ValueError(f"restrict pattern {pattern!r} matches no parameter; {listing}")
            masks = [m or h for m, h in zip(masks, hits, strict=True)]
        masks = [np.asarray(m) for m in masks]
    elif callable(restrict) and not isinstance(restrict, jax.Array):
        masks = [
            _as_mask(restrict(path, leaf), shape, f"the predicate at {path!r}")
            for path, leaf, shape in zip(paths, leaves, shapes, strict=True)
        ]
    else:
        mask_leaves, mask_def = jax.tree.flatten(restrict)
        if mask_def != treedef:
            raise ValueError(
                "restrict: a mask pytree must have the structure of params (a bool or boolean "
                f"array per leaf); got {mask_def}, expected {treedef}"
            )
        masks = [
            _as_mask(m, shape, f"the mask at {path!r}")
            for m, path, shape in zip(mask_leaves, paths, shapes, strict=True)
        ]

    kinds, indices = [], []
    for mask, shape in zip(masks, shapes, strict=True):
        full = np.broadcast_to(mask, shape)
        if full.all() and full.size:
            kinds.append(_FREE)
            indices.append(None)
        elif full.any():
            kinds.append(_PARTIAL)
            indices.append(np.flatnonzero(full).astype(np.int32))
        else:
            kinds.append(_FROZEN)
            indices.append(None)
    if all(kind == _FROZEN for kind in kinds):
        raise ValueError(f"restrict selects no parameter; {listing}")
    return Restriction(treedef, shapes, kinds, indices, paths)
