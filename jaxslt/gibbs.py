"""Exact block-Gibbs sampling of the localized tempered posterior of a deep linear network.

The posterior is the one SGLD targets in ``jaxslt.estimator``,

    p(W) ∝ exp( −nβ·L_n(W) − (γ/2)·Σ_l ||W_l − W*_l||²_F ),
    L_n(W) = (1/n) Σ_i ½||y_i − x_i W_1 W_2 ⋯ W_L||²,

with the row-vector convention of ``jaxslt.problems`` (W_l of shape (H_{l−1}, H_l)). Given the
other layers, L_n is quadratic in W_l: with P = W_1⋯W_{l−1}, Q = W_{l+1}⋯W_L (identity at the
ends) and the sufficient statistics Σxx = XᵀX/n, Σxy = XᵀY/n, syy = tr(YᵀY)/n,

    L_n = ½[ syy − 2⟨W_l, PᵀΣxyQᵀ⟩ + ⟨W_l, A W_l B⟩ ],   A = PᵀΣxxP,  B = QQᵀ,

so the conditional of W_l is Gaussian with precision nβ·A ⊗ B + γ·I (row-major vec) and mean M
solving nβ·A M B + γ·M = nβ·PᵀΣxyQᵀ + γ·W*_l. With A = U diag(α) Uᵀ and B = V diag(b) Vᵀ
(``eigh``), the precision is diagonal in the product eigenbasis, p_ij = nβ·α_i b_j + γ, and

    W_l = U ( (Uᵀ R V)/p + Z/√p ) Vᵀ,   R = nβ·PᵀΣxyQᵀ + γ·W*_l,  Z ~ N(0, I)

is an exact draw: O(H³) per layer, the Kronecker matrix is never formed. A sweep updates the
layers in order 1..L. The data enter only through (Σxx, Σxy, syy, n), so each sweep costs the
same for n = 10² or 10⁷.

``gibbs_llc`` runs vmapped chains of sweeps (``lax.scan``) from W* and returns

    λ̂_c = nβ · mean_t ( L_n(W_t^c) − L_n(W*) )    over the kept sweeps t of chain c,

with the *exact* full-data loss (no minibatch noise), so its bias is only the finite chain
length: it is the finite-(nβ, γ) target against which SGLD's discretisation bias can be measured.
The excess L_n(W) − L_n(W*) is evaluated in the difference form
⟨D, Σxx F* − Σxy⟩ + ½⟨D, Σxx D⟩ with D = F − F*, F = W_1⋯W_L, never as the difference of two
losses (which in float32 would lose the O(1/nβ) excess against L_n(W*) ≈ σ²/2).

Precision: use float64 for reference runs (``with jax.enable_x64(True):`` and float64 inputs).
In float32 a wide network at small γ can blow up within a few sweeps (seen on
[50,40,30,40,50], rank 10, γ = 1, nβ ≈ 8.7e3: losses 1e9 → NaN at sweep 2; float64 is fine).
Everything runs in float64 when ``jax_enable_x64`` is on and in float32 otherwise
(matmuls at ``Precision.HIGHEST``, so no TF32 on GPUs). Eigenvalues are clamped at 0; in float32
they carry an absolute error ~1e−7·||A||, i.e. a relative error ~1e−7·nβ·||A||·||B||/γ in the
smallest conditional precision (≲1e−3 for nβ ~ 1e4, γ ≥ 1 and O(1) weights).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxslt.posterior import default_nbeta, running_llc

__all__ = [
    "DLNStatistics",
    "GibbsResult",
    "LayerConditional",
    "dln_excess_loss",
    "dln_loss_from_statistics",
    "dln_statistics",
    "gibbs_llc",
    "gibbs_llc_from_statistics",
    "gibbs_sweep",
    "layer_conditional",
]

Weights = Sequence[jax.Array]
_HI = jax.lax.Precision.HIGHEST


def _mm(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(a, b, precision=_HI)


def _float_dtype(*arrays) -> jnp.dtype:
    """float64 under jax_enable_x64, else float32 (never narrower than float32)."""
    default = jax.dtypes.canonicalize_dtype(jnp.float64)
    return jnp.promote_types(jnp.result_type(*arrays), default) if arrays else default


class DLNStatistics(NamedTuple):
    """Sufficient statistics of the squared loss ½·mean ||y − f(x)||².

    Attributes:
      sxx: Σxx = XᵀX/n, shape (H_0, H_0).
      sxy: Σxy = XᵀY/n, shape (H_0, H_L).
      syy: tr(YᵀY)/n, a scalar.
      n: the number of examples (integer scalar).
    """

    sxx: jax.Array
    sxy: jax.Array
    syy: jax.Array
    n: jax.Array


def dln_statistics(x: jax.Array, y: jax.Array, *, chunk_size: int | None = None) -> DLNStatistics:
    """Σxx, Σxy, syy and n of the data (x: (n, H_0), y: (n, H_L)); traceable.

    Computed in float64 under x64, else float32.

    Args:
      x: (n, H_0) inputs.
      y: (n, H_L) targets.
      chunk_size: accumulate the sums over chunks of that many examples (zero-padded, which
        adds nothing) instead of one product over all n.

    Returns:
      The ``DLNStatistics``.

    Raises:
      ValueError: x and y have different numbers of examples.
    """
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"x and y must have the same number of examples, got {n} and {y.shape[0]}")
    dtype = _float_dtype(x, y)
    x, y = x.astype(dtype), y.astype(dtype)

    def sums(xb, yb):
        return _mm(xb.T, xb), _mm(xb.T, yb), jnp.sum(jnp.square(yb))

    if chunk_size is None or chunk_size >= n:
        sxx, sxy, syy = sums(x, y)
    else:
        chunks = -(-n // chunk_size)
        pad = chunks * chunk_size - n
        xc = jnp.pad(x, ((0, pad), (0, 0))).reshape(chunks, chunk_size, -1)
        yc = jnp.pad(y, ((0, pad), (0, 0))).reshape(chunks, chunk_size, -1)

        def body(acc, batch):
            return jax.tree.map(jnp.add, acc, sums(*batch)), None

        zero = (
            jnp.zeros((x.shape[1], x.shape[1]), dtype),
            jnp.zeros((x.shape[1], y.shape[1]), dtype),
            jnp.zeros((), dtype),
        )
        (sxx, sxy, syy), _ = jax.lax.scan(body, zero, (xc, yc))
    sxx = 0.5 * (sxx + sxx.T)
    return DLNStatistics(sxx / n, sxy / n, syy / n, jnp.asarray(n))


def _product(weights: Weights) -> jax.Array:
    out = weights[0]
    for w in weights[1:]:
        out = _mm(out, w)
    return out


def dln_loss_from_statistics(weights: Weights, stats: DLNStatistics) -> jax.Array:
    """L_n(W) = ½[syy − 2⟨F, Σxy⟩ + ⟨F, Σxx F⟩], F = W_1⋯W_L: equals ``problems.dln_loss`` on
    the full data up to float error (absolute error ~eps·syy: use ``dln_excess_loss`` for
    differences).

    Args:
      weights: (W_1, …, W_L), W_l of shape (H_{l−1}, H_l).
      stats: the data's ``DLNStatistics``.

    Returns:
      L_n(W), a scalar.
    """
    dtype = _float_dtype(stats.sxx, *weights)
    f = _product([w.astype(dtype) for w in weights])
    sxx, sxy = stats.sxx.astype(dtype), stats.sxy.astype(dtype)
    return 0.5 * (stats.syy.astype(dtype) - 2 * jnp.sum(f * sxy) + jnp.sum(f * _mm(sxx, f)))


def dln_excess_loss(weights: Weights, center: Weights, stats: DLNStatistics) -> jax.Array:
    """L_n(W) − L_n(W*) in a cancellation-free form: ⟨D, Σxx F* − Σxy⟩ + ½⟨D, Σxx D⟩ with
    D = F − F*, F = W_1⋯W_L, F* = W*_1⋯W*_L.

    Args:
      weights: (W_1, …, W_L), W_l of shape (H_{l−1}, H_l).
      center: W* = (W*_1, …, W*_L).
      stats: the data's ``DLNStatistics``.

    Returns:
      L_n(W) − L_n(W*), a scalar.
    """
    dtype = _float_dtype(stats.sxx, *weights, *center)
    fstar = _product([w.astype(dtype) for w in center])
    sxx = stats.sxx.astype(dtype)
    gstar = _mm(sxx, fstar) - stats.sxy.astype(dtype)
    return _excess(_product([w.astype(dtype) for w in weights]), fstar, gstar, sxx)


def _excess(f, fstar, gstar, sxx):
    d = f - fstar
    return jnp.sum(d * (gstar + 0.5 * _mm(sxx, d)))


def _eig(m: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(eigenvalues clamped at 0, eigenvectors) of the symmetric PSD matrix m."""
    vals, vecs = jnp.linalg.eigh(0.5 * (m + m.T))
    return jnp.maximum(vals, 0.0), vecs


