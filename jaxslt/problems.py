"""Reference problems: everything ``estimate_llc`` needs, plus the exact answers.

Each builder returns a ``Problem``, a NamedTuple whose first four fields are unchanged:

- ``loss_fn(params, batch) -> scalar``: the mean loss L_n over the batch. It is a module-level
  function, or a cached one: the same settings give the *same* object, so a second
  ``estimate_llc`` call reuses the compiled program.
- ``params``: the point w* whose LLC is measured.
- ``data``: a pytree of arrays with a leading example axis of length n.
- ``truth``: the exact ``(llc, multiplicity)`` of ``jaxslt.truth`` at w*.
- ``nbeta``: the nβ the target assumes (``None``: the estimator's default n / log n).
- ``localization``: the γ the target assumes (and a sensible default for the problem).
- ``target``: the exact finite-nβ expected estimate E_p[λ̂] = nβ·(E_p[L_n] − L_n(w*)) under the
  exact localized tempered posterior p(w) ∝ exp(−nβ·L_n(w) − γ/2·||w − w*||²), where it can be
  computed exactly; ``None`` otherwise. This is what a perfect sampler returns at these (nβ, γ);
  ``truth`` is its nβ → ∞ (γ fixed) limit, approached slowly when m > 1.
- ``name``: a short description.

Pass ``nbeta=p.nbeta, localization=p.localization`` to ``estimate_llc`` when comparing with
``p.target``.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from numbers import Real
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxslt import truth as _truth
from jaxslt.truth import checked_int  # the same integer checks as the ground truths
from jaxslt.types import PyTree

__all__ = [
    "Problem",
    "deep_linear_network",
    "dln_forward",
    "dln_loss",
    "identity_block",
    "linear_regression_loss",
    "normal_crossing",
    "normal_crossing_target",
    "reduced_rank_regression",
    "regular_linear_gaussian",
    "tanh_loss",
    "tanh_one_hidden",
]


class Problem(NamedTuple):
    """A reference problem: everything ``estimate_llc`` needs, plus the exact answers.

    Attributes:
      loss_fn: ``loss_fn(params, batch) -> scalar``, the mean loss L_n over the batch; the
        same settings give the *same* function object, so a second ``estimate_llc`` call
        reuses the compiled program.
      params: the point w* whose LLC is measured.
      data: a pytree of arrays with a leading example axis of length n.
      truth: the exact ``(llc, multiplicity)`` of ``jaxslt.truth`` at w*.
      nbeta: the nβ the target assumes (``None``: the estimator's default n / log n).
      localization: the γ the target assumes (and a sensible default for the problem).
      target: the exact finite-nβ expected estimate E_p[λ̂] = nβ·(E_p[L_n] − L_n(w*)) under
        p(w) ∝ exp(−nβ·L_n(w) − γ/2·||w − w*||²), where it can be computed exactly; ``None``
        otherwise. ``truth`` is its nβ → ∞ (γ fixed) limit.
      name: a short description.
    """

    loss_fn: Callable[[PyTree, PyTree], jax.Array]
    params: PyTree
    data: PyTree
    truth: _truth.LearningCoefficient
    nbeta: float | None = None
    localization: float = 100.0
    target: float | None = None
    name: str = ""


# ---------------------------------------------------------------------------------------------
# argument checks


def _real(name: str, value: object, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real | np.floating | np.integer):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {out}")
    if positive and out <= 0:
        raise ValueError(f"{name} must be > 0, got {out}")
    if not positive and out < 0:
        raise ValueError(f"{name} must be >= 0, got {out}")
    return out


def _num_examples(num_examples: object) -> int:
    return checked_int("num_examples", num_examples, 2)  # n/log n needs n >= 2


# ---------------------------------------------------------------------------------------------
# deep linear networks and reduced-rank regression


def dln_forward(weights: Sequence[jax.Array], x: jax.Array) -> jax.Array:
    """f(x) = W_L ⋯ W_1 x for a batch of row vectors x (weights stored as (H_{l-1}, H_l)).

    Args:
      weights: (W_1, …, W_L), W_l of shape (H_{l−1}, H_l).
      x: (batch, H_0) inputs.

    Returns:
      (batch, H_L) outputs x W_1 ⋯ W_L.
    """
    for w in weights:
        x = x @ w
    return x


def _half_sq_error(y: jax.Array, f: jax.Array) -> jax.Array:
    return 0.5 * jnp.mean(jnp.sum(jnp.square(y - f), axis=-1))


def dln_loss(weights: Sequence[jax.Array], batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Mean over the batch of the Gaussian negative log-likelihood ½·||y − f(x)||² (σ = 1).

    Args:
      weights: (W_1, …, W_L), as for ``dln_forward``.
      batch: (x, y), shapes (batch, H_0) and (batch, H_L).

    Returns:
      The scalar mean loss.
    """
    x, y = batch
    return _half_sq_error(y, dln_forward(weights, x))


def identity_block(rows: int, cols: int, rank: int, dtype=jnp.float32) -> jax.Array:
    """The zero-padded identity block [[I_r, 0], [0, 0]] of shape (rows, cols).

    Args:
      rows: the number of rows.
      cols: the number of columns.
      rank: r, the size of the identity block.
      dtype (jax.typing.DTypeLike): the array's dtype.

    Returns:
      The (rows, cols) array.
    """
    return jnp.asarray(np.eye(rows, cols) * (np.arange(cols) < rank), dtype)


@functools.cache
def _flax_dln_classes():
    """The Linen and NNX deep linear networks (defined lazily: importing flax takes a while)."""
    import flax.linen as nn
    from flax import nnx

    class LinenDLN(nn.Module):
        """f(x) = x W_1 ⋯ W_L with bias-free ``nn.Dense`` layers ``layer_0``, ``layer_1``, …"""

        features: tuple[int, ...]

        @nn.compact
        def __call__(self, x):
            for i, f in enumerate(self.features):
                x = nn.Dense(f, use_bias=False, name=f"layer_{i}")(x)
            return x

    class NnxDLN(nnx.Module):
        """f(x) = x W_1 ⋯ W_L with bias-free ``nnx.Linear`` layers in ``self.layers``."""

        def __init__(self, widths: Sequence[int], param_dtype, rngs: nnx.Rngs):
            self.layers = getattr(nnx, "List", list)(  # nnx.List since flax 0.12
                [
                    nnx.Linear(a, b, use_bias=False, param_dtype=param_dtype, rngs=rngs)
                    for a, b in itertools.pairwise(widths)
                ]
            )

        def __call__(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    return LinenDLN, NnxDLN


@functools.cache
def _linen_dln(widths: tuple[int, ...]):
    """(module, loss_fn) for the Linen DLN; cached so equal widths give the same loss_fn."""
    module = _flax_dln_classes()[0](features=widths[1:])

    def linen_dln_loss(variables: PyTree, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        """½·||y − f(x)||² averaged over the batch, f = the Linen DLN applied with variables."""
        x, y = batch
        return _half_sq_error(y, module.apply(variables, x))

    return module, linen_dln_loss


@functools.cache
def _nnx_dln(widths: tuple[int, ...], dtype_name: str):
    """(graphdef, state treedef, loss_fn) for the NNX DLN; cached so equal settings give the
    same loss_fn."""
    from flax import nnx

    model = nnx.eval_shape(
        lambda: _flax_dln_classes()[1](widths, jnp.dtype(dtype_name), rngs=nnx.Rngs(0))
    )
    graphdef, state = nnx.split(model)  # abstract: nothing is initialised

    def nnx_dln_loss(state: PyTree, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        """½·||y − f(x)||² averaged over the batch, f = nnx.merge(graphdef, state)."""
        x, y = batch
        return _half_sq_error(y, nnx.merge(graphdef, state)(x))

    return graphdef, jax.tree.structure(state), nnx_dln_loss


def deep_linear_network(
    widths: Sequence[int],
    rank: int,
    *,
    key: jax.Array,
    num_examples: int = 10_000,
    noise: float = 0.0,
    dtype=jnp.float32,
    module: str | None = None,
    localization: float = 10.0,
) -> Problem:
    """A deep linear network teacher–student problem at a most-singular point.

    widths = (H_0 (input), …, H_L (output)). w* has every layer equal to the zero-padded
    identity block (w* = 0 when rank = 0), so the teacher map W_L⋯W_1 has rank ``rank``; inputs
    x ~ N(0, I), targets y = W*x + noise·ξ. The loss is the Gaussian NLL ½||y − f(x)||² averaged
    over examples, f(x) = W_L⋯W_1 x; L_n(w*) = 0 exactly when ``noise = 0``. The truth is
    Aoyagi's λ for (widths, rank) — the local λ at this point. With ``noise > 0``, w* is the
    teacher, not the empirical minimum (docs/method.md §7.1, caution). ``target`` is None (no
    closed form at finite nβ); ``nbeta`` None (n / log n); ``localization`` as given (default
    10, the demo's).

    ``module`` chooses how the same network and weights are represented:

    - ``None``: ``params`` is a tuple of (H_{l-1}, H_l) arrays and ``loss_fn`` is ``dln_loss``.
    - ``"linen"``: ``params`` are Flax Linen variables ``{"params": {"layer_i": {"kernel": W_i}}}``
      of bias-free ``nn.Dense`` layers; the loss calls ``module.apply``.
    - ``"nnx"``: ``params`` is the ``nnx.State`` of bias-free ``nnx.Linear`` layers; the loss
      calls ``nnx.merge(graphdef, state)``.

    All three give the same loss value at the same weights, and the same data and truth.

    Args:
      widths: H_0 (input), …, H_L (output).
      rank: the rank of the teacher map.
      key: a PRNG key for the data (and the teacher).
      num_examples: n.
      noise: the standard deviation of the target noise ξ.
      dtype (jax.typing.DTypeLike): the dtype of params and data.
      module: ``None``, ``"linen"`` or ``"nnx"`` (above).
      localization: the problem's γ.

    Returns:
      The ``Problem``.

    Raises:
      ValueError: bad widths, rank, sizes or ``module``.
      TypeError: arguments of the wrong type.
    """
    if module not in (None, "linen", "nnx"):
        raise ValueError(f"module must be None, 'linen' or 'nnx'; got {module!r}")
    lc = _truth.deep_linear_network(widths, rank)  # validates widths and rank
    widths = tuple(int(w) for w in widths)
    rank = int(rank)
    num_examples = _num_examples(num_examples)
    noise = _real("noise", noise)
    localization = _real("localization", localization)
    weights = tuple(identity_block(a, b, rank, dtype) for a, b in itertools.pairwise(widths))
    kx, kn = jax.random.split(key)
    x = jax.random.normal(kx, (num_examples, widths[0]), dtype)
    y = dln_forward(weights, x)
    if noise:
        y = y + noise * jax.random.normal(kn, (num_examples, widths[-1]), dtype)
    if module is None:
        loss_fn, params = dln_loss, weights
    elif module == "linen":
        _, loss_fn = _linen_dln(widths)
        params = {"params": {f"layer_{i}": {"kernel": w} for i, w in enumerate(weights)}}
    else:
        _, treedef, loss_fn = _nnx_dln(widths, jnp.dtype(dtype).name)
        params = jax.tree.unflatten(treedef, weights)  # one kernel per layer, in layer order
    label = "→".join(map(str, widths))
    name = f"deep linear network {label}, rank {rank}, n={num_examples}, noise={noise:g}"
    if module is not None:
        name += f" ({module})"
    return Problem(loss_fn, params, (x, y), lc, None, localization, None, name)


def reduced_rank_regression(
    M: int,
    H: int,
    N: int,
    rank: int,
    *,
    key: jax.Array,
    num_examples: int = 10_000,
    noise: float = 0.0,
    dtype=jnp.float32,
    module: str | None = None,
    localization: float = 10.0,
) -> Problem:
    """Reduced-rank regression y = B A x: the two-layer linear network with widths [M, H, N].

    A: H×M, B: N×H (stored as (M, H) and (H, N) row-vector weights as in ``dln_loss``); w* is
    the identity-block point (A, B zero-padded identities, rank ``rank``), x ~ N(0, I_M),
    y = BAx + noise·ξ, loss ½||y − BAx||² averaged over examples (L_n(w*) = 0 when noise = 0).
    truth = ``jaxslt.truth.reduced_rank_regression(M, H, N, rank)`` (Aoyagi & Watanabe 2005);
    target None. Every keyword means what it means in ``deep_linear_network``.

    Args:
      M: the input dimension.
      H: the hidden dimension.
      N: the output dimension.
      rank: the rank of the teacher BA.
      key: a PRNG key for the data (and the teacher).
      num_examples: n.
      noise: the standard deviation of the target noise ξ.
      dtype (jax.typing.DTypeLike): the dtype of params and data.
      module: ``None``, ``"linen"`` or ``"nnx"``, as in ``deep_linear_network``.
      localization: the problem's γ.

    Returns:
      The ``Problem``.

    Raises:
      ValueError: bad dimensions, rank, sizes or ``module``.
      TypeError: arguments of the wrong type.
    """
    lc = _truth.reduced_rank_regression(M, H, N, rank)  # validates
    p = deep_linear_network(
        [M, H, N],
        rank,
        key=key,
        num_examples=num_examples,
        noise=noise,
        dtype=dtype,
        module=module,
        localization=localization,
    )
    name = f"reduced-rank regression M={M}, H={H}, N={N}, rank {rank}, n={num_examples}"
    name += f", noise={noise:g}" + (f" ({module})" if module else "")
    return p._replace(truth=lc, name=name)


# ---------------------------------------------------------------------------------------------
# normal crossings


@functools.cache
def _normal_crossing_loss(k: tuple[int, ...]) -> Callable[[jax.Array, PyTree], jax.Array]:
    def normal_crossing_loss(w: jax.Array, batch: PyTree) -> jax.Array:
        """K(w) = Π_i w_i^(2 k_i); the batch is ignored."""
        del batch
        out = jnp.ones((), w.dtype)
        for i, ki in enumerate(k):
            if ki:
                out = out * jax.lax.integer_pow(w[i], 2 * ki)
        return out

    normal_crossing_loss.__qualname__ = f"normal_crossing_loss[k={k}]"
    return normal_crossing_loss


def normal_crossing_target(k: Sequence[int], *, t: float, localization: float = 1.0) -> float:
    """Exact E_p[t·K] for K(w) = Π_i w_i^(2 k_i) and p(w) ∝ exp(−t·K(w) − γ/2·||w||²).

    Coordinates with k_i = 0 do not enter K and factor out exactly, so the integral is 1-D or
    2-D over the coordinates with k_i > 0 (more than two raise ValueError). With one such
    coordinate γ may be 0, and then E[tK] = 1/(2k) for every t; with two, γ must be > 0 (K
    vanishes on both axes and exp(−tK) alone is not integrable).

    Method: write |w_i| = e^(u_i) (the integrand is even in each w_i) and apply the trapezoid
    rule in u on a uniform grid of step 0.1/max k, from the point beyond which the Gaussian (in
    1-D also exp(−tK)) is below e^(−50) down 50 + max(0, log t)/(2 min k) units. In u the
    integrand is smooth (analytic in a strip) and decays doubly exponentially on one side and
    like e^(u) on the other, so the trapezoid rule converges geometrically and the mass near the
    axes, which grows with t, is resolved at every t. Halving the step or widening the range
    changes the result by ~1e−16 relative; it matches the closed forms (one k: 1/(2k) at γ = 0,
    and t/(2t + γ) for k = 1) and independent adaptive quadrature (scipy.integrate.quad, nested;
    for k = (1, 1) with the inner Gaussian integral done analytically) to ~1e−15 relative, and
    reproduces the table of docs/method.md §7.2. Cost: milliseconds.

    Args:
      k: the exponents k_i ≥ 0; one or two positive.
      t: nβ > 0.
      localization: γ ≥ 0 (> 0 with two positive k_i).

    Returns:
      E_p[t·K], a float.

    Raises:
      ValueError: more than two positive k_i, or γ = 0 with two.

    Examples:
      For k = (1,) the closed form is t/(2t + γ): 10/21 at t = 10, γ = 1.

      >>> from jaxslt.problems import normal_crossing_target
      >>> round(normal_crossing_target([1], t=10.0, localization=1.0), 6) == round(10 / 21, 6)
      True
    """
    _truth.normal_crossing(k)  # validates k
    ks = [int(v) for v in k if v > 0]
    t = _real("t", t, positive=True)
    gamma = _real("localization", localization)
    if len(ks) > 2:
        raise ValueError(
            f"normal_crossing_target supports at most two positive exponents k_i; got k={list(k)}"
        )
    if len(ks) == 2 and gamma == 0:
        raise ValueError(
            "localization must be > 0 with two positive exponents k_i: K vanishes on the axes, "
            "so exp(−tK) alone is not integrable"
        )
    logt = math.log(t)
    h = 0.1 / max(ks)
    cutoff = 50.0
    # top of the grid: beyond it the Gaussian (or, in 1-D, exp(−tK)) is below e^(−50)
    tops = [0.5 * math.log(2 * cutoff / gamma)] if gamma > 0 else []
    if len(ks) == 1:
        tops.append((math.log(cutoff) - logt) / (2 * ks[0]))
    top = min(tops)
    bottom = top - cutoff - max(0.0, logt) / (2 * min(ks))
    u = np.arange(top, bottom - h / 2, -h)[::-1]
    log_weight = u - 0.5 * gamma * np.exp(2 * u)  # log(Jacobian e^u · Gaussian) per coordinate
    with np.errstate(over="ignore"):
        if len(ks) == 1:
            log_tk = logt + 2 * ks[0] * u
            log_mass = log_weight - np.exp(log_tk)
            shift = log_mass.max()
            den = np.sum(np.exp(log_mass - shift))
            num = np.sum(np.exp(log_mass + log_tk - shift))
            return float(num / den)
        k1, k2 = ks
        shift = 2 * log_weight.max()
        num = den = 0.0
        rows = max(1, (1 << 20) // u.size)
        for s in range(0, u.size, rows):
            u1 = u[s : s + rows, None]
            log_tk = logt + 2 * k1 * u1 + 2 * k2 * u[None, :]
            log_mass = log_weight[s : s + rows, None] + log_weight[None, :] - np.exp(log_tk)
            den += float(np.sum(np.exp(log_mass - shift)))
            num += float(np.sum(np.exp(log_mass + log_tk - shift)))
        return num / den


def normal_crossing(
    k: Sequence[int], *, t: float, localization: float = 1.0, dtype=jnp.float32
) -> Problem:
    """The normal crossing K(w) = Π_i w_i^(2 k_i) at w* = 0, with nβ = t.

    The loss is K itself (the data, a dummy (2, 1) array of zeros, is ignored), so L_n(w*) = 0
    exactly and λ̂ = t·E[K]. truth = ``jaxslt.truth.normal_crossing(k)``: λ = min_i 1/(2k_i),
    m = the number of minimisers. target = E_p[t·K] under p(w) ∝ exp(−t·K(w) − γ/2·||w||²) by
    ``normal_crossing_target`` (relative error ~1e−15); None with more than two positive k_i.
    With γ = 0 the target exists only for one positive k_i, and is then exactly 1/(2k).
    ``nbeta`` = t, ``localization`` = γ (default 1, as in docs/method.md §7.2).

    Args:
      k: the exponents k_i ≥ 0, at least one positive.
      t: nβ > 0.
      localization: γ ≥ 0 (> 0 with two or more positive k_i).
      dtype (jax.typing.DTypeLike): the dtype of params and data.

    Returns:
      The ``Problem``.

    Raises:
      ValueError: bad exponents, t ≤ 0, or γ = 0 with two or more positive k_i.
      TypeError: arguments of the wrong type.
    """
    lc = _truth.normal_crossing(k)  # validates k
    ks = tuple(int(v) for v in k)
    t = _real("t", t, positive=True)
    localization = _real("localization", localization)
    positive = sum(v > 0 for v in ks)
    if positive >= 2 and localization == 0:
        raise ValueError(
            "localization must be > 0 with two or more positive exponents k_i: the posterior "
            "exp(−tK) is not normalisable (K vanishes on whole axes)"
        )
    target = normal_crossing_target(ks, t=t, localization=localization) if positive <= 2 else None
    params = jnp.zeros(len(ks), dtype)
    data = jnp.zeros((2, 1), dtype)
    name = f"normal crossing k={ks}, t={t:g}, γ={localization:g}"
    return Problem(_normal_crossing_loss(ks), params, data, lc, t, localization, target, name)


# ---------------------------------------------------------------------------------------------
# a regular model


def linear_regression_loss(w: jax.Array, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    """½·mean over the batch of (y − x·w)².

    Args:
      w: (d,) weights.
      batch: (x, y), shapes (batch, d) and (batch,).

    Returns:
      The scalar mean loss.
    """
    x, y = batch
    return 0.5 * jnp.mean(jnp.square(y - x @ w))


def regular_linear_gaussian(
    d: int,
    *,
    key: jax.Array,
    num_examples: int = 1000,
    noise: float = 1.0,
    localization: float = 1.0,
    dtype=jnp.float32,
) -> Problem:
    """Linear regression, a regular model: λ = d/2 exactly, and an exact finite-nβ target.

    x ~ N(0, Σ) with Σ = diag(4^s), s evenly spaced in [−1, 1] (variances 1/4 … 4; Σ = 1 when
    d = 1), a teacher w₀ ~ N(0, I_d), y = x·w₀ + noise·ξ. Loss L_n(w) = ½·mean (y − x·w)²,
    exactly quadratic: L_n(w) = L_n(w*) + ½ (w − w*)ᵀ H (w − w*) with H = XᵀX/n.
    w* = the least-squares solution (the MLE, computed in float64, then cast to ``dtype``).
    truth = ``jaxslt.truth.regular(d)``. With nβ = n/log n and the isotropic localizer the
    posterior is Gaussian, so target = Σ_i nβ h_i / (2(nβ h_i + γ)) exactly
    (``jaxslt.truth.quadratic_posterior``), h_i the eigenvalues of H; → d/2 as γ → 0.

    Args:
      d: the number of parameters.
      key: a PRNG key for the data (and the teacher).
      num_examples: n (at least d).
      noise: the standard deviation of the target noise ξ.
      localization: the problem's γ.
      dtype (jax.typing.DTypeLike): the dtype of params and data.

    Returns:
      The ``Problem``, with ``nbeta`` = n/log n and the exact ``target``.

    Raises:
      ValueError: d < 1, n < d, bad settings or a singular design.
      TypeError: arguments of the wrong type.

    Examples:
      >>> import jax
      >>> from jaxslt import problems
      >>> p = problems.regular_linear_gaussian(2, key=jax.random.key(0), num_examples=256)
      >>> p.truth
      LearningCoefficient(llc=Fraction(1, 1), multiplicity=1)
      >>> p.params.shape, p.loss_fn is problems.linear_regression_loss
      ((2,), True)
      >>> bool(0 < p.target < p.truth.llc)  # γ > 0 pulls the finite-nβ target below d/2
      True
    """
    d = checked_int("d", d, 1)
    lc = _truth.regular(d)
    n = _num_examples(num_examples)
    if n < d:
        raise ValueError(f"num_examples={n} < d={d}: the least-squares solution is not unique")
    noise = _real("noise", noise)
    localization = _real("localization", localization)
    kx, kw, kn = jax.random.split(key, 3)
    scale = jnp.asarray(2.0 ** np.linspace(-1, 1, d) if d > 1 else [1.0], dtype)
    x = jax.random.normal(kx, (n, d), dtype) * scale
    w0 = jax.random.normal(kw, (d,), dtype)
    y = x @ w0 + noise * jax.random.normal(kn, (n,), dtype)
    x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
    hessian = x64.T @ x64 / n
    eigs = np.linalg.eigvalsh(hessian)
    if eigs.min() <= 1e-10 * eigs.max():
        raise ValueError("the design matrix is (numerically) singular: use more examples")
    w_star = np.linalg.solve(hessian, x64.T @ y64 / n)
    nbeta = n / math.log(n)
    target = _truth.quadratic_posterior(eigs, nbeta=nbeta, localization=localization)
    name = f"regular linear regression d={d}, n={n}, noise={noise:g}"
    return Problem(
        linear_regression_loss,
        jnp.asarray(w_star, dtype),
        (x, y),
        lc,
        nbeta,
        localization,
        target,
        name,
    )


# ---------------------------------------------------------------------------------------------
# one-hidden-layer tanh network


def tanh_loss(params: dict[str, jax.Array], batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    """½·mean over the batch of (y − Σ_j a_j tanh(b_j x))², x and y scalars.

    Args:
      params: ``{"a": (H,), "b": (H,)}``.
      batch: (x, y), shapes (batch,) and (batch,).

    Returns:
      The scalar mean loss.
    """
    x, y = batch
    f = jnp.tanh(x[:, None] * params["b"]) @ params["a"]
    return 0.5 * jnp.mean(jnp.square(y - f))


def tanh_one_hidden(
    H: int,
    *,
    key: jax.Array,
    num_examples: int = 10_000,
    localization: float = 10.0,
    dtype=jnp.float32,
) -> Problem:
    """One-hidden-layer tanh network f(x) = Σ_{j≤H} a_j tanh(b_j x) with true function f = 0.

    x ~ U[−1, 1], y = 0 (noise-free), loss ½·mean (y − f(x))², w* = 0: ``params`` =
    {"a": zeros(H), "b": zeros(H)}, so L_n(w*) = 0 exactly. truth =
    ``jaxslt.truth.tanh_one_hidden(H)``: λ = (H + k² + k)/(4k + 2), k = ⌊√H⌋ (Watanabe 2009).
    target None; ``nbeta`` None (n / log n); ``localization`` as given (default 10).

    Args:
      H: the number of hidden units.
      key: a PRNG key for the inputs.
      num_examples: n.
      localization: the problem's γ.
      dtype (jax.typing.DTypeLike): the dtype of params and data.

    Returns:
      The ``Problem``.

    Raises:
      ValueError: H < 1 or bad settings.
      TypeError: arguments of the wrong type.
    """
    lc = _truth.tanh_one_hidden(H)  # validates H
    H = int(H)
    n = _num_examples(num_examples)
    localization = _real("localization", localization)
    x = jax.random.uniform(key, (n,), dtype, minval=-1.0, maxval=1.0)
    y = jnp.zeros((n,), dtype)
    params = {"a": jnp.zeros((H,), dtype), "b": jnp.zeros((H,), dtype)}
    name = f"tanh network, {H} hidden units, true f = 0, n={n}"
    return Problem(tanh_loss, params, (x, y), lc, None, localization, None, name)
