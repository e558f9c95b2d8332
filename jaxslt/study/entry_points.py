"""The code a spec names: entry points ``"module:function"`` (imported and called with the spec's
folder importable) and what a problem entry point returns (``StudyProblem``).

The spec's folder is appended to ``sys.path`` while an entry point is imported and called (then
removed), so a ``problem.py`` next to the spec is found while an ``arviz.py`` there never
shadows an installed package. A spec names code to run, like any entry-point system: run only
specs you trust.
"""

from __future__ import annotations

import contextlib
import importlib
import pathlib
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

from jaxslt.types import PyTree

__all__ = [
    "FULL_DATA",
    "EntryPointError",
    "StudyProblem",
    "as_problem",
    "call_entry_point",
    "entry_point_name",
    "load_entry_point",
    "spec_folder_importable",
]


FULL_DATA = "full"  # the data slice name of the problem's own data set


class StudyProblem(NamedTuple):
    """What a problem entry point returns (a plain ``(loss_fn, data)`` tuple also works).

    Attributes:
      loss_fn: ``loss_fn(params, batch) -> scalar``, the mean loss.
      data: the data set (leading axis n).
      slices: optional named other data sets for data-refined LLCs (grid axis ``data``).
      like: an optional (abstract) pytree that orbax checkpoints are restored into (needed
        when the checkpoint is a tuple, an NNX ``State`` or a dataclass rather than nested
        dicts).
    """

    loss_fn: Callable[[PyTree, PyTree], Any]
    data: PyTree
    slices: Mapping[str, PyTree] | None = None
    like: PyTree = None

    def slice(self, name: str) -> PyTree:
        """The data set called ``name`` (``"full"``: ``data``)."""
        if name == FULL_DATA:
            return self.data
        if not self.slices or name not in self.slices:
            names = [FULL_DATA, *sorted(self.slices or ())]
            raise ValueError(
                f"data slice {name!r} is not defined: the problem entry point offers {names} "
                "(return StudyProblem(loss_fn, data, slices={name: data, ...}) to add slices)"
            )
        return self.slices[name]


def entry_point_name(entry: str | Callable) -> str:
    """``"module:function"`` for an entry point given as a string or a named function (its
    name is part of every cell id, so a lambda is refused)."""
    if isinstance(entry, str):
        return entry
    name = f"{getattr(entry, '__module__', '?')}:{getattr(entry, '__qualname__', '?')}"
    if "<lambda>" in name:
        raise TypeError(
            "problem must be a named function (its name is part of every cell's identity), "
            "not a lambda; define it with def"
        )
    return name


class EntryPointError(RuntimeError):
    """A spec's entry point (problem or checkpoints function) raised; the message names it and
    carries its traceback."""


@contextlib.contextmanager
def spec_folder_importable(root: str | pathlib.Path) -> Iterator[None]:
    """``root`` (the spec's folder) on ``sys.path`` *after* the installed packages, so that a
    ``problem.py`` beside the spec is found but an ``arviz.py`` there never shadows ArviZ;
    ``sys.path`` is restored on exit."""
    root = str(pathlib.Path(root).resolve())
    added = root not in sys.path
    if added:
        sys.path.append(root)
    try:
        yield
    finally:
        if added and root in sys.path:
            sys.path.remove(root)


def _raised(entry: str, what: str, err: Exception) -> EntryPointError:
    trace = "".join(traceback.format_exception(err)).rstrip()
    return EntryPointError(
        f"{what} entry point {entry!r} raised {type(err).__name__}: {err}\n"
        f"(a spec runs the code it names: run only specs you trust)\n{trace}"
    )


def call_entry_point(
    entry: str | Callable, root: str | pathlib.Path, kwargs: Mapping[str, Any], what: str
) -> Any:
    """Import ``entry`` and call it with ``kwargs``, the spec's folder importable meanwhile;
    an exception inside it becomes an ``EntryPointError`` naming it, with its traceback."""
    function = load_entry_point(entry, root)
    with spec_folder_importable(root):
        try:
            return function(**kwargs)
        except Exception as err:
            raise _raised(entry_point_name(entry), what, err) from err


def load_entry_point(entry: str | Callable, root: str | pathlib.Path = ".") -> Callable:
    """The callable ``"package.module:function"`` names (searched on ``sys.path``, then in the
    folder ``root``: installed modules are never shadowed by files beside the spec); a callable
    is returned unchanged. ``sys.path`` is left as it was."""
    if callable(entry):
        return entry
    if not isinstance(entry, str) or entry.count(":") != 1 or not all(entry.split(":")):
        raise ValueError(f"entry point must look like 'package.module:function'; got {entry!r}")
    module_name, attr = entry.split(":")
    root = str(pathlib.Path(root).resolve())
    try:
        with spec_folder_importable(root):
            obj = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"entry point {entry!r}: cannot import module {module_name!r} ({err}); it must be "
            f"importable here (installed, on PYTHONPATH, or a file in {root})"
        ) from err
    except Exception as err:  # the module itself raised (or does not parse)
        raise _raised(entry, "importing the", err) from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"entry point {entry!r}: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"entry point {entry!r} is a {type(obj).__name__}, not a function")
    return obj


def as_problem(value: Any, where: str = "problem") -> StudyProblem:
    """Normalise what a problem entry point returned into a ``StudyProblem``."""
    if isinstance(value, StudyProblem):
        problem = value
    elif hasattr(value, "loss_fn") and hasattr(value, "data"):  # e.g. jaxslt.problems.Problem
        problem = StudyProblem(
            value.loss_fn, value.data, getattr(value, "slices", None), getattr(value, "like", None)
        )
    elif isinstance(value, tuple) and len(value) in (2, 3):
        problem = StudyProblem(*value)
    else:
        raise TypeError(
            f"{where} must return (loss_fn, data), (loss_fn, data, slices) or a "
            f"jaxslt.study.StudyProblem; got {type(value).__name__}"
        )
    if not callable(problem.loss_fn):
        raise TypeError(f"{where} returned a loss_fn that is not callable: {problem.loss_fn!r}")
    if problem.slices is not None:
        if not isinstance(problem.slices, Mapping):
            raise TypeError(f"{where}: slices must be a dict name → data set")
        if FULL_DATA in problem.slices:
            raise ValueError(
                f"{where}: slice name {FULL_DATA!r} is reserved for the problem's own data; "
                "rename that slice"
            )
    return problem
