"""A cell's settings: which names a spec may set, their JSON form, and the checks of their values.

The settings a study takes are ``estimate_llc``'s keyword settings (``jaxslt.config
.ESTIMATE_SETTINGS``) minus those a study cannot set (``key``: a cell has a ``seed``; ``mesh``
and ``progress``: the runner's business), plus ``seed`` (→ ``key=jax.random.key(seed)``) and
``data`` (the name of a data slice). Values are stored as JSON: numbers, strings, booleans,
lists and tables; the float settings (step_size, nbeta, localization) are always floats, so
that ``localization = 10`` and ``localization = 10.0`` name the same cell.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = [
    "EXTRA_SETTINGS",
    "FLOAT_SETTINGS",
    "NOT_SETTINGS",
    "canonical",
    "check_keys",
    "check_point",
    "hashable",
    "json_value",
    "required_settings",
    "study_settings",
]

EXTRA_SETTINGS = ("seed", "data")  # cell settings that are not estimate_llc arguments
NOT_SETTINGS = ("key", "mesh", "progress")  # estimate_llc arguments a spec cannot set
FLOAT_SETTINGS = ("step_size", "nbeta", "localization")  # traced: one compiled program for all


@functools.cache
def study_settings() -> tuple[str, ...]:
    """The names a spec may set: ``estimate_llc``'s keyword settings (``ESTIMATE_SETTINGS``)
    minus key, mesh and progress, plus seed and data."""
    from jaxslt.config import ESTIMATE_SETTINGS  # imports jax: not before a spec is built

    names = [k for k in ESTIMATE_SETTINGS if k not in NOT_SETTINGS]
    return (*names, *EXTRA_SETTINGS)


@functools.cache
def required_settings() -> tuple[str, ...]:
    """The settings ``estimate_llc`` has no default for (``step_size``): every cell sets them."""
    from jaxslt.config import ESTIMATE_SETTINGS, REQUIRED

    return tuple(k for k, v in ESTIMATE_SETTINGS.items() if v is REQUIRED and k in study_settings())


def json_value(name: str, value: Any) -> Any:
    """The JSON form of a setting (tuples → lists); TypeError for anything JSON cannot hold."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return float(value) if name in FLOAT_SETTINGS else value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"setting {name} = {value} is not finite")
        return value
    if isinstance(value, list | tuple):
        return [json_value(name, v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): json_value(f"{name}.{k}", v) for k, v in value.items()}
    raise TypeError(
        f"setting {name} = {value!r} ({type(value).__name__}) cannot be stored in a study: "
        "use numbers, strings, booleans, lists or tables (a restrict predicate or mask: write "
        "glob patterns instead)"
    )


def canonical(value: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, floats in Python's shortest round-trip
    form (what a cell's identity is made of)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def hashable(value: Any) -> Any:
    """A setting's JSON form with lists as tuples (static arguments must be hashable)."""
    if isinstance(value, list):
        return tuple(hashable(v) for v in value)
    if isinstance(value, dict):
        return {k: hashable(v) for k, v in value.items()}
    return value


def check_keys(where: str, keys: Iterable[str]) -> None:
    """ValueError naming any key that is not a study setting (``where``: the table)."""
    allowed = study_settings()
    for key in keys:
        if key not in allowed:
            hint = " (pass seed instead of key)" if key == "key" else ""
            raise ValueError(
                f"{where}: {key!r} is not a study setting{hint}; settings are estimate_llc's "
                f"keyword arguments plus seed and data: {sorted(allowed)}"
            )


def check_point(point: Mapping[str, Any], where: str) -> None:
    """Check one cell's settings (every default filled in) with estimate_llc's own argument
    checks, those that do not need the data, so that a bad value fails before any cell runs;
    the error starts with ``where``."""
    from jaxslt import validation

    seed = point["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"{where}: seed must be an integer >= 0; got {seed!r}")
    if not isinstance(point["data"], str) or not point["data"]:
        raise ValueError(f"{where}: data must be a slice name (a string); got {point['data']!r}")
    batch = point.get("batch_size")
    n = sys.maxsize if batch is None else batch
    step_size = point["step_size"]
    localization = point["localization"]
    try:
        validation.check_settings(
            n=n,
            step_size=1.0 if step_size == "auto" else step_size,  # "auto": calibrated later
            num_chains=point["num_chains"],
            num_draws=point["num_draws"],
            num_burnin=point["num_burnin"],
            thinning=point["thinning"],
            batch_size=batch,
            nbeta=point["nbeta"],
            localization=0.0 if localization is None else localization,
            eval_batch_size=point["eval_batch_size"],
        )
        validation.check_chain_groups(
            num_chains=point["num_chains"],
            acceptance_checks=point["acceptance_checks"],
            chain_batch_size=point["chain_batch_size"],
        )
        validation.check_compute_dtype(point.get("compute_dtype"))
        validation.check_diagnostics(
            point.get("diagnostics", True), num_draws=None, num_chains=None
        )
        if "sampler" in point:
            options = point.get("sampler_options")
            options = None if options is None else hashable(options)
            validation.check_sampler(point["sampler"], options, batch_size=batch, n=n)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{where}: {err}") from None
