"""Parameter checkpoints on disk in orbax's format, for LLC curves over training.

The layout is the one ``orbax.checkpoint.CheckpointManager`` writes: one subdirectory per step
(``<directory>/<step>/<item>/``, the item a PyTree checkpoint), so directories written by a
user's own orbax training loop load here unchanged and ours load in theirs
(``manager.restore(step, args=ocp.args.StandardRestore(target))``). Read also: step folders
with a prefix or fixed width (``ckpt_00100``), multi-item ("Composite") checkpoints, where one
PyTree item is chosen (``item=``, default ``"default"`` or the only one), and a step folder
that is itself the PyTree (``StandardCheckpointer().save(f"{directory}/{step}", tree)``).
Unfinished (temporary) step folders are ignored, as orbax ignores them.

- ``save_checkpoint(directory, step, params)``: write one pytree as step ``step``.
- ``checkpoint_steps(directory)``: the finished steps, sorted.
- ``load_checkpoint(directory, step, like=...)`` / ``load_checkpoints(directory, steps)``:
  restore. Without ``like``, arrays come back as ``jax.Array`` with their saved sharding, or on
  the default device where this process lacks the devices they were saved from (a GPU run
  loaded on a laptop); numpy arrays and Python scalars as saved; containers as nested dicts
  (an NNX ``State`` comes back as ``{..., "kernel": {"value": …}}``).
  With ``like`` (an abstract or concrete pytree: ``jax.eval_shape(model.init, …)``,
  ``nnx.state(nnx.eval_shape(…))``) the result has its structure, dtypes and shardings.
"""

from __future__ import annotations

import logging
import operator
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

import jax

from jaxslt.types import PyTree

__all__ = ["checkpoint_steps", "load_checkpoint", "load_checkpoints", "save_checkpoint"]

_PYTREE_MARKER = "_METADATA"  # written by orbax's PyTree/Standard handlers into an item folder


def _ocp():
    # orbax logs a warning per restore of a directory another process wrote; that is the normal
    # case here, so keep its logger to errors. Imported lazily: orbax costs ~1 s to import.
    import orbax.checkpoint as ocp

    logging.getLogger("absl").setLevel(max(logging.getLogger("absl").level, logging.ERROR))
    return ocp


def _directory(directory: str | pathlib.Path, *, must_exist: bool) -> pathlib.Path:
    if not isinstance(directory, str | pathlib.PurePath):
        raise TypeError(f"directory must be a str or pathlib.Path; got {type(directory).__name__}")
    path = pathlib.Path(directory).expanduser().resolve()  # orbax needs absolute paths
    if must_exist and not path.exists():
        raise FileNotFoundError(f"checkpoint directory {str(path)!r} does not exist")
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"checkpoint directory {str(path)!r} is a file, not a directory")
    return path


def _step(step: Any, name: str = "step") -> int:
    if isinstance(step, bool):
        raise TypeError(f"{name} must be a non-negative integer; got {step!r}")
    try:
        value = operator.index(step)
    except TypeError:
        raise TypeError(
            f"{name} must be a non-negative integer (a training step); got {step!r}"
        ) from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0; got {value}")
    return value


def _step_paths(directory: pathlib.Path) -> dict[int, pathlib.Path]:
    """Finished step folders by step number (orbax's own rule for what counts as finished)."""
    ocp = _ocp()
    paths: dict[int, pathlib.Path] = {}
    for step_path in ocp.step.checkpoint_steps_paths(directory):
        step = ocp.step.step_from_checkpoint_name(step_path.name)
        path = pathlib.Path(str(step_path))
        if step in paths:
            raise ValueError(
                f"step {step} appears twice in {str(directory)!r} ({paths[step].name!r} and "
                f"{path.name!r}); remove one of them"
            )
        paths[step] = path
    return paths


def save_checkpoint(directory: str | pathlib.Path, step: int, params: PyTree) -> pathlib.Path:
    """Write ``params`` (any pytree of arrays and scalars: Flax Linen variables, an NNX
    ``State``, a dict) as step ``step`` of the orbax checkpoint directory ``directory``
    (created if missing), synchronously. Steps may be written in any order.

    Args:
      directory: the orbax checkpoint directory (created if missing).
      step: the training step, an integer ≥ 0.
      params: any pytree of arrays and scalars.

    Returns:
      The step's folder.

    Raises:
      FileExistsError: the step already exists.
      ValueError: ``params`` has no array leaves, or a bad step.
    """
    ocp = _ocp()
    path = _directory(directory, must_exist=False)
    step = _step(step)
    if not jax.tree.leaves(params):
        raise ValueError("params has no array leaves: there is nothing to checkpoint")
    if step in (_step_paths(path) if path.exists() else {}):
        raise FileExistsError(
            f"step {step} already exists in {str(path)!r}; delete its folder or save under "
            "another step"
        )
    options = ocp.CheckpointManagerOptions(enable_async_checkpointing=False, create=True)
    with ocp.CheckpointManager(path, options=options) as manager:
        # force: the manager would otherwise skip a step older than the newest one on disk
        manager.save(step, args=ocp.args.StandardSave(params), force=True)
        manager.wait_until_finished()
    return _step_paths(path)[step]


