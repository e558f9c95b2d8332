"""Argument checks run before anything compiles; each error names the argument and the fix."""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Mapping
from numbers import Integral, Real
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxslt.chains import typed_key
from jaxslt.kernels import SAMPLERS, sampler_capabilities
from jaxslt.sharding import flat_param_specs
from jaxslt.types import PyTree

__all__ = [
    "MIN_DIAGNOSED_DRAWS",
    "cast_settings",
    "check_chain_groups",
    "check_checkpoint_steps",
    "check_checkpoints",
    "check_compute_dtype",
    "check_curvature",
    "check_data",
    "check_diagnostics",
    "check_estimate",
    "check_finite_data",
    "check_grid",
    "check_init_loss",
    "check_key",
    "check_loss_fn",
    "check_loss_scale",
    "check_mesh",
    "check_observables",
    "check_optional_settings",
    "check_param_specs",
    "check_params",
    "check_positive_int",
    "check_sampler",
    "check_sampler_option_values",
    "check_settings",
    "finite_flags",
    "setting_dtype",
]


def _shapes(tree: PyTree) -> str:
    return str(jax.tree.map(lambda x: f"{np.dtype(x.dtype).name}{list(np.shape(x))}", tree))


def _leaf_problem(leaf: Any) -> str | None:
    """Why ``leaf`` cannot be a data or params array, or None."""
    if type(leaf).__module__.split(".")[0] == "pandas":
        return (
            f"a pandas {type(leaf).__name__}; pass arrays instead, e.g. "
            "frame.to_numpy(dtype=np.float32), or a dict of columns {name: frame[name].to_numpy()}"
        )
    if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
        return None
    dtype = np.dtype(leaf.dtype)
    if dtype.kind in "OUS" or (dtype.kind == "V" and not jnp.issubdtype(dtype, jnp.number)):
        return (
            f"an array of dtype {np.dtype(leaf.dtype)} (strings or Python objects); JAX needs "
            "numbers: encode them first (e.g. token ids, one-hot vectors or floats)"
        )
    return None


def check_data(data: PyTree) -> int:
    """Return n, the shared leading-axis length of every leaf of ``data``; refuse leaves that
    are not numeric arrays and float leaves holding NaN or inf."""
    with_paths = jax.tree_util.tree_leaves_with_path(data)
    leaves = [leaf for _, leaf in with_paths]
    if not leaves:
        raise ValueError(
            "data is empty: pass a pytree of arrays sharing a leading axis of length n"
        )
    lengths = []
    for path, leaf in with_paths:
        problem = _leaf_problem(leaf)
        if problem:
            raise TypeError(f"data{jax.tree_util.keystr(path)} is {problem}")
        if not hasattr(leaf, "shape") or np.ndim(leaf) < 1:
            raise TypeError(
                "data leaves must be arrays with a leading example axis; got "
                f"{type(leaf).__name__} of shape {np.shape(leaf)}: "
                "wrap scalars as arrays of shape (n, ...)"
            )
        lengths.append(leaf.shape[0])
    if len(set(lengths)) > 1:
        raise ValueError(
            f"data leaves have different leading lengths {sorted(set(lengths))} "
            f"(shapes {_shapes(data)}); every leaf needs the same number of examples n"
        )
    if lengths[0] == 0:
        raise ValueError(
            "data has zero examples (leading axis length 0); pass a non-empty data set"
        )
    check_finite_data(data)
    return int(lengths[0])


