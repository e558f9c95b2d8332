"""Type aliases shared by jaxslt's modules."""

from __future__ import annotations

from typing import Any, TypeAlias

__all__ = ["PyTree"]

PyTree: TypeAlias = Any
"""Any JAX pytree: nested dicts, lists, tuples, NamedTuples, dataclasses registered as pytrees,
Flax variables or NNX State, Equinox modules, ... of arrays."""
