"""Study specifications: a TOML file (or a ``Spec`` built in Python) → a grid of cells.

A cell is one ``jaxslt.estimate_llc`` call: one checkpoint × one value of every grid axis. Its
settings are ``estimate_llc``'s keyword arguments with every default filled in (so writing a
default explicitly names the same cell), plus ``seed`` (→ ``key=jax.random.key(seed)``) and
``data`` (the name of a data slice; ``"full"`` is the problem's own data set).

Cell identity: ``cell_id = sha256(canonical JSON of {problem, problem_kwargs, checkpoint,
settings})``, canonical meaning sorted keys, no whitespace, floats in Python's shortest
round-trip form, the float settings (step_size, nbeta, localization) always floats, and the
settings left at estimate_llc's defaults omitted (so a jaxslt that adds an argument keeps the
ids; rows store the full settings and the library versions). The checkpoint part is
``{"orbax": directory as written, "item": ..., "step": ...}`` for orbax directories (cheap:
nothing is read) and ``{"step": ..., "sha256": content hash}`` for in-memory pytrees (dtype,
shape and bytes of every leaf, with its path). The identity does not cover the *code* behind
the problem entry point: after changing that code, use a new store.

The TOML file::

    [study]
    name = "dln"                                      # optional
    problem = "jaxslt.study.examples:dln_problem"     # module:function → (loss_fn, data) or a
    problem_kwargs = { widths = [4, 3, 4], rank = 1 } #   StudyProblem; optional kwargs
    store = "dln.sqlite"                              # optional; default <spec stem>.sqlite

    [checkpoints]                                     # one of:
    directory = "checkpoints"                         #   an orbax directory (+ steps, item)
    # entry_point = "mod:fn"; kwargs = {...}          #   or a function → Mapping step → pytree

    [settings]                                        # fixed estimate_llc keyword arguments
    num_chains = 4

    [grid]                                            # lists; every combination is a cell
    step_size = [1e-4, 3e-4]
    seed = [0, 1]

    [ray]                                             # optional: the distributed runner
    max_retries = 3
    num_cpus = 1

Relative paths (store, checkpoint directory) are relative to the spec file's folder (a
relative store must stay inside it; write an absolute path for another place), and that folder
is appended to ``sys.path`` while entry points are imported and called (then removed), so a
``problem.py`` next to the spec is found while an ``arviz.py`` there never shadows an installed
package. A spec names code to run, like any entry-point system: run only specs you trust.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib
import inspect
import itertools
import json
import math
import os
import pathlib
import sys
import tomllib
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

PyTree = Any

FULL_DATA = "full"  # the data slice name of the problem's own data set
_EXTRA_SETTINGS = ("seed", "data")  # cell settings that are not estimate_llc arguments
_NOT_SETTINGS = ("key", "mesh", "progress")  # estimate_llc arguments a spec cannot set
_FLOAT_SETTINGS = ("step_size", "nbeta", "localization")
_TABLES = {
    "study": ("name", "problem", "problem_kwargs", "store"),
    "checkpoints": ("directory", "steps", "item", "entry_point", "kwargs"),
    "settings": None,  # checked against estimate_llc's signature
    "grid": None,
    "ray": ("max_retries", "num_cpus"),
}


class StudyProblem(NamedTuple):
    """What a problem entry point returns (a plain ``(loss_fn, data)`` tuple also works).

    ``loss_fn(params, batch)`` is the scalar mean loss, ``data`` the data set (leading axis n),
    ``slices`` optional named other data sets for data-refined LLCs (grid axis ``data``), and
    ``like`` an optional (abstract) pytree that orbax checkpoints are restored into (needed
    when the checkpoint is a tuple, an NNX ``State`` or a dataclass rather than nested dicts).
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


# ---------------------------------------------------------------------------------------------
# checkpoints


@dataclasses.dataclass(frozen=True)
class OrbaxCheckpoints:
    """An orbax checkpoint directory (``jaxslt.checkpoints``), optionally some of its steps and
    one item of multi-item checkpoints. ``directory`` is kept as written (it names the cell);
    ``root`` is the folder relative paths are taken from."""

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
    """Checkpoints held in memory: ``trees`` maps step → pytree."""

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
    """Checkpoints made by an importable function ``"module:function"`` (called with ``kwargs``)
    that returns a Mapping step → pytree; identified by content like ``MemoryCheckpoints``."""

    entry_point: str
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    root: str = "."

    def resolve(self) -> MemoryCheckpoints:
        trees = call_entry_point(self.entry_point, self.root, self.kwargs, "[checkpoints]")
        return MemoryCheckpoints(_check_trees(trees, f"[checkpoints] {self.entry_point}"))