def check_finite_data(data: PyTree) -> None:
    """Refuse NaN or inf in the float leaves of ``data`` (before they pass for a divergence)."""
    with_paths = [
        ("data" + jax.tree_util.keystr(path), leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(data)
        if jnp.issubdtype(leaf.dtype, jnp.inexact)
    ]
    finite = finite_flags([leaf for _, leaf in with_paths])
    bad = [name for (name, _), ok in zip(with_paths, finite, strict=True) if not ok]
    if bad:
        raise ValueError(
            f"{bad[0]} contains NaN or inf; every example must be finite (drop or "
            "impute those rows before estimating; a NaN in one example makes every chain that "
            "draws it diverge)"
        )


def finite_flags(leaves: list) -> np.ndarray:
    """Whether each array is free of NaN and inf: host arrays and arrays held in host memory
    (the CPU backend) are read where they lie, accelerator arrays are reduced on their devices
    in one compiled program for the whole list (never copied to the host)."""
    on_host = [_in_host_memory(leaf) for leaf in leaves]
    flags = np.array([bool(np.isfinite(np.asarray(x)).all()) if host else True
                      for x, host in zip(leaves, on_host, strict=True)], bool)  # fmt: skip
    device = [i for i, host in enumerate(on_host) if not host]
    if device:
        flags[device] = np.asarray(_finite_on_devices([leaves[i] for i in device]))
    return flags


def _in_host_memory(leaf: Any) -> bool:
    # a CPU-backend array is read in place: checking it there compiles nothing (each new tree
    # of shapes compiled a small program, ~0.03–0.06 s of every first call on CPU)
    if not isinstance(leaf, jax.Array):
        return True
    return leaf.is_fully_addressable and all(d.platform == "cpu" for d in leaf.devices())


@jax.jit
def _finite_on_devices(leaves: list) -> jax.Array:
    # one compiled check for the whole tree: checked leaf by leaf eagerly, each distinct leaf
    # shape would compile two small programs (~70 ms each on CPU), seconds for a large model
    return jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves])


def check_params(params: PyTree) -> None:
    with_paths = jax.tree_util.tree_leaves_with_path(params)
    if not with_paths:
        raise ValueError("params is an empty pytree: pass the checkpoint w* whose LLC to estimate")
    where = [jax.tree_util.keystr(path) or "params" for path, _ in with_paths]
    for name, (_, leaf) in zip(where, with_paths, strict=True):
        problem = _leaf_problem(leaf)
        if problem:
            raise TypeError(f"params leaf {name} is {problem}")
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"params leaf {name} has dtype {dtype or type(leaf).__name__}; every leaf must "
                "be a float array (cast with jax.tree.map(lambda x: x.astype(jnp.float32), "
                "params), or close over integer constants in loss_fn)"
            )
    sizes = [int(np.size(leaf)) for _, leaf in with_paths]
    if sum(sizes) == 0:
        raise ValueError(
            f"params has no elements (shapes {_shapes(params)}): there is nothing to sample; "
            "pass the checkpoint w* whose LLC to estimate"
        )
    empty = [name for name, size in zip(where, sizes, strict=True) if size == 0]
    if empty:
        warnings.warn(
            f"params leaves {empty} have zero elements; they take no part in the estimate "
            "(drop them from params to silence this warning)",
            UserWarning,
            stacklevel=3,
        )
    finite = finite_flags([leaf for _, leaf in with_paths])
    if not finite.all():
        raise ValueError(
            f"params leaf {where[int(np.argmin(finite))]} contains NaN or inf; the checkpoint "
            "must be finite"
        )


def check_key(key: Any) -> jax.Array:
    """Check that ``key`` is one PRNG key; return it as a typed key (``chains.typed_key``): an
    old-style ``PRNGKey`` gives the same numbers either way, and so shares the compiled
    programs of ``jax.random.key`` instead of compiling its own."""
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape == ():
            return key
    elif isinstance(key, (jax.Array, np.ndarray)) and key.shape == (2,) and key.dtype == np.uint32:
        return typed_key(jnp.asarray(key))
    raise TypeError(
        f"key must be one PRNG key, e.g. jax.random.key(0); got {type(key).__name__} "
        f"with shape {np.shape(key)}"
    )


def _int(name: str, value: Any, low: int, hint: str) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int; got {value!r} ({type(value).__name__})")
    if value < low:
        raise ValueError(f"{name} must be >= {low}; got {value}. {hint}")


