"""Where arrays live on a device mesh: per-leaf ``PartitionSpec``s and the constraints that
place w*, the chain states and the outputs.

A mesh has a ``"chain"`` axis (chains spread over it), a ``"model"`` axis (each parameter leaf
split over it, as ``param_specs`` or the automatic rule says), or both. Chain-stacked arrays
carry ``P("chain", *spec)``; data and outputs are replicated. The shell places w* with
``place_params`` before calling the compiled core; inside it, ``shard_params``,
``shard_chains`` and ``replicate`` are sharding constraints (no-ops without a mesh).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxslt.types import PyTree

__all__ = [
    "MIN_SHARDED_SIZE",
    "flat_param_specs",
    "param_partition_specs",
    "place_params",
    "replicate",
    "shard_chains",
    "shard_params",
]


MIN_SHARDED_SIZE = 2**14
"""The automatic model-axis rule replicates parameter leaves with fewer elements than this
(biases, norms): splitting them saves little memory and costs a collective per use."""


def flat_param_specs(params: PyTree, param_specs: PyTree) -> list | None:
    """``param_specs`` as one entry per leaf of ``params`` (``jax.tree.leaves`` order): read
    up to the structure of ``params`` (so ``None`` or empty nodes of ``params``, e.g. Equinox's
    filtered-out fields, stay nodes, and a ``None`` at a leaf means replicated), or a flat
    list/tuple of one spec per leaf. None when it is neither."""
    leaves, treedef = jax.tree.flatten(params)
    try:
        return treedef.flatten_up_to(param_specs)
    except (ValueError, TypeError):
        if isinstance(param_specs, (list, tuple)) and len(param_specs) == len(leaves):
            return list(param_specs)
        return None


def param_partition_specs(
    params: PyTree, mesh: jax.sharding.Mesh | None, param_specs: PyTree | None = None
) -> PyTree:
    """One ``PartitionSpec`` per leaf of ``params`` (parameter dimensions only, no chain axis):
    how each parameter, its gradient and w* are split over the mesh.

    ``param_specs``: a pytree of ``PartitionSpec`` (``None`` = replicated) with the structure
    of ``params``, e.g. ``flax.linen.get_partition_spec(variables)`` mapped to mesh axes, or
    the same specs as a flat tuple in ``jax.tree.leaves(params)`` order (hashable, so a valid
    static argument). ``None`` = the automatic rule: a leaf of at least ``MIN_SHARDED_SIZE``
    elements is split over the mesh's ``"model"`` axis along its largest dimension divisible
    by the axis size (the last one on a tie); smaller leaves, leaves without such a dimension,
    and every leaf when the mesh has no ``"model"`` axis (or it has size 1) are replicated.
    """
    spec = jax.sharding.PartitionSpec
    leaves, treedef = jax.tree.flatten(params)
    if param_specs is not None:
        flat = flat_param_specs(params, param_specs)
        return jax.tree.unflatten(treedef, [spec() if s is None else s for s in flat])
    size = 1 if mesh is None else dict(mesh.shape).get("model", 1)

    def auto(x):
        shape = jnp.shape(x)
        dims = [d for d, length in enumerate(shape) if length % size == 0]
        if size == 1 or not dims or math.prod(shape) < MIN_SHARDED_SIZE:
            return spec()
        d = max(dims, key=lambda d: (shape[d], d))
        return spec(*[None] * d, "model")

    return jax.tree.unflatten(treedef, [auto(x) for x in leaves])


def shard_params(params: PyTree, mesh: jax.sharding.Mesh | None, specs: PyTree) -> PyTree:
    """Constrain each leaf of ``params`` (w*, unstacked) to ``NamedSharding(mesh, its spec)``."""
    if mesh is None:
        return params
    return jax.tree.map(
        lambda x, s: jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(mesh, s)),
        params,
        specs,
    )


def place_params(
    params: PyTree, mesh: jax.sharding.Mesh | None, param_specs: PyTree | None = None
) -> PyTree:
    """``jax.device_put`` w* onto ``mesh``, split as ``param_partition_specs`` says, so that no
    device needs a whole copy of a model split over ``"model"`` (the outer layer does this
    before calling the compiled core). Without a mesh, ``params`` unchanged."""
    if mesh is None:
        return params
    specs = flat_param_specs(params, param_partition_specs(params, mesh, param_specs))
    shardings = [jax.sharding.NamedSharding(mesh, s) for s in specs]
    return jax.device_put(params, jax.tree.unflatten(jax.tree.structure(params), shardings))


def shard_chains(
    tree: PyTree, mesh: jax.sharding.Mesh | None, position: PyTree | None, specs: PyTree
) -> PyTree:
    """Constrain chain-stacked arrays (leading axis = chains) to ``mesh``.

    The chain axis goes over the mesh's ``"chain"`` axis (replicated on a mesh without one).
    Inside every subtree stacked like ``position`` (same structure, leaf shapes (C, *shape)):
    positions, momenta, preconditioner moments, gradients, leaf i's parameter dimensions follow
    ``specs`` leaf i, i.e. ``P("chain", *spec_i)``. Other leaves (keys, per-chain scalars,
    minibatches) are replicated past the chain axis; all of them when ``position`` is None.
    """
    if mesh is None:
        return tree
    spec = jax.sharding.PartitionSpec
    chain = "chain" if "chain" in mesh.axis_names else None
    treedef = jax.tree.structure(position)
    shapes = [jnp.shape(x) for x in jax.tree.leaves(position)]
    leaf_specs = flat_param_specs(position, specs)

    def stacked(node):
        return (
            position is not None
            and jax.tree.structure(node) == treedef
            and [jnp.shape(x)[1:] for x in jax.tree.leaves(node)] == shapes
        )

    def constrain(x, s):
        sharding = jax.sharding.NamedSharding(mesh, spec(chain, *s))
        return jax.lax.with_sharding_constraint(x, sharding)

    def node(sub):
        if stacked(sub):
            parts = [constrain(x, s) for x, s in zip(jax.tree.leaves(sub), leaf_specs, strict=True)]
            return jax.tree.unflatten(treedef, parts)
        return constrain(sub, spec())

    return jax.tree.map(node, tree, is_leaf=stacked)


def replicate(tree: PyTree, mesh: jax.sharding.Mesh | None) -> PyTree:
    """Constrain every leaf to be replicated on ``mesh``: small outputs (traces, estimates)
    become fully addressable on every process, as multi-host callers need."""
    if mesh is None:
        return tree
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)
