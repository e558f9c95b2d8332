"""Where a study's checkpoints come from: an orbax directory, pytrees held in memory, or an entry
point that makes them; and how each names a checkpoint in a cell's identity.

The identity of an orbax checkpoint is ``{"orbax": directory as written, "item": ..., "step":
...}`` (cheap: nothing is read); that of an in-memory pytree is ``{"step": ..., "sha256":
content hash}`` (dtype, shape and bytes of every leaf, with its path).
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxslt.study.entry_points import call_entry_point
from jaxslt.types import PyTree

__all__ = [
    "Checkpoints",
    "EntryPointCheckpoints",
    "MemoryCheckpoints",
    "OrbaxCheckpoints",
    "as_checkpoints",
    "check_trees",
]


@dataclasses.dataclass(frozen=True)
class OrbaxCheckpoints:
    """An orbax checkpoint directory (``jaxslt.checkpoints``), optionally some of its steps and
    one item of multi-item checkpoints.

    Attributes:
      directory: the directory, kept as written (it names the cell).
      steps: the steps to use; None: all of them.
      item: which pytree item of multi-item checkpoints (as in ``load_checkpoint``).
      root: the folder relative paths are taken from.
    """

    directory: str
    steps: tuple[int, ...] | None = None
    item: str | None = None
    root: str = "."

    @property
    def path(self) -> pathlib.Path:
        return pathlib.Path(self.root, self.directory).expanduser()

    def step_list(self) -> list[int]:
        from jaxslt.checkpoints import checkpoint_steps

        found = checkpoint_steps(self.path)
        if self.steps is None:
            if not found:
                raise ValueError(f"[checkpoints] directory {str(self.path)!r} has no checkpoints")
            return found
        missing = sorted(set(self.steps) - set(found))
        if missing:
            raise ValueError(
                f"[checkpoints] steps {missing} are not in {str(self.path)!r}; it has steps {found}"
            )
        return list(self.steps)

    def identity(self, step: int) -> dict[str, Any]:
        return {"orbax": self.directory, "item": self.item, "step": int(step)}

    def load(self, step: int, like: PyTree = None) -> PyTree:
        from jaxslt.checkpoints import load_checkpoint

        return load_checkpoint(self.path, step, like=like, item=self.item)


@dataclasses.dataclass(frozen=True)
class MemoryCheckpoints:
    """Checkpoints held in memory, identified by a hash of their content.

    Attributes:
      trees: step → pytree.
    """

    trees: Mapping[int, PyTree]

    def step_list(self) -> list[int]:
        return sorted(self.trees)

    def identity(self, step: int) -> dict[str, Any]:
        return {"step": int(step), "sha256": _hash_tree(self.trees[step])}

    def load(self, step: int, like: PyTree = None) -> PyTree:
        del like
        return self.trees[step]


@dataclasses.dataclass(frozen=True)
class EntryPointCheckpoints:
    """Checkpoints made by an importable function that returns a Mapping step → pytree;
    identified by content like ``MemoryCheckpoints``.

    Attributes:
      entry_point: ``"module:function"``.
      kwargs: the keyword arguments it is called with.
      root: the folder the module is imported from (the spec's).
    """

    entry_point: str
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    root: str = "."

    def resolve(self) -> MemoryCheckpoints:
        trees = call_entry_point(self.entry_point, self.root, self.kwargs, "[checkpoints]")
        return MemoryCheckpoints(check_trees(trees, f"[checkpoints] {self.entry_point}"))


Checkpoints = OrbaxCheckpoints | MemoryCheckpoints | EntryPointCheckpoints


def check_trees(trees: Any, where: str) -> dict[int, PyTree]:
    """``trees`` (a Mapping step → pytree, or a sequence: steps 0, 1, ...) as a dict with
    integer steps >= 0; the errors name ``where``."""
    if isinstance(trees, Mapping):
        items = list(trees.items())
    elif isinstance(trees, Sequence) and not isinstance(trees, str | bytes):
        items = list(enumerate(trees))  # a sequence of pytrees: steps 0, 1, ...
    else:
        raise TypeError(
            f"{where} must give a Mapping step → pytree (or a sequence of pytrees); "
            f"got {type(trees).__name__}"
        )
    out = {}
    for step, tree in items:
        if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
            raise TypeError(f"{where}: checkpoint steps must be integers >= 0; got {step!r}")
        out[int(step)] = tree
    if not out:
        raise ValueError(f"{where} holds no checkpoints")
    return out


def _hash_tree(tree: PyTree) -> str:
    """sha256 over (path, dtype, shape, bytes) of every leaf: the checkpoint's content."""
    import jax

    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def as_checkpoints(value: Any, root: str) -> Checkpoints:
    """What a ``Spec`` was given as checkpoints, as one of the three kinds (an orbax directory
    or entry point with relative paths taken from ``root``)."""
    if isinstance(value, OrbaxCheckpoints | EntryPointCheckpoints):
        return dataclasses.replace(value, root=root)
    if isinstance(value, MemoryCheckpoints):
        return value
    if isinstance(value, str | pathlib.PurePath):
        return OrbaxCheckpoints(str(value), root=root)
    return MemoryCheckpoints(check_trees(value, "checkpoints"))