def check_positive_int(name: str, value: Any, meaning: str) -> None:
    _int(name, value, 1, f"It is {meaning}.")


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (Real, np.floating, np.integer)):
        if not (isinstance(value, (jax.Array, np.ndarray)) and np.ndim(value) == 0):
            raise TypeError(f"{name} must be a number; got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")
    return value


def check_settings(
    *,
    n: int,
    step_size: Any,
    num_chains: Any,
    num_draws: Any,
    num_burnin: Any,
    thinning: Any,
    batch_size: Any,
    nbeta: Any,
    localization: Any,
    eval_batch_size: Any,
) -> None:
    """The sampling settings of one run (``check_chain_groups``: how its chains are grouped)."""
    if _real("step_size", step_size) <= 0:
        raise ValueError(
            f"step_size must be > 0 (it is ε, the SGLD noise variance); got {step_size}. "
            "Typical values are 1e-6 to 1e-3"
        )
    _int("num_chains", num_chains, 1, "Use at least 1 chain (4 or more for a spread).")
    _int("num_draws", num_draws, 1, "Keep at least 1 draw per chain.")
    _int("num_burnin", num_burnin, 0, "Use 0 for no burn-in.")
    _int("thinning", thinning, 1, "Use 1 to keep every step.")
    if batch_size is not None:
        _int("batch_size", batch_size, 1, f"Use a minibatch size between 1 and n={n}.")
    if batch_size is not None and batch_size > n:
        raise ValueError(
            f"batch_size={batch_size} exceeds the number of examples n={n}; use batch_size <= {n} "
            f"(batch_size={n} is full-batch)"
        )
    if eval_batch_size is not None:
        _int("eval_batch_size", eval_batch_size, 1, "It is the chunk size for L_n(w*).")
    if nbeta is not None and _real("nbeta", nbeta) <= 0:
        raise ValueError(f"nbeta must be > 0 (or None for n/log n); got {nbeta}")
    if nbeta is None and n < 2:
        raise ValueError(f"nbeta=None means n/log n, undefined for n={n}; pass nbeta explicitly")
    if _real("localization", localization) < 0:
        raise ValueError(f"localization (γ) must be >= 0; got {localization}. Use 0 for none")


def check_chain_groups(
    *, num_chains: Any, acceptance_checks: Any = 0, chain_batch_size: Any = None
) -> None:
    """``acceptance_checks`` >= 0 and ``chain_batch_size`` (None, "auto" or a divisor of
    ``num_chains``, itself checked by ``check_settings``)."""
    _int("acceptance_checks", acceptance_checks, 0, "Use 0 to skip the MALA acceptance checks.")
    if isinstance(chain_batch_size, str) and chain_batch_size != "auto":
        raise ValueError(
            f'chain_batch_size must be an int, None (all chains at once) or "auto"; '
            f"got {chain_batch_size!r}"
        )
    if chain_batch_size is not None and chain_batch_size != "auto":
        _int("chain_batch_size", chain_batch_size, 1, "It is how many chains run at once.")
        if num_chains % min(chain_batch_size, num_chains):
            raise ValueError(
                f"chain_batch_size={chain_batch_size} must divide num_chains={num_chains}; "
                f"e.g. use one of {[k for k in range(1, num_chains + 1) if num_chains % k == 0]}"
            )


def check_optional_settings(*, nbeta: Any, localization: Any) -> None:
    """``nbeta`` and ``localization`` when given (None: the default, or calibrated with
    ``step_size="auto"``), checked under their own names before a calibration uses them."""
    if nbeta is not None and _real("nbeta", nbeta) <= 0:
        raise ValueError(f"nbeta must be > 0 (or None for n/log n); got {nbeta}")
    if localization is not None and _real("localization", localization) < 0:
        raise ValueError(f"localization (γ) must be >= 0; got {localization}. Use 0 for none")


_MESH_HINT = (
    "Build one with jax.make_mesh((num_chain_devices, num_model_devices), ('chain', 'model'), "
    "axis_types=(jax.sharding.AxisType.Auto,) * 2); either axis may have size 1, or be left out"
)


def _is_spec(x: Any) -> bool:
    return x is None or isinstance(x, P)


