"""Study specifications: a TOML file (or a ``Spec`` built in Python) → a checked ``Spec``.

A cell is one ``jaxslt.estimate_llc`` call: one checkpoint × one value of every grid axis. Its
settings are ``estimate_llc``'s keyword arguments with every default filled in (so writing a
default explicitly names the same cell), plus ``seed`` (→ ``key=jax.random.key(seed)``) and
``data`` (the name of a data slice; ``"full"`` is the problem's own data set). The defaults are
those frozen for the store's schema version (``jaxslt.study.identity``), which also says how a
cell is named; ``jaxslt.study.cells`` expands a spec into its cells.

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

import dataclasses
import itertools
import os
import pathlib
import tomllib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jaxslt.study.checkpoints import EntryPointCheckpoints, OrbaxCheckpoints, as_checkpoints
from jaxslt.study.entry_points import entry_point_name
from jaxslt.study.identity import cell_defaults, identity_defaults
from jaxslt.study.settings import (
    canonical,
    check_keys,
    check_point,
    json_value,
    required_settings,
    study_settings,
)

__all__ = ["Spec", "as_spec", "load_spec", "spec_from_dict"]

_TABLES = {
    "study": ("name", "problem", "problem_kwargs", "store"),
    "checkpoints": ("directory", "steps", "item", "entry_point", "kwargs"),
    "settings": None,  # checked against the study settings (jaxslt.study.settings)
    "grid": None,
    "ray": ("max_retries", "num_cpus"),
}


@dataclasses.dataclass(frozen=True)
class Spec:
    """A study: a problem, checkpoints, fixed settings and a grid (see the module docstring).

    Build it from a TOML file with ``load_spec`` or directly in Python::

        Spec(problem="mypkg.llc:problem", checkpoints={0: params0, 100: params100},
             grid={"step_size": [1e-4, 3e-4], "seed": [0, 1]}, store="study.sqlite")

    Attributes:
      problem: ``"module:function"`` or a named function, called with ``problem_kwargs``, that
        returns a ``StudyProblem`` (or a ``(loss_fn, data)`` tuple).
      checkpoints: an orbax directory (str or Path), a Mapping step → pytree, a sequence of
        pytrees (steps 0, 1, ...), or an ``OrbaxCheckpoints`` / ``EntryPointCheckpoints``.
      store: the SQLite results file; a relative path is inside ``root``.
      settings: fixed ``estimate_llc`` settings, for every cell.
      grid: setting → list of values; every combination is a cell (``seed`` and ``data``
        included).
      problem_kwargs: keyword arguments of the problem entry point.
      name: the study's name.
      root: the spec's folder: relative paths and entry points are taken from it.
      max_retries: how often Ray reruns a cell whose worker process died
        (``ray.remote(max_retries=)``).
      num_cpus: CPUs Ray reserves per cell.

    Raises:
      ValueError: a bad value (the message names the table and key).
      TypeError: a value of the wrong type.
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
        problem_name = entry_point_name(self.problem)
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
        object.__setattr__(self, "checkpoints", as_checkpoints(self.checkpoints, root))
        if not isinstance(self.settings, Mapping):
            raise TypeError(
                f"[settings] must be a table of estimate_llc settings; got {self.settings!r}"
            )
        if not isinstance(self.grid, Mapping):
            raise TypeError(f"[grid] must be a table setting → list of values; got {self.grid!r}")
        if not isinstance(self.problem_kwargs, Mapping):
            raise TypeError(f"problem_kwargs must be a table; got {self.problem_kwargs!r}")
        check_keys("[settings]", self.settings)
        check_keys("[grid]", self.grid)
        both = sorted(set(self.settings) & set(self.grid))
        if both:
            raise ValueError(f"{both} appear in both [settings] and [grid]; keep each in one")
        settings = {k: json_value(k, v) for k, v in self.settings.items()}
        grid = {}
        for key, values in self.grid.items():
            if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
                raise ValueError(
                    f"[grid] {key} must be a non-empty list of values; got {values!r} (a fixed "
                    "value belongs in [settings])"
                )
            values = [json_value(key, v) for v in values]
            canon = [canonical(v) for v in values]
            if len(set(canon)) != len(canon):
                raise ValueError(f"[grid] {key} lists a value twice: {values}")
            grid[key] = tuple(values)
        object.__setattr__(self, "settings", settings)
        object.__setattr__(self, "grid", grid)
        object.__setattr__(
            self, "problem_kwargs", json_value("problem_kwargs", dict(self.problem_kwargs))
        )
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int):
            raise TypeError(f"[ray] max_retries must be an int >= 0; got {self.max_retries!r}")
        if self.max_retries < 0:
            raise ValueError(f"[ray] max_retries must be >= 0; got {self.max_retries}")
        if isinstance(self.num_cpus, bool) or not (
            isinstance(self.num_cpus, int | float) and self.num_cpus > 0
        ):
            raise ValueError(f"[ray] num_cpus must be a number > 0; got {self.num_cpus!r}")
        checked = set()  # every distinct point, with estimate_llc's own argument checks
        for point in self.grid_points():
            key = canonical(point)
            if key not in checked:
                checked.add(key)
                check_point(point, _describe(point, self))

    @property
    def problem_name(self) -> str:
        """The problem entry point's name (``"module:function"``; part of every cell id)."""
        return entry_point_name(self.problem)

    @property
    def store_path(self) -> pathlib.Path:
        """The store's file (``store`` taken relative to ``root``)."""
        return pathlib.Path(self.root, self.store).expanduser()

    def grid_points(self) -> list[dict[str, Any]]:
        """Every combination of the grid's values with the fixed settings and the defaults
        (frozen per schema version: ``jaxslt.study.identity``), JSON forms: the resolved
        settings of each cell, checkpoint aside (grid order: the first axis varies slowest)."""
        missing = [k for k in required_settings() if k not in self.settings and k not in self.grid]
        if missing:
            raise ValueError(
                f"{missing} must be set, in [settings] or as a [grid] list (estimate_llc has "
                "no default for it)"
            )
        allowed = study_settings()
        base = {k: v for k, v in cell_defaults().items() if k in allowed}
        base = {k: json_value(k, v) for k, v in {**base, **self.settings}.items()}
        localization = identity_defaults()["localization"]  # what None means, numeric ε
        keys = list(self.grid)
        points = []
        for combo in itertools.product(*(self.grid[k] for k in keys)):
            point = {**base, **dict(zip(keys, combo, strict=True))}
            if point.get("localization") is None and point["step_size"] != "auto":
                point["localization"] = localization
            points.append(point)
        return points