def checkpoint_steps(directory: str | pathlib.Path) -> list[int]:
    """The steps of the finished checkpoints in ``directory``, sorted ascending.

    Args:
      directory: an orbax checkpoint directory.

    Returns:
      The steps (``[]`` for an existing directory without checkpoints).

    Raises:
      FileNotFoundError: ``directory`` does not exist.
    """
    return sorted(_step_paths(_directory(directory, must_exist=True)))


def _item_path(step_path: pathlib.Path, item: str | None) -> pathlib.Path:
    if (step_path / _PYTREE_MARKER).exists() and item is None:
        return step_path  # the step folder is itself the pytree
    items = sorted(p.name for p in step_path.iterdir() if (p / _PYTREE_MARKER).exists())
    if item is not None:
        if item not in items:
            raise ValueError(
                f"item {item!r} is not a pytree item of checkpoint {str(step_path)!r}; "
                f"its pytree items are {items}"
            )
        return step_path / item
    if "default" in items:
        return step_path / "default"
    if len(items) == 1:
        return step_path / items[0]
    if not items:
        raise ValueError(
            f"checkpoint {str(step_path)!r} holds no orbax pytree (no {_PYTREE_MARKER} file in "
            "it or its item folders); it was not written by orbax's PyTree/Standard handlers"
        )
    raise ValueError(
        f"checkpoint {str(step_path)!r} has several pytree items {items}; choose one with "
        f"item=, e.g. item={items[0]!r}"
    )


def _load(checkpointer, step: int, step_path: pathlib.Path, like: PyTree, item: str | None):
    ocp = _ocp()
    path = _item_path(step_path, item)
    # fallback: the saved sharding may name devices this process lacks (a GPU run loaded on a
    # laptop); orbax then places those arrays on the default device instead of failing
    fallback = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    try:
        return checkpointer.restore(
            path, args=ocp.args.StandardRestore(like, fallback_sharding=fallback)
        )
    except ValueError as err:
        if like is None:
            raise
        raise ValueError(
            f"checkpoint step {step} ({str(path)!r}) does not match the structure, shapes or "
            f"dtypes of `like`: {err}"
        ) from err


def _missing(step: int, available: Iterable[int], directory: pathlib.Path) -> FileNotFoundError:
    available = sorted(available)
    return FileNotFoundError(
        f"no checkpoint for step {step} in {str(directory)!r}; the steps there are "
        f"{available if available else 'none'}"
    )


def load_checkpoint(
    directory: str | pathlib.Path, step: int, *, like: PyTree = None, item: str | None = None
) -> PyTree:
    """Restore step ``step`` of ``directory``.

    Args:
      directory: an orbax checkpoint directory.
      step: the step to restore.
      like: an abstract (``jax.ShapeDtypeStruct``) or concrete target pytree giving the
        structure, dtypes and shardings to restore into (needed to get an NNX ``State`` or a
        dataclass back; dtypes are cast to ``like``'s); None restores what was saved.
      item: which pytree item of a multi-item checkpoint (default ``"default"`` or the only
        one).

    Returns:
      The restored pytree.

    Raises:
      FileNotFoundError: no such directory or step (the message lists the steps there).
      ValueError: the checkpoint does not match ``like``, or a bad or ambiguous ``item``.
    """
    path = _directory(directory, must_exist=True)
    step = _step(step)
    paths = _step_paths(path)
    if step not in paths:
        raise _missing(step, paths, path)
    with _ocp().Checkpointer(_ocp().StandardCheckpointHandler()) as checkpointer:
        return _load(checkpointer, step, paths[step], like, item)


def load_checkpoints(
    directory: str | pathlib.Path,
    steps: Sequence[int] | None = None,
    *,
    like: PyTree = None,
    item: str | None = None,
) -> list[tuple[int, PyTree]]:
    """Restore several steps of ``directory``. Every requested step is checked before
    anything is read.

    Args:
      directory: an orbax checkpoint directory.
      steps: the steps to restore, in this order; None: all of them, ascending.
      like: as in ``load_checkpoint``.
      item: as in ``load_checkpoint``.

    Returns:
      ``[(step, params), ...]``.

    Raises:
      FileNotFoundError: no such directory, no checkpoints, or a missing step.
      TypeError: ``steps`` is not a sequence of integers.
      ValueError: as in ``load_checkpoint``.
    """
    path = _directory(directory, must_exist=True)
    paths = _step_paths(path)
    if steps is None:
        if not paths:
            raise FileNotFoundError(f"no orbax checkpoints in {str(path)!r}")
        wanted = sorted(paths)
    else:
        if isinstance(steps, str | bytes) or not isinstance(steps, Iterable):
            raise TypeError(f"steps must be a sequence of integers or None; got {steps!r}")
        wanted = [_step(s, "steps[...]") for s in steps]
        for step in wanted:
            if step not in paths:
                raise _missing(step, paths, path)
    with _ocp().Checkpointer(_ocp().StandardCheckpointHandler()) as checkpointer:
        return [(step, _load(checkpointer, step, paths[step], like, item)) for step in wanted]