def _spec_axes(entry: Any) -> tuple:
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def check_mesh(
    mesh: Any, num_chains: int, chain_batch_size: int | None, param_specs: Any = None
) -> None:
    """``mesh``: a ``jax.sharding.Mesh`` with a ``"chain"`` axis (chains spread over it), a
    ``"model"`` axis (parameters split over it), or both; other axes only where
    ``param_specs`` names them."""
    if mesh is None:
        return
    if not isinstance(mesh, jax.sharding.Mesh) or not {"chain", "model"} & set(mesh.axis_names):
        raise TypeError(
            f"mesh must be a jax.sharding.Mesh with a 'chain' axis, a 'model' axis or both; "
            f"got {mesh!r}. {_MESH_HINT}"
        )
    used = set()
    if param_specs is not None:
        specs = jax.tree.leaves(param_specs, is_leaf=_is_spec)
        used = {a for spec in specs if isinstance(spec, P) for e in spec for a in _spec_axes(e)}
    idle = [a for a in mesh.axis_names if a not in {"chain", "model"} | used]
    if idle:
        raise ValueError(
            f"mesh axes {idle} are used neither for chains nor for parameters; name the axes "
            f"'chain' and 'model', or use {idle} in param_specs. {_MESH_HINT}"
        )
    group = num_chains if chain_batch_size is None else min(chain_batch_size, num_chains)
    size = dict(mesh.shape).get("chain", 1)
    if group % size:
        raise ValueError(
            f"{group} chains per group do not split over the mesh's 'chain' axis of size {size}; "
            f"use num_chains (and chain_batch_size) a multiple of {size}"
        )


def check_param_specs(
    param_specs: Any, params: PyTree, mesh: Any, *, restricted: bool = False
) -> tuple | None:
    """Check ``param_specs`` against ``params`` and ``mesh``; return one ``PartitionSpec`` per
    leaf of ``params`` as a flat tuple (hashable: a static argument of the compiled core).

    Accepted: a pytree with the structure of ``params`` whose leaves are ``PartitionSpec`` or
    ``None`` (replicated), or such specs in a list/tuple in ``jax.tree.leaves(params)`` order.
    Each spec names mesh axes other than ``"chain"`` (the chain axis is the stacked leading
    dimension), has at most ``leaf.ndim`` entries, and every split dimension is divisible by
    the product of its axes' sizes.
    """
    if param_specs is None:
        return None
    if mesh is None:
        raise ValueError(
            "param_specs splits parameters over a mesh; pass mesh= a jax.sharding.Mesh with a "
            f"'model' axis, or drop param_specs. {_MESH_HINT}"
        )
    if restricted:
        raise ValueError(
            "param_specs cannot be combined with restrict= (the chains carry only the sampled "
            "part, whose leaves differ from params'); drop param_specs: the sampled part is "
            "split by the automatic rule"
        )
    leaves, treedef = jax.tree.flatten(params)
    paths = [jax.tree_util.keystr(p) or "params" for p, _ in
             jax.tree_util.tree_leaves_with_path(params)]  # fmt: skip
    flat = flat_param_specs(params, param_specs)
    if flat is None:
        spec_def = jax.tree.structure(param_specs, is_leaf=_is_spec)
        raise ValueError(
            f"param_specs must have the structure of params ({treedef}) with a "
            f"PartitionSpec or None per leaf, or list {len(leaves)} specs in "
            f"jax.tree.leaves(params) order; got {spec_def}"
        )
    sizes = dict(mesh.shape)
    out = []
    for spec, leaf, where in zip(flat, leaves, paths, strict=True):
        if spec is None:
            spec = P()
        if not isinstance(spec, P):
            raise TypeError(
                f"param_specs at {where} must be a jax.sharding.PartitionSpec or None; got {spec!r}"
            )
        shape = np.shape(leaf)
        if len(spec) > len(shape):
            raise ValueError(
                f"param_specs at {where} is {spec} with {len(spec)} entries, but the leaf has "
                f"shape {shape}; give at most {len(shape)} entries"
            )
        axes = [a for e in spec for a in _spec_axes(e)]
        for a in axes:
            if a == "chain" or a not in sizes:
                raise ValueError(
                    f"param_specs at {where} names axis {a!r}; use axes of the mesh other than "
                    f"'chain' (the mesh has {list(mesh.axis_names)}; 'chain' splits the chains)"
                )
        if len(set(axes)) < len(axes):
            raise ValueError(f"param_specs at {where} is {spec}: it uses a mesh axis twice")
        for dim, entry in enumerate(spec):
            parts = math.prod(sizes[a] for a in _spec_axes(entry))
            if shape[dim] % parts:
                raise ValueError(
                    f"param_specs at {where} splits dimension {dim} (length {shape[dim]}) of "
                    f"shape {shape} over {parts} devices ({entry!r}); it must divide evenly: "
                    "choose another dimension, or None to replicate it"
                )
        out.append(spec)
    return tuple(out)