Checkpoints = OrbaxCheckpoints | MemoryCheckpoints | EntryPointCheckpoints


def _check_trees(trees: Any, where: str) -> dict[int, PyTree]:
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


# ---------------------------------------------------------------------------------------------
# entry points


def _entry_point_name(entry: str | Callable) -> str:
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
            raise _raised(_entry_point_name(entry), what, err) from err


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


# ---------------------------------------------------------------------------------------------
# the spec


@functools.cache
def estimate_llc_defaults() -> dict[str, Any]:
    """The settings a cell may set and their defaults: ``estimate_llc``'s keyword arguments
    (minus key, mesh, progress) plus seed (0) and data ("full")."""
    from jaxslt.estimator import estimate_llc

    params = inspect.signature(estimate_llc).parameters.values()
    out = {
        p.name: p.default
        for p in params
        if p.kind is p.KEYWORD_ONLY and p.name not in _NOT_SETTINGS
    }
    return {**out, "seed": 0, "data": FULL_DATA}


def _json_value(name: str, value: Any) -> Any:
    """The JSON form of a setting (tuples → lists); TypeError for anything JSON cannot hold."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return float(value) if name in _FLOAT_SETTINGS else value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"setting {name} = {value} is not finite")
        return value
    if isinstance(value, list | tuple):
        return [_json_value(name, v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_value(f"{name}.{k}", v) for k, v in value.items()}
    raise TypeError(
        f"setting {name} = {value!r} ({type(value).__name__}) cannot be stored in a study: "
        "use numbers, strings, booleans, lists or tables (a restrict predicate or mask: write "
        "glob patterns instead)"
    )


def _check_keys(where: str, keys: Iterable[str]) -> None:
    allowed = estimate_llc_defaults()
    for key in keys:
        if key not in allowed:
            hint = " (pass seed instead of key)" if key == "key" else ""
            raise ValueError(
                f"{where}: {key!r} is not a study setting{hint}; settings are estimate_llc's "
                f"keyword arguments plus seed and data: {sorted(allowed)}"
            )


@dataclasses.dataclass(frozen=True)
class Spec:
    """A study: a problem, checkpoints, fixed settings and a grid (see the module docstring).

    Build it from a TOML file with ``load_spec`` or directly in Python::

        Spec(problem="mypkg.llc:problem", checkpoints={0: params0, 100: params100},
             grid={"step_size": [1e-4, 3e-4], "seed": [0, 1]}, store="study.sqlite")

    ``checkpoints``: an orbax directory (str or Path), a Mapping step → pytree, a sequence of
    pytrees (steps 0, 1, ...), or an ``OrbaxCheckpoints`` / ``EntryPointCheckpoints``.
    ``problem``: ``"module:function"`` or a named function, called with ``problem_kwargs``.
    """

    problem: str | Callable
    checkpoints: Any
    store: str | pathlib.Path
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    grid: Mapping[str, Sequence[Any]] = dataclasses.field(default_factory=dict)
    problem_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    name: str = "study"
    root: str | pathlib.Path = "."
    max_retries: int = 3
    num_cpus: float = 1.0

    def __post_init__(self) -> None:
        problem_name = _entry_point_name(self.problem)
        if isinstance(self.problem, str):
            if problem_name.count(":") != 1 or not all(problem_name.split(":")):
                raise ValueError(
                    f"[study] problem must look like 'package.module:function'; got "
                    f"{problem_name!r}"
                )
        elif not callable(self.problem):
            raise TypeError(
                f"problem must be 'module:function' or a function; got {self.problem!r}"
            )
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"[study] name must be a non-empty string; got {self.name!r}")
        root = str(pathlib.Path(self.root).expanduser().resolve())  # workers may have another cwd
        object.__setattr__(self, "root", root)
        if not isinstance(self.store, str | pathlib.PurePath) or not str(self.store):
            raise TypeError(f"store must be a file path (str or Path); got {self.store!r}")
        store = pathlib.Path(self.store).expanduser()
        if not store.is_absolute():  # relative: inside the spec's folder
            inside = os.path.normpath(os.path.join(root, store))
            if inside != root and not inside.startswith(root.rstrip(os.sep) + os.sep):
                raise ValueError(
                    f"[study] store {str(self.store)!r} leads outside the spec's folder {root}; "
                    "keep it inside, or write an absolute path if you mean that place"
                )
        object.__setattr__(self, "checkpoints", _as_checkpoints(self.checkpoints, root))
        if not isinstance(self.settings, Mapping):
            raise TypeError(
                f"[settings] must be a table of estimate_llc settings; got {self.settings!r}"
            )
        if not isinstance(self.grid, Mapping):
            raise TypeError(f"[grid] must be a table setting → list of values; got {self.grid!r}")
        if not isinstance(self.problem_kwargs, Mapping):
            raise TypeError(f"problem_kwargs must be a table; got {self.problem_kwargs!r}")
        _check_keys("[settings]", self.settings)
        _check_keys("[grid]", self.grid)
        both = sorted(set(self.settings) & set(self.grid))
        if both:
            raise ValueError(f"{both} appear in both [settings] and [grid]; keep each in one")
        settings = {k: _json_value(k, v) for k, v in self.settings.items()}
        grid = {}
        for key, values in self.grid.items():
            if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
                raise ValueError(
                    f"[grid] {key} must be a non-empty list of values; got {values!r} (a fixed "
                    "value belongs in [settings])"
                )
            values = [_json_value(key, v) for v in values]
            canon = [_canonical(v) for v in values]
            if len(set(canon)) != len(canon):
                raise ValueError(f"[grid] {key} lists a value twice: {values}")
            grid[key] = tuple(values)
        object.__setattr__(self, "settings", settings)
        object.__setattr__(self, "grid", grid)
        object.__setattr__(
            self, "problem_kwargs", _json_value("problem_kwargs", dict(self.problem_kwargs))
        )
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int):
            raise TypeError(f"[ray] max_retries must be an int >= 0; got {self.max_retries!r}")
        if self.max_retries < 0:
            raise ValueError(f"[ray] max_retries must be >= 0; got {self.max_retries}")
        if isinstance(self.num_cpus, bool) or not (
            isinstance(self.num_cpus, int | float) and self.num_cpus > 0
        ):
            raise ValueError(f"[ray] num_cpus must be a number > 0; got {self.num_cpus!r}")
        _check_values(self)

    @property
    def problem_name(self) -> str:
        return _entry_point_name(self.problem)

    @property
    def store_path(self) -> pathlib.Path:
        """The store's file (``store`` taken relative to ``root``)."""
        return pathlib.Path(self.root, self.store).expanduser()

    def grid_points(self) -> list[dict[str, Any]]:
        """Every combination of the grid's values with the fixed settings and the defaults:
        the resolved settings of each cell, checkpoint aside (grid order: the first axis
        varies slowest)."""
        defaults = estimate_llc_defaults()
        missing = [k for k, v in defaults.items() if v is inspect.Parameter.empty]
        missing = [k for k in missing if k not in self.settings and k not in self.grid]
        if missing:
            raise ValueError(
                f"{missing} must be set, in [settings] or as a [grid] list (estimate_llc has "
                "no default for it)"
            )
        base = {k: v for k, v in defaults.items() if v is not inspect.Parameter.empty}
        base = {k: _json_value(k, v) for k, v in {**base, **self.settings}.items()}
        keys = list(self.grid)
        points = []
        for combo in itertools.product(*(self.grid[k] for k in keys)):
            point = {**base, **dict(zip(keys, combo, strict=True))}
            if point.get("localization") is None and point["step_size"] != "auto":
                point["localization"] = _identity_defaults()["localization"]  # None means 100
            points.append(point)
        return points