class LayerConditional(NamedTuple):
    """The Gaussian conditional of one layer W_l (shape (a, b)) given the others.

    Precision nβ·A ⊗ B + γ·I on row-major vec(W_l), with A = U diag(α) Uᵀ and
    B = V diag(b) Vᵀ.

    Attributes:
      mean: the conditional mean, shape (a, b).
      row_eigvals: α, the eigenvalues of A.
      row_eigvecs: U, the eigenvectors of A.
      col_eigvals: b, the eigenvalues of B.
      col_eigvecs: V, the eigenvectors of B.
      nbeta: nβ.
      localization: γ.
    """

    mean: jax.Array
    row_eigvals: jax.Array
    row_eigvecs: jax.Array
    col_eigvals: jax.Array
    col_eigvecs: jax.Array
    nbeta: jax.Array
    localization: jax.Array

    def precision_eigvals(self) -> jax.Array:
        """p_ij = nβ·α_i b_j + γ, the precision's eigenvalues on the basis u_i v_jᵀ, (a, b)."""
        return self.nbeta * self.row_eigvals[:, None] * self.col_eigvals[None, :] + (
            self.localization
        )

    def dense_precision(self) -> jax.Array:
        """The (ab, ab) precision matrix on row-major vec(W_l). For tiny layers and tests only."""
        basis = jnp.kron(self.row_eigvecs, self.col_eigvecs)
        return _mm(basis * self.precision_eigvals().reshape(-1), basis.T)

    def sample(self, key: jax.Array) -> jax.Array:
        """One exact draw: mean + U (Z/√p) Vᵀ."""
        p = self.precision_eigvals()
        z = jax.random.normal(key, p.shape, p.dtype) / jnp.sqrt(p)
        return self.mean + _mm(_mm(self.row_eigvecs, z), self.col_eigvecs.T)