def check_sampler(
    sampler: Any, options: Mapping[str, Any] | None, *, batch_size: int | None, n: int
) -> dict[str, Any]:
    """Check the sampler and its options; return the options as a dict."""
    if isinstance(sampler, str):
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler={sampler!r} is unknown; choose one of {sorted(SAMPLERS)}")
        factory = SAMPLERS[sampler]
    elif callable(sampler):
        factory = sampler
    else:
        raise TypeError(
            "sampler must be a name or a factory (loss_fn, posterior, **options) -> "
            f"SamplingKernel; got {type(sampler).__name__}"
        )
    if sampler_capabilities(sampler).full_batch and batch_size not in (None, n):
        raise ValueError(
            f"sampler={sampler!r} is full-batch (its kernel needs the exact density); "
            f"pass batch_size=None or batch_size={n}, not {batch_size}"
        )
    if options is None:
        return {}
    if isinstance(options, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in options):
        options = dict(options)  # SamplingConfig's hashable form of a Mapping
    if not isinstance(options, Mapping):
        raise TypeError(f"sampler_options must be a dict of keyword arguments; got {options!r}")
    if isinstance(sampler, str):
        try:
            inspect.signature(factory).bind_partial(None, **options)
        except TypeError as err:
            raise ValueError(
                f"sampler_options {dict(options)} do not fit sampler={sampler!r}: {err}; "
                f"its options are {inspect.signature(factory)!s}"
            ) from None
    for name, value in options.items():
        try:
            hash(value)
        except TypeError:
            raise TypeError(
                f"sampler_options[{name!r}] = {value!r} must be hashable (a number, string or "
                "tuple): it shapes the compiled program"
            ) from None
    if isinstance(sampler, str):
        check_sampler_option_values(sampler, options)
    return dict(options)


# what each named sampler's options must satisfy: (test, wording)
_OPTION_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "friction": (lambda v: v > 0, "> 0 (the momentum decay rate; e.g. 0.1)"),
    "alpha": (lambda v: v > 0, "> 0 (the friction; e.g. 0.01)"),
    "beta": (lambda v: v >= 0, ">= 0 (the gradient noise estimate; 0 is usual)"),
    "decay": (lambda v: 0 < v < 1, "in (0, 1) (e.g. 0.99)"),
    "eps": (lambda v: v > 0, "> 0 (e.g. 1.0)"),
    "temperature": (lambda v: v > 0, "> 0 (1 is the posterior)"),
    "adapt_steps": (lambda v: v >= 0, ">= 0 (e.g. num_burnin)"),
    "num_integration_steps": (lambda v: v >= 1, ">= 1"),
}


