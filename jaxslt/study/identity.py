"""What names a cell: the identity hashed into its id, and the frozen defaults it is made from.

``cell_id = sha256(identity)``, ``identity`` = canonical JSON (``settings.canonical``) of
``{problem, problem_kwargs, checkpoint, settings}``: the problem entry point's name and keyword
arguments, the checkpoint's identity (``jaxslt.study.checkpoints``) and the cell's settings,
*less those left at their default*, so that writing a default explicitly names the same cell
and a jaxslt that adds a setting keeps every existing id. (Rows store the full settings and the
library versions.) The identity does not cover the *code* behind the problem entry point:
after changing that code, use a new store.

**The defaults are frozen here, per schema version** (``IDENTITY_DEFAULTS``), not read from
``estimate_llc``: an identity that leaves ``num_draws`` out *means* ``num_draws=1000``, for
every stored row, whatever a later ``estimate_llc`` defaults to; cells are filled in with the
same table, so a study runs what its ids say. ``tests/test_study_identity.py`` fails when
``estimate_llc``'s defaults (``jaxslt.config.ESTIMATE_SETTINGS``) drift from the table of
``SCHEMA_VERSION``: then either restore the default, or bump ``SCHEMA_VERSION`` and add the
new table. An identity leaves a setting out only at its value in the *first* table that has it
(``left_out_values``), so a default changed in a later table names its cells explicitly and no
stored result is relabelled, while a setting added later (at a default that reproduces the old
behaviour) keeps the existing ids.
"""

from __future__ import annotations

import hashlib
import types
from collections.abc import Mapping
from typing import Any, Protocol

from jaxslt.study.settings import canonical

__all__ = [
    "IDENTITY_DEFAULTS",
    "SCHEMA_VERSION",
    "IdentitySource",
    "cell_defaults",
    "cell_id",
    "cell_identity",
    "identity_defaults",
    "left_out_values",
]

SCHEMA_VERSION = 1
"""The version of the store's schema (``PRAGMA user_version``) and of ``IDENTITY_DEFAULTS``:
every version from 1 to ``SCHEMA_VERSION`` has a table (a change of the store's layout alone
repeats the previous one)."""

IDENTITY_DEFAULTS: Mapping[int, Mapping[str, Any]] = types.MappingProxyType(
    {
        1: types.MappingProxyType(
            {  # estimate_llc's defaults at schema version 1, in JSON form, in this order
                "num_chains": 4,
                "num_draws": 1000,
                "num_burnin": 500,
                "thinning": 1,
                "batch_size": None,
                "nbeta": None,
                "localization": 100.0,  # None means 100 unless step_size="auto" (see below)
                "sampler": "sgld",
                "sampler_options": None,
                "eval_batch_size": None,
                "acceptance_checks": 50,
                "chain_batch_size": "auto",
                "param_specs": None,
                "compute_dtype": None,
                "restrict": None,
                "observables": False,
                "observable_draws": 100,
                "diagnostics": True,
                "seed": 0,
                "data": "full",
            }
        ),
    }
)
"""Schema version → the value of every setting a spec leaves out, as its identity means it
(JSON form). ``localization`` holds the γ that ``None`` means with a numeric step size; with
``step_size="auto"`` a left-out γ stays ``None`` (calibrated), which the identity names."""


def identity_defaults(version: int = SCHEMA_VERSION) -> dict[str, Any]:
    """The frozen defaults of schema ``version`` (a copy)."""
    return dict(IDENTITY_DEFAULTS[version])


def cell_defaults(version: int = SCHEMA_VERSION) -> dict[str, Any]:
    """What a cell holds for each setting its spec leaves out (in the table's order):
    ``identity_defaults`` with ``localization`` None (the spec's grid points set it to the
    table's γ unless ``step_size="auto"``)."""
    return {**IDENTITY_DEFAULTS[version], "localization": None}


def left_out_values() -> dict[str, Any]:
    """The value at which an identity leaves each setting out: the setting's value in the
    first table (lowest schema version) that has it."""
    out: dict[str, Any] = {}
    for version in sorted(IDENTITY_DEFAULTS):
        for key, value in IDENTITY_DEFAULTS[version].items():
            out.setdefault(key, value)
    return out


class IdentitySource(Protocol):
    """What an identity takes from a spec (``jaxslt.study.Spec``)."""

    @property
    def problem_name(self) -> str: ...

    @property
    def problem_kwargs(self) -> Mapping[str, Any]: ...


def cell_identity(
    spec: IdentitySource, checkpoint: Mapping[str, Any], point: Mapping[str, Any]
) -> str:
    """The canonical JSON hashed into a cell's id: the problem's name and kwargs, the
    checkpoint's identity and the cell's settings (``point``, JSON forms) less those at their
    left-out value (see the module docstring)."""
    left_out = _LEFT_OUT
    settings = {
        k: v
        for k, v in point.items()
        if k not in left_out or canonical(v) != canonical(left_out[k])
    }
    return canonical(
        {
            "problem": spec.problem_name,
            "problem_kwargs": spec.problem_kwargs,
            "checkpoint": dict(checkpoint),
            "settings": settings,
        }
    )


def cell_id(identity: str) -> str:
    """A cell's id: the sha256 hex digest of its identity."""
    return hashlib.sha256(identity.encode()).hexdigest()


_LEFT_OUT = left_out_values()