def _rotate_solve(key, row, col, rhs, nbeta, gamma):
    """U ((Uᵀ R V)/p [+ Z/√p]) Vᵀ; ``col=None`` means B = I. Returns (draw or mean)."""
    alpha, u = row
    if col is None:
        bvals = jnp.ones((rhs.shape[1],), rhs.dtype)
        rt = _mm(u.T, rhs)
    else:
        bvals, v = col
        rt = _mm(_mm(u.T, rhs), v)
    p = nbeta * alpha[:, None] * bvals[None, :] + gamma
    mt = rt / p
    if key is not None:
        mt = mt + jax.random.normal(key, p.shape, p.dtype) / jnp.sqrt(p)
    out = _mm(u, mt)
    return out if col is None else _mm(out, v.T)


def _suffix_products(weights: Weights) -> list[jax.Array | None]:
    """Q_l = W_{l+1}⋯W_L for l = 0..L−1 (0-based); ``None`` stands for the identity (l = L−1)."""
    qs: list[jax.Array | None] = [None] * len(weights)
    for i in range(len(weights) - 2, -1, -1):
        nxt = qs[i + 1]
        qs[i] = weights[i + 1] if nxt is None else _mm(weights[i + 1], nxt)
    return qs


def _cast(weights, stats, center, nbeta, localization):
    dtype = _float_dtype(stats.sxx, stats.sxy, *weights, *center)
    weights = tuple(w.astype(dtype) for w in weights)
    center = tuple(w.astype(dtype) for w in center)
    stats = DLNStatistics(
        stats.sxx.astype(dtype), stats.sxy.astype(dtype), stats.syy.astype(dtype), stats.n
    )
    return weights, stats, center, jnp.asarray(nbeta, dtype), jnp.asarray(localization, dtype)