def check_sampler_option_values(sampler: str, options: Mapping[str, Any]) -> None:
    """Numeric ``sampler_options`` of a named sampler: finite, and in range where the range is
    known (e.g. sghmc's ``friction`` > 0), so that a bad value is named here rather than
    surfacing as "all chains diverged; lower step_size"."""
    for name, value in options.items():
        number = isinstance(value, (Real, np.number)) and not isinstance(value, bool)
        if not number and (value is None or name not in _OPTION_RULES):
            continue
        if not number:
            raise TypeError(
                f"sampler_options[{name!r}] of sampler={sampler!r} must be a number; got "
                f"{value!r} ({type(value).__name__})"
            )
        if not math.isfinite(float(value)):
            raise ValueError(
                f"sampler_options[{name!r}] of sampler={sampler!r} must be finite; got {value}"
            )
        rule = _OPTION_RULES.get(name)
        if rule is not None and not rule[0](float(value)):
            raise ValueError(
                f"sampler_options[{name!r}] of sampler={sampler!r} must be {rule[1]}; got {value}"
            )


def check_loss_fn(loss_fn: Callable, params: PyTree, data: PyTree, batch_size: int) -> None:
    """Trace ``loss_fn`` abstractly (``jax.eval_shape``: no compile, no compute) on one batch."""
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(params, batch); got {loss_fn!r}")
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct((batch_size, *x.shape[1:]), x.dtype), data)
    raw: list = []

    def traced(p, b):
        raw.append(out := loss_fn(p, b))
        return out

    try:
        out = jax.eval_shape(traced, params, batch)
    except Exception as err:
        raise ValueError(
            f"loss_fn(params, batch) failed with params {_shapes(params)} and a batch of "
            f"{_shapes(batch)}: {type(err).__name__}: {err}"
        ) from err
    if raw and isinstance(raw[0], (Real, np.generic, np.ndarray)):
        raise TypeError(
            f"loss_fn returned a {type(raw[0]).__name__} ({raw[0]!r}), not a JAX array: it "
            "must be computed with jax.numpy from params and batch so that SGLD can "
            "differentiate it (no float(), .item() or NumPy inside loss_fn)"
        )
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != ():
        got = _shapes(out) if jax.tree.leaves(out) else repr(out)
        raise ValueError(
            f"loss_fn must return a scalar (the mean loss over the batch); got {got}. "
            "Reduce with jnp.mean, and return auxiliary outputs separately"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"loss_fn must return a float scalar; got dtype {out.dtype}")
    try:
        jax.eval_shape(jax.grad(loss_fn), params, batch)
    except Exception as err:
        raise ValueError(
            f"loss_fn is not differentiable in params ({type(err).__name__}: {err}); "
            "SGLD needs jax.grad(loss_fn)"
        ) from err


# -- precision, dtypes and degenerate runs ----------------------------------------------------


def setting_dtype(params: PyTree) -> np.dtype:
    """The dtype ε, nβ and γ are used in: float64 when ``jax_enable_x64`` is on and some float
    leaf of ``params`` is float64 (the chains then run in float64), else float32."""
    dtypes = [np.dtype(x.dtype) for x in jax.tree.leaves(params) if hasattr(x, "dtype")]
    wide = any(d == np.float64 for d in dtypes)
    return np.dtype(np.float64 if wide and jax.config.jax_enable_x64 else np.float32)


def _in_dtype(name: str, value: Any, dtype: np.dtype, *, positive: bool, meaning: str) -> Any:
    exact = _real(name, value)
    cast = np.asarray(exact, dtype)
    info = np.finfo(dtype)
    if not np.isfinite(cast):
        raise ValueError(
            f"{name}={exact:g} overflows {dtype.name} (the dtype of the chains; largest "
            f"{info.max:.3g}); {meaning}"
        )
    if positive and exact > 0 and (cast == 0 or abs(exact) < info.tiny):
        raise ValueError(
            f"{name}={exact:g} underflows {dtype.name} (the dtype of the chains; smallest normal "
            f"{info.tiny:.3g}), so the chains would not move; {meaning}"
        )
    return jnp.asarray(cast)