def _check_values(spec: Spec) -> None:
    """Check every distinct combination's values with estimate_llc's own argument checks
    (those that do not need the data), so that a bad value fails before any cell runs."""
    from jaxslt import validation

    points = spec.grid_points()
    checked = set()
    for point in points:
        key = _canonical(point)
        if key in checked:
            continue
        checked.add(key)
        where = _describe(point, spec)
        seed = point["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"{where}: seed must be an integer >= 0; got {seed!r}")
        if not isinstance(point["data"], str) or not point["data"]:
            raise ValueError(
                f"{where}: data must be a slice name (a string); got {point['data']!r}"
            )
        batch = point.get("batch_size")
        args = {
            "n": sys.maxsize if batch is None else batch,
            **point,
            "step_size": 1.0 if point["step_size"] == "auto" else point["step_size"],
        }
        if args["localization"] is None:
            args["localization"] = 0.0
        try:
            for check in (validation.check_settings, validation.check_chain_groups):
                wanted = inspect.signature(check).parameters
                check(**{k: v for k, v in args.items() if k in wanted})
            validation.check_compute_dtype(point.get("compute_dtype"))
            validation.check_diagnostics(
                point.get("diagnostics", True), num_draws=None, num_chains=None
            )
            if "sampler" in point:
                options = point.get("sampler_options")
                options = None if options is None else _hashable(options)
                validation.check_sampler(point["sampler"], options, batch_size=batch, n=args["n"])
        except (TypeError, ValueError) as err:
            raise type(err)(f"{where}: {err}") from None


def _describe(point: Mapping[str, Any], spec: Spec) -> str:
    varying = ", ".join(f"{k}={point[k]!r}" for k in spec.grid)
    return f"study {spec.name!r}" + (f", cell with {varying}" if varying else "")


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return {k: _hashable(v) for k, v in value.items()}
    return value


def _as_checkpoints(value: Any, root: str) -> Checkpoints:
    if isinstance(value, OrbaxCheckpoints | EntryPointCheckpoints):
        return dataclasses.replace(value, root=root)
    if isinstance(value, MemoryCheckpoints):
        return value
    if isinstance(value, str | pathlib.PurePath):
        return OrbaxCheckpoints(str(value), root=root)
    return MemoryCheckpoints(_check_trees(value, "checkpoints"))


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


# ---------------------------------------------------------------------------------------------
# TOML


def load_spec(path: str | pathlib.Path) -> Spec:
    """Read a study spec from a TOML file (see the module docstring); ValueError names the
    table and key of anything wrong."""
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"study spec {str(path)!r} does not exist") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML: {err}") from None
    return spec_from_dict(doc, root=path.parent, default_name=path.stem, source=str(path))