def block_sweep(key, weights, stats, center, nbeta, gamma, sxx_eig=None, noise=True):
    """One sweep over layers 1..L (in the working dtype). ``noise=False`` replaces each draw by
    the conditional mean (a deterministic check of the sweep's bookkeeping)."""
    num = len(weights)
    keys = jax.random.split(key, num) if noise else [None] * num
    qs = _suffix_products(weights)  # layers after l are still the old ones when l is updated
    a_mat, g_mat = stats.sxx, stats.sxy  # A = PᵀΣxxP and G = PᵀΣxy, propagated forward
    new = list(weights)
    for i in range(num):
        q = qs[i]
        row = sxx_eig if (i == 0 and sxx_eig is not None) else _eig(a_mat)
        if q is None:
            col, c = None, g_mat
        else:
            col, c = _eig(_mm(q, q.T)), _mm(g_mat, q.T)
        rhs = nbeta * c + gamma * center[i]
        w = _rotate_solve(keys[i], row, col, rhs, nbeta, gamma)
        new[i] = w
        if i + 1 < num:
            a_mat = _mm(_mm(w.T, a_mat), w)
            g_mat = _mm(w.T, g_mat)
    return tuple(new)


def gibbs_sweep(
    key: jax.Array,
    weights: Weights,
    stats: DLNStatistics,
    center: Weights,
    *,
    nbeta: float | jax.Array,
    localization: float | jax.Array,
) -> tuple[jax.Array, ...]:
    """One block-Gibbs sweep: draw W_1 | rest, then W_2 | rest, …, W_L | rest, each exactly.

    ``center`` = W* (the localizer's centre); ``localization`` = γ must be > 0 unless every
    conditional precision nβ·A ⊗ B is non-singular. Traceable. The key is split into one key
    per layer.

    Args:
      key: a PRNG key.
      weights: (W_1, …, W_L), W_l of shape (H_{l−1}, H_l).
      stats: the data's ``DLNStatistics``.
      center: W*, the localizer's centre.
      nbeta: nβ.
      localization: γ.

    Returns:
      The new weights, in the working dtype (float64 under x64, else float32).
    """
    w, s, c, nb, g = _cast(weights, stats, center, nbeta, localization)
    return block_sweep(key, w, s, c, nb, g)


def layer_conditional(
    weights: Weights,
    stats: DLNStatistics,
    center: Weights,
    layer: int,
    *,
    nbeta: float | jax.Array,
    localization: float | jax.Array,
) -> LayerConditional:
    """The Gaussian conditional of ``weights[layer]`` (0-based) given the other layers.

    Args:
      weights: (W_1, …, W_L), W_l of shape (H_{l−1}, H_l).
      stats: the data's ``DLNStatistics``.
      center: W*, the localizer's centre.
      layer: which layer, 0-based.
      nbeta: nβ.
      localization: γ.

    Returns:
      The ``LayerConditional``.
    """
    w, s, c, nb, g = _cast(weights, stats, center, nbeta, localization)
    a_mat, g_mat = s.sxx, s.sxy
    for wi in w[:layer]:
        a_mat, g_mat = _mm(_mm(wi.T, a_mat), wi), _mm(wi.T, g_mat)
    q = _suffix_products(w)[layer]
    if q is None:
        q = jnp.eye(w[-1].shape[1], dtype=a_mat.dtype)
    alpha, u = _eig(a_mat)
    bvals, v = _eig(_mm(q, q.T))
    mean = _rotate_solve(None, (alpha, u), (bvals, v), nb * _mm(g_mat, q.T) + g * c[layer], nb, g)
    return LayerConditional(mean, alpha, u, bvals, v, nb, g)