def cast_settings(params: PyTree, *, step_size: Any, nbeta: Any, localization: Any) -> dict:
    """ε, nβ and γ as arrays of ``setting_dtype(params)``, each checked to be representable
    there (a value that is positive in float64 may be 0 or inf in float32)."""
    dtype = setting_dtype(params)
    return dict(
        step_size=_in_dtype("step_size", step_size, dtype, positive=True,
                            meaning="typical values are 1e-6 to 1e-3"),
        nbeta=_in_dtype("nbeta", nbeta, dtype, positive=True,
                        meaning="nβ is usually n/log n (the default, nbeta=None)"),
        localization=_in_dtype("localization", localization, dtype, positive=False,
                               meaning="typical values are 1 to 1e4"),
    )  # fmt: skip


def check_observables(observables: Any, observable_draws: Any) -> None:
    """``observables`` a bool; with it, ``observable_draws`` a positive int."""
    if not isinstance(observables, bool):
        raise TypeError(f"observables must be True or False; got {observables!r}")
    if observables:
        check_positive_int(
            "observable_draws", observable_draws, "the number of kept draws per chain at "
            "which to evaluate per-example losses on the full data"
        )  # fmt: skip


def check_compute_dtype(compute_dtype: Any) -> np.dtype | None:
    """``compute_dtype``: None or a floating dtype (``"bfloat16"``, ``jnp.float16``, ...)."""
    if compute_dtype is None:
        return None
    try:
        dtype = jnp.dtype(compute_dtype)
    except TypeError:
        raise TypeError(
            f"compute_dtype={compute_dtype!r} is not a dtype; use None, 'float32', 'bfloat16' "
            "or 'float16'"
        ) from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"compute_dtype={compute_dtype!r} is {dtype.name}, not a floating dtype; the loss "
            "is evaluated and differentiated in it: use None, 'float32', 'bfloat16' or 'float16'"
        )
    return dtype


MIN_DIAGNOSED_DRAWS = 4


def check_diagnostics(
    diagnostics: Any, *, num_draws: Any, num_chains: Any, progress: Any = None
) -> None:
    """``diagnostics`` must be a bool (``progress`` a bool or None); with too few draws or
    chains to diagnose, say so."""
    if not isinstance(diagnostics, (bool, np.bool_)):
        raise TypeError(f"diagnostics must be True or False; got {diagnostics!r}")
    if progress is not None and not isinstance(progress, (bool, np.bool_)):
        raise TypeError(
            f"progress must be True, False or None (a bar on a terminal only); got {progress!r}"
        )
    if not diagnostics or not isinstance(num_draws, Integral) or isinstance(num_draws, bool):
        return
    if num_draws < MIN_DIAGNOSED_DRAWS:
        warnings.warn(
            f"num_draws={num_draws}: too few draws per chain for the diagnostics (R-hat, ESS, "
            f"trend need at least {MIN_DIAGNOSED_DRAWS}), so result.diagnostics cannot vouch for "
            "the estimate; keep more draws",
            UserWarning,
            stacklevel=3,
        )
    elif isinstance(num_chains, Integral) and num_chains < 2:
        warnings.warn(
            "num_chains=1: R-hat and the spread llc_std need at least 2 chains; the diagnostics "
            "check one chain only",
            UserWarning,
            stacklevel=3,
        )


def check_checkpoint_steps(steps: Any, count: int) -> list[int]:
    """Training steps of ``count`` checkpoints: integers, one per checkpoint, no repeats."""
    try:
        values = list(steps)
    except TypeError:
        raise TypeError(f"steps must be a sequence of ints; got {steps!r}") from None
    for value in values:
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise TypeError(f"steps must be ints; got {value!r} ({type(value).__name__})")
    if len(values) != count:
        raise ValueError(f"steps has {len(values)} entries for {count} checkpoints")
    repeated = sorted({int(s) for s in values if values.count(s) > 1})
    if repeated:
        raise ValueError(
            f"steps {repeated} occur more than once; every checkpoint needs its own training "
            "step (the rows of the curve are keyed by it)"
        )
    return [int(s) for s in values]