def spec_from_dict(
    doc: Mapping[str, Any],
    *,
    root: str | pathlib.Path = ".",
    default_name: str = "study",
    source: str = "spec",
) -> Spec:
    """A ``Spec`` from the parsed TOML tables (what ``load_spec`` does after parsing)."""
    for table, value in doc.items():
        if table not in _TABLES:
            raise ValueError(f"{source}: unknown table [{table}]; the tables are {list(_TABLES)}")
        if not isinstance(value, Mapping):
            raise ValueError(f"{source}: {table} must be a table [{table}], got {value!r}")
        allowed = _TABLES[table]
        for key in value if allowed is not None else ():
            if key not in allowed:
                raise ValueError(
                    f"{source}: unknown key {key!r} in [{table}]; its keys are {list(allowed)}"
                )
    study = doc.get("study", {})
    if "problem" not in study:
        raise ValueError(
            f"{source}: [study] problem is missing: name the function that returns "
            '(loss_fn, data), e.g. problem = "mypkg.llc:problem"'
        )
    ckpt = dict(doc.get("checkpoints", {}))
    if ("directory" in ckpt) == ("entry_point" in ckpt):
        raise ValueError(
            f'{source}: [checkpoints] needs exactly one of directory = "..." (an orbax '
            'directory) or entry_point = "module:function" (returning step → pytree)'
        )
    if "directory" in ckpt:
        if "kwargs" in ckpt:
            raise ValueError(f"{source}: [checkpoints] kwargs only go with entry_point")
        steps = ckpt.get("steps")
        if steps is not None:
            if not isinstance(steps, list) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in steps
            ):
                raise ValueError(
                    f"{source}: [checkpoints] steps must be a list of integers >= 0; got {steps!r}"
                )
            if len(set(steps)) != len(steps):
                raise ValueError(f"{source}: [checkpoints] steps lists a step twice: {steps}")
            steps = tuple(steps)
        checkpoints = OrbaxCheckpoints(
            str(ckpt["directory"]), steps, ckpt.get("item"), root=str(root)
        )
    else:
        for key in ("steps", "item"):
            if key in ckpt:
                raise ValueError(f"{source}: [checkpoints] {key} only goes with directory")
        checkpoints = EntryPointCheckpoints(
            ckpt["entry_point"], dict(ckpt.get("kwargs", {})), root=str(root)
        )
    ray = doc.get("ray", {})
    try:
        return Spec(
            problem=study["problem"],
            checkpoints=checkpoints,
            store=study.get("store", f"{default_name}.sqlite"),
            settings=doc.get("settings", {}),
            grid=doc.get("grid", {}),
            problem_kwargs=study.get("problem_kwargs", {}),
            name=study.get("name", default_name),
            root=root,
            max_retries=ray.get("max_retries", 3),
            num_cpus=ray.get("num_cpus", 1.0),
        )
    except (TypeError, ValueError) as err:
        raise type(err)(f"{source}: {err}") from None