def as_spec(spec: Spec | str | pathlib.Path) -> Spec:
    """``spec`` itself, or the spec read from a TOML file at that path."""
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, str | pathlib.PurePath):
        return load_spec(spec)
    raise TypeError(f"spec must be a jaxslt.study.Spec or the path of a TOML spec; got {spec!r}")


def _describe(point: Mapping[str, Any], spec: Spec) -> str:
    varying = ", ".join(f"{k}={point[k]!r}" for k in spec.grid)
    return f"study {spec.name!r}" + (f", cell with {varying}" if varying else "")


# ---------------------------------------------------------------------------------------------
# TOML


def load_spec(path: str | pathlib.Path) -> Spec:
    """Read a study spec from a TOML file (see the module docstring).

    Args:
      path: the TOML file; relative paths in it are taken from its folder.

    Returns:
      The checked ``Spec`` (named after the file unless it names itself).

    Raises:
      FileNotFoundError: no such file.
      ValueError: invalid TOML, or anything wrong in it (naming the table and key).
    """
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
    """A ``Spec`` from the parsed TOML tables (what ``load_spec`` does after parsing).

    Args:
      doc: the parsed tables.
      root: the folder relative paths are taken from.
      default_name: the study's name when ``doc`` names none.
      source: where ``doc`` came from, for the messages.

    Returns:
      The checked ``Spec``.

    Raises:
      ValueError: an unknown table or anything wrong in one (naming the table and key).
    """
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