def check_grid(name: str, values: Any, *, allow_zero: bool) -> list[float]:
    """A calibration list (``step_sizes``, ``localizations``, ``nbetas``): a non-empty sequence
    of finite numbers, each > 0 (>= 0 with ``allow_zero``)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple, np.ndarray)):
        raise TypeError(
            f"{name} must be a list of numbers, e.g. [1.0, 10.0, 100.0]; got {values!r} "
            f"({type(values).__name__})"
        )
    values = [_real(f"{name}[{i}]", v) for i, v in enumerate(np.asarray(values).tolist())]
    if not values:
        raise ValueError(f"{name} must be a non-empty list of numbers; got an empty one")
    bad = [v for v in values if v < 0 or (v == 0 and not allow_zero)]
    if bad:
        bound = "non-negative (>= 0)" if allow_zero else "positive (> 0)"
        raise ValueError(f"{name} must be {bound}; got {bad} in {values}")
    return values


def check_init_loss(init_loss: Any, where: str = "the checkpoint w*") -> None:
    """L_n(w*) must be finite: params and data were checked, so a NaN/inf here is the loss's."""
    value = float(np.asarray(init_loss))
    if not math.isfinite(value):
        raise FloatingPointError(
            f"the full-data loss L_n(w*) at {where} is {value} although params and data are "
            "finite: loss_fn itself is not finite there (a log of 0, a division by 0, an "
            "overflow); fix loss_fn. The step size is not the cause"
        )


def check_curvature(h_max: float) -> None:
    """The largest Hessian eigenvalue at w* (``calibrate``) must be finite: params and data
    were checked, so a NaN/inf here means the loss or its gradient is not finite at w*."""
    if not math.isfinite(h_max):
        raise FloatingPointError(
            f"the largest Hessian eigenvalue of the loss at w* is {h_max} although params and "
            "data are finite: loss_fn (or its gradient) is not finite at w* (a log of 0, a "
            "division by 0, sqrt at 0); fix loss_fn"
        )


def check_loss_scale(loss_fn: Callable, params: PyTree, data: PyTree) -> None:
    """A mean loss gives the same value on a batch and on that batch repeated twice; a sum
    gives twice as much. Raise when ``loss_fn`` scales with the batch size like a sum."""
    n = jax.tree.leaves(data)[0].shape[0]
    batch = jax.tree.map(lambda x: jnp.asarray(x[: min(n, 8)]), data)
    twice = jax.tree.map(lambda x: jnp.concatenate([x, x]), batch)
    try:
        once_value = float(jax.jit(loss_fn)(params, batch))
        twice_value = float(jax.jit(loss_fn)(params, twice))
    except Exception:  # a loss tied to one batch shape: the scale cannot be probed this way
        return
    if not (math.isfinite(once_value) and math.isfinite(twice_value)):
        return
    if abs(twice_value - once_value) <= 1e-3 * max(abs(once_value), abs(twice_value), 1e-30):
        return
    raise ValueError(
        f"loss_fn scales with the batch size: {once_value:.6g} on a batch of "
        f"{min(n, 8)} examples, {twice_value:.6g} on the same examples repeated twice. It must "
        "return the mean loss over the batch (jnp.mean), not the sum; nβ carries the scale n"
    )


def check_estimate(loss_fn: Callable, params: PyTree, data: PyTree, result: Any) -> None:
    """After a run, before any verdict on the step size: L_n(w*) finite, and when the estimate
    is impossible for an LLC (every chain diverged, λ̂ < 0 or λ̂ > d/2 with d parameters), a
    loss written as a sum instead of a mean is named as the cause."""
    check_init_loss(result.init_loss)
    llc = float(np.asarray(result.llc_mean))
    d = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    if np.asarray(result.diverged).all() or not (0 <= llc <= d / 2):
        check_loss_scale(loss_fn, params, data)


def check_checkpoints(steps: list[int], trees: list) -> None:
    """Every checkpoint of a trajectory checked like ``params`` (float, finite, non-empty),
    the error naming its training step."""
    for step, tree in zip(steps, trees, strict=True):
        try:
            check_params(tree)
        except (TypeError, ValueError) as err:
            raise type(err)(f"checkpoint at step {step}: {err}") from None