# ---------------------------------------------------------------------------------------------
# cells


class Cell(NamedTuple):
    """One estimate_llc call of a study. ``settings``: estimate_llc's keyword arguments (all
    of them but key, mesh and progress, defaults filled in); ``identity``: the canonical JSON
    that ``cell_id`` hashes."""

    cell_id: str
    step: int
    data: str
    seed: int
    settings: dict[str, Any]
    identity: str

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for estimate_llc (lists as tuples: some settings are static and
        must be hashable)."""
        return {k: _hashable(v) for k, v in self.settings.items()}

    @property
    def shape_key(self) -> str:
        """Cells with equal shape keys run the same compiled program (on the same data
        slice): the settings that are traced (step_size, nbeta, localization) and the seed
        are left out."""
        static = {k: v for k, v in self.settings.items() if k not in _FLOAT_SETTINGS}
        return _canonical({"data": self.data, **static})


@functools.cache
def _identity_defaults() -> dict[str, Any]:
    """estimate_llc's defaults in JSON form, localization=None read as the 100 it means."""
    from jaxslt.estimator import DEFAULT_LOCALIZATION

    out = {
        k: _json_value(k, v)
        for k, v in estimate_llc_defaults().items()
        if v is not inspect.Parameter.empty
    }
    return {**out, "localization": float(DEFAULT_LOCALIZATION)}


def cell_identity(spec: Spec, checkpoint: Mapping[str, Any], point: Mapping[str, Any]) -> str:
    """The canonical JSON hashed into a cell's id. Settings at estimate_llc's defaults are left
    out: writing a default explicitly names the same cell, and a jaxslt that adds an argument
    (with a default) keeps every existing cell id. (Rows store the full settings and the
    library versions.)"""
    defaults = _identity_defaults()
    settings = {
        k: v
        for k, v in point.items()
        if k not in defaults or _canonical(v) != _canonical(defaults[k])
    }
    return _canonical(
        {
            "problem": spec.problem_name,
            "problem_kwargs": spec.problem_kwargs,
            "checkpoint": dict(checkpoint),
            "settings": settings,
        }
    )


def expand(
    spec: Spec, checkpoints: OrbaxCheckpoints | MemoryCheckpoints | None = None
) -> list[Cell]:
    """Every cell of the study, checkpoint-major (each checkpoint's cells together; within it,
    the grid's order). ``checkpoints``: the resolved checkpoints (entry point already called)."""
    if checkpoints is None:
        checkpoints = resolve_checkpoints(spec)
    points = spec.grid_points()
    cells = []
    for step in checkpoints.step_list():
        identity = checkpoints.identity(step)
        for point in points:
            text = cell_identity(spec, identity, point)
            settings = {k: v for k, v in point.items() if k not in _EXTRA_SETTINGS}
            cells.append(
                Cell(
                    hashlib.sha256(text.encode()).hexdigest(),
                    int(step),
                    point["data"],
                    point["seed"],
                    settings,
                    text,
                )
            )
    return cells


def resolve_checkpoints(spec: Spec) -> OrbaxCheckpoints | MemoryCheckpoints:
    """The spec's checkpoints, with an entry point called (once) into ``MemoryCheckpoints``."""
    if isinstance(spec.checkpoints, EntryPointCheckpoints):
        return spec.checkpoints.resolve()
    return spec.checkpoints