class GibbsResult(NamedTuple):
    """An exact-sampler LLC estimate (a pytree of arrays).

    λ̂_c is computed from the cancellation-free excess L_n(W_t) − L_n(W*), not by subtracting
    ``init_loss`` from ``loss_trace``.

    Attributes:
      llc_mean: the mean of λ̂_c over chains.
      llc_std: the std of λ̂_c across chains (ddof=1; NaN with one chain).
      llc_per_chain: λ̂_c, shape (num_chains,).
      loss_trace: (num_chains, num_sweeps) the exact full-data L_n(W_t) after each kept sweep.
      burnin_loss_trace: (num_chains, num_burnin) the same during burn-in.
      init_loss: L_n(W*).
      nbeta: nβ.
      localization: γ.
    """

    llc_mean: jax.Array
    llc_std: jax.Array
    llc_per_chain: jax.Array
    loss_trace: jax.Array
    burnin_loss_trace: jax.Array
    init_loss: jax.Array
    nbeta: jax.Array
    localization: jax.Array

    def running_llc(self) -> jax.Array:
        """nβ·(cumsum_t L_n(W_t)/t − L_n(W*)) per chain, shape (num_chains, num_sweeps)."""
        return running_llc(self.loss_trace, self.init_loss, self.nbeta)


def _check(weights_star, num_chains, num_sweeps, num_burnin, localization, h0=None, hl=None):
    if len(weights_star) < 1:
        raise ValueError("weights_star must hold at least one matrix")
    for i, w in enumerate(weights_star):
        if jnp.ndim(w) != 2:
            raise ValueError(f"weights_star[{i}] must be a matrix, got shape {jnp.shape(w)}")
    for i in range(len(weights_star) - 1):
        if weights_star[i].shape[1] != weights_star[i + 1].shape[0]:
            raise ValueError(
                f"weights_star[{i}] has shape {weights_star[i].shape} but weights_star[{i + 1}] "
                f"has shape {weights_star[i + 1].shape}: W_l must be (H_(l-1), H_l)"
            )
    if h0 is not None and h0 != weights_star[0].shape[0]:
        raise ValueError(f"inputs have {h0} features but W_1 has {weights_star[0].shape[0]} rows")
    if hl is not None and hl != weights_star[-1].shape[1]:
        raise ValueError(f"targets have {hl} outputs but W_L has {weights_star[-1].shape[1]} cols")
    for name, value, low in (
        ("num_chains", num_chains, 1),
        ("num_sweeps", num_sweeps, 1),
        ("num_burnin", num_burnin, 0),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if isinstance(localization, int | float) and not localization > 0:
        raise ValueError(
            f"localization must be > 0, got {localization}: without it the DLN posterior is "
            "improper (rescaling symmetries) and flat conditional directions have no precision"
        )


@functools.partial(jax.jit, static_argnames=("num_chains", "num_sweeps", "num_burnin"))
def _gibbs_llc_core(
    weights_star, stats, key, nbeta, localization, *, num_chains, num_sweeps, num_burnin
):
    ws, stats, _, nbeta, gamma = _cast(weights_star, stats, weights_star, nbeta, localization)
    sxx_eig = _eig(stats.sxx)
    fstar = _product(ws)
    gstar = _mm(stats.sxx, fstar) - stats.sxy
    init_loss = dln_loss_from_statistics(ws, stats)

    def chain(chain_key):
        def step(w, k):
            w = block_sweep(k, w, stats, ws, nbeta, gamma, sxx_eig)
            return w, _excess(_product(w), fstar, gstar, stats.sxx)

        _, trace = jax.lax.scan(step, ws, jax.random.split(chain_key, num_burnin + num_sweeps))
        return trace

    excess = jax.vmap(chain)(jax.random.split(key, num_chains))
    kept = excess[:, num_burnin:]
    per_chain = nbeta * jnp.mean(kept, axis=1)
    mean = jnp.mean(per_chain)
    std = jnp.std(per_chain, ddof=1) if num_chains > 1 else jnp.full((), jnp.nan, mean.dtype)
    return GibbsResult(
        llc_mean=mean,
        llc_std=std,
        llc_per_chain=per_chain,
        loss_trace=init_loss + kept,
        burnin_loss_trace=init_loss + excess[:, :num_burnin],
        init_loss=init_loss,
        nbeta=nbeta,
        localization=gamma,
    )


def gibbs_llc_from_statistics(
    weights_star: Weights,
    stats: DLNStatistics,
    *,
    key: jax.Array,
    nbeta: float | jax.Array | None = None,
    localization: float | jax.Array = 100.0,
    num_chains: int = 4,
    num_sweeps: int = 2000,
    num_burnin: int = 500,
) -> GibbsResult:
    """``gibbs_llc`` given the statistics instead of the data.

    Args:
      weights_star: (W*_1, …, W*_L), W*_l of shape (H_{l−1}, H_l).
      stats: the data's ``DLNStatistics``.
      key: PRNG key; it fully determines the result.
      nbeta: nβ; ``None`` means n / log n with n = ``stats.n``.
      localization: γ > 0.
      num_chains: independent chains, each started at W*.
      num_sweeps: kept sweeps per chain.
      num_burnin: discarded sweeps per chain.

    Returns:
      The ``GibbsResult``.

    Raises:
      ValueError: bad weights or settings.
    """
    weights_star = tuple(weights_star)
    _check(weights_star, num_chains, num_sweeps, num_burnin, localization)
    if nbeta is None:
        n = jnp.asarray(stats.n, _float_dtype(stats.sxx))
        nbeta = n / jnp.log(n)
    return _gibbs_llc_core(
        weights_star,
        stats,
        key,
        nbeta,
        localization,
        num_chains=num_chains,
        num_sweeps=num_sweeps,
        num_burnin=num_burnin,
    )


def gibbs_llc(
    weights_star: Weights,
    x: jax.Array,
    y: jax.Array,
    *,
    key: jax.Array,
    nbeta: float | jax.Array | None = None,
    localization: float | jax.Array = 100.0,
    num_chains: int = 4,
    num_sweeps: int = 2000,
    num_burnin: int = 500,
    chunk_size: int | None = None,
) -> GibbsResult:
    """Exact-sampler LLC of a deep linear network at ``weights_star`` = W* on data (x, y).

    Runs ``num_chains`` independent block-Gibbs chains (vmapped; sweeps in ``lax.scan``; one
    compiled program) on p(W) ∝ exp(−nβ·L_n(W) − (γ/2)·||W − W*||²), each started at W*;
    the first ``num_burnin`` sweeps are discarded and the next ``num_sweeps`` are kept
    (num_burnin + num_sweeps sweeps in all). λ̂_c = nβ·(mean over kept sweeps of
    L_n(W_t) − L_n(W*)) with the exact full-data loss; ``llc_mean``/``llc_std`` are the mean and
    ddof=1 std over chains.

    Traceable (integers static): wrap it in ``jax.jit`` with
    ``static_argnames=("num_chains", "num_sweeps", "num_burnin", "chunk_size")``.

    Args:
      weights_star: (W*_1, …, W*_L), W*_l of shape (H_{l−1}, H_l); f(x) = x W_1⋯W_L.
      x: (n, H_0) inputs.
      y: (n, H_L) targets; the loss is mean ½||y − f(x)||².
      key: PRNG key; it fully determines the result.
      nbeta: nβ; ``None`` means n / log n (``jaxslt.default_nbeta``).
      localization: γ > 0.
      num_chains: independent chains, each started at W*.
      num_sweeps: kept sweeps per chain.
      num_burnin: discarded sweeps per chain.
      chunk_size: accumulate the statistics in chunks of this many examples.

    Returns:
      The ``GibbsResult``.

    Raises:
      ValueError: bad weights (not matrices, shapes that do not chain or match the data) or
        settings.
    """
    weights_star = tuple(weights_star)
    _check(weights_star, num_chains, num_sweeps, num_burnin, localization, x.shape[1], y.shape[1])
    stats = dln_statistics(x, y, chunk_size=chunk_size)
    return gibbs_llc_from_statistics(
        weights_star,
        stats,
        key=key,
        nbeta=default_nbeta(x.shape[0]) if nbeta is None else nbeta,
        localization=localization,
        num_chains=num_chains,
        num_sweeps=num_sweeps,
        num_burnin=num_burnin,
    )
