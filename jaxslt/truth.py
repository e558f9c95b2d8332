"""Exact learning coefficients (ground truths) for testing LLC estimators.

Every function returns ``LearningCoefficient(llc, multiplicity)``: the real log canonical
threshold λ as an exact ``fractions.Fraction`` and its multiplicity m, so that the free energy
behaves as F_n = nL_n + λ log n − (m − 1) log log n + O_p(1). Pure Python, no JAX.

These are *global* values: λ is the minimum over the whole set of true parameters. The local
coefficient at a particular true parameter w* can be larger; test estimators at a most-singular
point (for deep linear networks: w* = 0 when r = 0, otherwise every layer the zero-padded
identity block [[I_r, 0], [0, 0]]).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from fractions import Fraction
from typing import NamedTuple

import numpy as np

__all__ = [
    "EstimatorMoments",
    "LearningCoefficient",
    "LinearGaussianObservables",
    "deep_linear_network",
    "linear_gaussian_observables",
    "normal_crossing",
    "quadratic_posterior",
    "quadratic_sghmc",
    "quadratic_sgld",
    "reduced_rank_regression",
    "regular",
    "tanh_one_hidden",
]


class LearningCoefficient(NamedTuple):
    """Exact learning coefficient λ and its multiplicity m: F_n = nL_n + λ log n
    − (m − 1) log log n + O_p(1).

    Attributes:
      llc: λ, the real log canonical threshold, as an exact ``fractions.Fraction``.
      multiplicity: m.
    """

    llc: Fraction
    multiplicity: int


def checked_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool {value!r}")
    try:
        out = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name} must be an integer, got {type(value).__name__} {value!r}; pass e.g. int(x)"
        ) from None
    if out < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {out}")
    return out


def _ints(name: str, values: object, minimum: int, min_len: int) -> list[int]:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of integers, got {type(values).__name__}")
    if len(values) < min_len:
        raise ValueError(f"{name} must have at least {min_len} entries, got {len(values)}")
    return [checked_int(f"{name}[{i}]", v, minimum) for i, v in enumerate(values)]


def _rank(rank: object, widths: Sequence[int], what: str) -> int:
    r = checked_int("rank", rank, 0)
    if r > min(widths):
        raise ValueError(
            f"rank={r} exceeds the narrowest width {min(widths)} of {what}; "
            f"the true map has rank at most {min(widths)}"
        )
    return r


def regular(d: int) -> LearningCoefficient:
    """Regular (identifiable, positive-definite Fisher information) model with d parameters.

    λ = d/2, m = 1.

    Args:
      d: the number of parameters (≥ 1).

    Returns:
      ``LearningCoefficient(llc, multiplicity)``, λ an exact ``Fraction``.

    Raises:
      ValueError: d < 1.
      TypeError: d is not an integer.

    Examples:
      >>> from jaxslt import truth
      >>> truth.regular(3)
      LearningCoefficient(llc=Fraction(3, 2), multiplicity=1)
    """
    d = checked_int("d", d, 1)
    return LearningCoefficient(Fraction(d, 2), 1)


def normal_crossing(k: Sequence[int], h: Sequence[int] | None = None) -> LearningCoefficient:
    """Normal crossing K(w) = Π_i w_i^(2 k_i) at w = 0 with prior ∝ Π_i |w_i|^(h_i).

    λ = min_i (h_i + 1)/(2 k_i) over the indices with k_i > 0; m = number of indices attaining
    the minimum. ``h`` defaults to zeros (a prior positive at the origin).

    Indices with k_i = 0 do not appear in K: their factor of the zeta function
    ∫ |w_i|^(h_i) dw_i is a positive constant with no pole, so they change neither λ nor m
    (whatever h_i is). At least one k_i must be positive, otherwise K ≡ 1 has no zero at all.

    Args:
      k: the exponents k_i ≥ 0, at least one positive.
      h: the prior's exponents h_i ≥ 0, one per k_i; None means zeros.

    Returns:
      ``LearningCoefficient(llc, multiplicity)``, λ an exact ``Fraction``.

    Raises:
      ValueError: no positive k_i, a negative entry, or ``h`` of another length.
      TypeError: entries that are not integers.

    Examples:
      >>> from jaxslt import truth
      >>> truth.normal_crossing([1, 2])  # min(1/2, 1/4), attained once
      LearningCoefficient(llc=Fraction(1, 4), multiplicity=1)
      >>> truth.normal_crossing([1, 1])  # 1/2, attained twice
      LearningCoefficient(llc=Fraction(1, 2), multiplicity=2)
    """
    ks = _ints("k", k, 0, 1)
    hs = [0] * len(ks) if h is None else _ints("h", h, 0, 0)
    if len(hs) != len(ks):
        raise ValueError(
            f"h must have one entry per entry of k: len(h)={len(hs)} != len(k)={len(ks)}"
        )
    ratios = [Fraction(hi + 1, 2 * ki) for ki, hi in zip(ks, hs, strict=True) if ki > 0]
    if not ratios:
        raise ValueError("k must have at least one positive entry: K = Π w_i^0 = 1 never vanishes")
    lam = min(ratios)
    return LearningCoefficient(lam, ratios.count(lam))


def reduced_rank_regression(M: int, H: int, N: int, rank: int) -> LearningCoefficient:
    """Reduced-rank regression y = B A x, A: H×M, B: N×H, true product of rank r.

    Aoyagi & Watanabe, Neural Networks 18:924 (2005), Theorem 1. M = input, H = hidden,
    N = output dimension.

    - If N + r ≤ M + H, M + r ≤ N + H and H + r ≤ M + N:
      λ = [2(H + r)(M + N) − (M − N)² − (H + r)²]/8, m = 1, when M + H + N + r is even;
      λ = [2(H + r)(M + N) − (M − N)² − (H + r)² + 1]/8, m = 2, when it is odd.
    - If M + H < N + r: λ = (HM − Hr + Nr)/2, m = 1.
    - If N + H < M + r: λ = (HN − Hr + Mr)/2, m = 1.
    - If M + N < H + r: λ = MN/2, m = 1.

    (At most one of the last three conditions can hold since r ≤ min(M, H, N).)

    Args:
      M: the input dimension.
      H: the hidden dimension.
      N: the output dimension.
      rank: r, the rank of the true product BA (0 ≤ r ≤ min(M, H, N)).

    Returns:
      ``LearningCoefficient(llc, multiplicity)``, λ an exact ``Fraction``.

    Raises:
      ValueError: a dimension below 1, or a rank out of range.
      TypeError: arguments that are not integers.

    Examples:
      >>> from jaxslt import truth
      >>> truth.reduced_rank_regression(3, 2, 3, 1)  # [2·3·6 − 0 − 9 + 1]/8, M + H + N + r odd
      LearningCoefficient(llc=Fraction(7, 2), multiplicity=2)
    """
    M, H, N = checked_int("M", M, 1), checked_int("H", H, 1), checked_int("N", N, 1)
    r = _rank(rank, [M, H, N], f"M={M}, H={H}, N={N}")
    if M + H < N + r:
        return LearningCoefficient(Fraction(H * M - H * r + N * r, 2), 1)
    if N + H < M + r:
        return LearningCoefficient(Fraction(H * N - H * r + M * r, 2), 1)
    if M + N < H + r:
        return LearningCoefficient(Fraction(M * N, 2), 1)
    odd = (M + H + N + r) % 2
    num = 2 * (H + r) * (M + N) - (M - N) ** 2 - (H + r) ** 2 + odd
    return LearningCoefficient(Fraction(num, 8), 1 + odd)


def deep_linear_network(widths: Sequence[int], rank: int) -> LearningCoefficient:
    """Deep linear network f(x) = W_L ⋯ W_1 x, widths H_0 (input), …, H_L (output), true rank r.

    Aoyagi, Neural Networks 172:106132 (2024). With deficiencies Δ_s = H_s − r (s = 0..L), let
    Σ be the unique index set with ℓ = |Σ| − 1 ≥ 1 such that

    (i) max_{s∈Σ} Δ_s < min_{k∉Σ} Δ_k, (ii) Σ_{s∈Σ} Δ_s ≥ ℓ max_{s∈Σ} Δ_s,
    (iii) Σ_{s∈Σ} Δ_s < ℓ min_{k∉Σ} Δ_k (empty min = +∞).

    By (i), Σ is a prefix of the ascending-sorted Δ's that does not split ties. With
    S = Σ_{s∈Σ} Δ_s, M = ⌈S/ℓ⌉ and a = S − (M − 1)ℓ:

    λ = (−r² + r(H_0 + H_L))/2 + a(ℓ − a)/(4ℓ) − (ℓ(ℓ − 1)/4)(S/ℓ)² + ½ Σ_{i<j∈Σ} Δ_i Δ_j,
    m = a(ℓ − a) + 1.

    With two weight matrices (three widths) this equals ``reduced_rank_regression`` with
    M = H_0, H = H_1, N = H_2. With one weight matrix (two widths) it gives H_0 H_1 / 2, m = 1:
    a single linear layer is a regular model.

    Args:
      widths: H_0 (input), …, H_L (output), at least two.
      rank: r, the rank of the true product (0 ≤ r ≤ min widths).

    Returns:
      ``LearningCoefficient(llc, multiplicity)``, λ an exact ``Fraction``.

    Raises:
      ValueError: fewer than two widths, a width below 1, or a rank out of range.
      TypeError: arguments that are not integers.

    Examples:
      >>> from jaxslt import truth
      >>> truth.deep_linear_network([3, 2, 3], 1) == truth.reduced_rank_regression(3, 2, 3, 1)
      True
      >>> truth.deep_linear_network([4, 4], 0)  # one layer: regular, H_0 H_1 / 2
      LearningCoefficient(llc=Fraction(8, 1), multiplicity=1)
    """
    hs = _ints("widths", widths, 1, 2)
    r = _rank(rank, hs, f"widths={hs}")
    deltas = sorted(h - r for h in hs)
    found = []
    for size in range(2, len(deltas) + 1):
        sigma, rest = deltas[:size], deltas[size:]
        ell, s = size - 1, sum(sigma)
        nxt = rest[0] if rest else math.inf
        if sigma[-1] < nxt and s >= ell * sigma[-1] and s < ell * nxt:
            found.append((sigma, ell, s))
    if len(found) != 1:  # pragma: no cover - Aoyagi's theorem guarantees exactly one
        raise RuntimeError(f"expected exactly one index set Σ, found {len(found)} for {hs}")
    sigma, ell, s = found[0]
    big_m = -(-s // ell)  # ceil(S/ℓ)
    a = s - (big_m - 1) * ell
    pairs = (s * s - sum(x * x for x in sigma)) // 2  # Σ_{i<j} Δ_i Δ_j
    lam = (
        Fraction(-r * r + r * (hs[0] + hs[-1]), 2)
        + Fraction(a * (ell - a), 4 * ell)
        - Fraction(ell * (ell - 1), 4) * Fraction(s, ell) ** 2
        + Fraction(pairs, 2)
    )
    return LearningCoefficient(lam, a * (ell - a) + 1)


def tanh_one_hidden(H: int) -> LearningCoefficient:
    """One-hidden-layer tanh network f(x) = Σ_{j≤H} a_j tanh(b_j x), scalar x, true f = 0.

    λ = (H + k² + k)/(4k + 2) with k = ⌊√H⌋ (H = 1..5: 1/2, 2/3, 5/6, 1, 11/10); Watanabe,
    Algebraic Geometry and Statistical Learning Theory (2009), from K(a, b) =
    Σ_p (Σ_j a_j b_j^(2p−1))². Multiplicity: m = 2 when H = k² and m = 1 otherwise, as stated
    there. H = 1 checks it directly: K = a² E[tanh²(bx)] = a² b² · (positive unit), the normal
    crossing (1, 1), so λ = 1/2 and m = 2. The m for perfect squares H ≥ 4 is taken from the
    literature and not re-derived here.

    Args:
      H: the number of hidden units (≥ 1).

    Returns:
      ``LearningCoefficient(llc, multiplicity)``, λ an exact ``Fraction``.

    Raises:
      ValueError: H < 1.
      TypeError: H is not an integer.
    """
    H = checked_int("H", H, 1)
    k = math.isqrt(H)
    return LearningCoefficient(Fraction(H + k * k + k, 4 * k + 2), 2 if k * k == H else 1)


# Exact finite-(nβ, γ, ε) targets for a quadratic loss L(w) = L0 + ½ Σ_i h_i (w_i − w*_i)², where
# the localized tempered posterior and full-batch SGLD are Gaussian and everything is exact.


class EstimatorMoments(NamedTuple):
    """Mean of a per-chain estimate λ̂_c and its standard deviation across independent chains.

    Attributes:
      mean: E[λ̂_c].
      std: the standard deviation of λ̂_c across independent chains.
    """

    mean: float
    std: float


def quadratic_posterior(
    hessian_diag: Sequence[float], *, nbeta: float, localization: float
) -> float:
    """Exact E_p[λ̂] = Σ_i nβ h_i / (2 a_i), a_i = nβ h_i + γ, under the exact posterior.

    It tends to d/2 as nβ → ∞ (or γ → 0), the regular model's λ.

    Args:
      hessian_diag: h_i, the eigenvalues of the loss's Hessian.
      nbeta: nβ.
      localization: γ.

    Returns:
      E_p[λ̂], a float.

    Examples:
      >>> from jaxslt import truth
      >>> truth.quadratic_posterior([1.0, 1.0], nbeta=100.0, localization=0.0)  # d/2
      1.0
      >>> truth.quadratic_posterior([1.0, 1.0], nbeta=100.0, localization=100.0)  # 2·100/400
      0.5
    """
    h = np.asarray(hessian_diag, dtype=np.float64)
    a = nbeta * h + localization
    return float(np.sum(nbeta * h / (2 * a)))


def _gaussian_chain_moments(
    transition, noise, init_cov, weight, *, num_burnin, num_draws, thinning
) -> EstimatorMoments:
    """Mean and std of λ̂_c = Σ_i weight_i · mean_j x_{i,t_j}² for independent coordinates i
    whose state z_i (x_i first) follows z ← A_i z + b_i ξ from covariance init_cov_i.

    Var x_t = Σ_t[0, 0] with Σ_{t+1} = A Σ_t Aᵀ + b bᵀ; for s ≤ t, Cov(x_s, x_t) =
    (A^(t−s) Σ_s)[0, 0]ᵀ-wise; Gaussian moments give Cov(x_s², x_t²) = 2 Cov(x_s, x_t)².
    """
    a = np.asarray(transition, dtype=np.float64)  # (d, k, k)
    b = np.asarray(noise, dtype=np.float64)  # (d, k)
    times = num_burnin + thinning * np.arange(num_draws)
    cov = np.array(init_cov, dtype=np.float64)  # (d, k, k)
    at_draws = []
    for t in range(times[-1] + 1):
        if t in times[len(at_draws) : len(at_draws) + 1]:
            at_draws.append(cov)
        cov = a @ cov @ np.swapaxes(a, 1, 2) + b[:, :, None] * b[:, None, :]
    at_draws = np.stack(at_draws, axis=1)  # (d, D, k, k)
    powers = [np.broadcast_to(np.eye(a.shape[1]), a.shape)]
    for _ in range(thinning * (num_draws - 1)):
        powers.append(a @ powers[-1])
    powers = np.stack(powers, axis=1)  # (d, lags, k, k)
    lag = thinning * (np.arange(num_draws)[None, :] - np.arange(num_draws)[:, None])  # j − i
    # Cov(x_{t_i}, x_{t_j}) for j ≥ i: row 0 of A^lag times column 0 of Σ_{t_i}
    pair = np.einsum("dijk,dik->dij", powers[:, np.abs(lag), 0, :], at_draws[:, :, :, 0])
    pair = np.where(lag >= 0, pair, np.swapaxes(pair, 1, 2))
    var = at_draws[:, :, 0, 0]
    w = np.asarray(weight, dtype=np.float64) / num_draws
    mean = np.sum(w * var.sum(axis=1))
    variance = np.sum(w**2 * 2 * (pair**2).sum(axis=(1, 2)))
    return EstimatorMoments(float(mean), float(np.sqrt(variance)))


def quadratic_sgld(
    hessian_diag: Sequence[float],
    *,
    nbeta: float,
    localization: float,
    step_size: float,
    num_burnin: int,
    num_draws: int,
    thinning: int = 1,
) -> EstimatorMoments:
    """Exact mean and std of one chain's λ̂_c from full-batch SGLD started at w*.

    With x = w − w*, each coordinate is the AR(1) process x_{t+1} = ρ x_t + √ε ξ, ρ = 1 − ε a/2,
    a = nβ h + γ, whose variance tends to 1/(a(1 − εa/4)) (not the posterior's 1/a: SGLD's
    discretisation bias, exact here). The chain records L(w_t) at the draws
    t_j = num_burnin + j·thinning, and λ̂_c = nβ·(mean_j L(w_{t_j}) − L0)
    = (nβ/D) Σ_j Σ_i ½ h_i x_{i,t_j}². Stable only for ε a < 4.

    Args:
      hessian_diag: h_i, the eigenvalues of the loss's Hessian.
      nbeta: nβ.
      localization: γ.
      step_size: ε.
      num_burnin: steps before the first kept draw.
      num_draws: D, the kept draws.
      thinning: steps between kept draws.

    Returns:
      ``EstimatorMoments(mean, std)`` of λ̂_c.

    Raises:
      ValueError: ε·a ≥ 4 for some coordinate (SGLD is unstable).

    Examples:
      Equilibrated, E[λ̂_c] = Σ_i (nβ h_i/2)/(a_i(1 − εa_i/4)): here 1/(1 − 0.025) = 1.0256.

      >>> from jaxslt import truth
      >>> m = truth.quadratic_sgld([1.0, 1.0], nbeta=100.0, localization=0.0, step_size=1e-3,
      ...                          num_burnin=1000, num_draws=1000)
      >>> round(m.mean, 4)
      1.0256
    """
    h = np.asarray(hessian_diag, dtype=np.float64)
    a = nbeta * h + localization
    if np.any(step_size * a >= 4):
        raise ValueError(f"step_size={step_size} is unstable: need step_size·(nβ h + γ) < 4")
    rho = 1 - step_size * a / 2
    return _gaussian_chain_moments(
        rho[:, None, None],
        np.full((h.size, 1), np.sqrt(step_size)),
        np.zeros((h.size, 1, 1)),
        nbeta * h / 2,
        num_burnin=num_burnin,
        num_draws=num_draws,
        thinning=thinning,
    )


def quadratic_sghmc(
    hessian_diag: Sequence[float],
    *,
    nbeta: float,
    localization: float,
    step_size: float,
    friction: float,
    num_burnin: int,
    num_draws: int,
    thinning: int = 1,
) -> EstimatorMoments:
    """Exact mean and std of one chain's λ̂_c from full-batch ``jaxslt.kernels.sghmc``.

    Per coordinate, with h = √(ε/2): p' = (1 − f)p − h a x + √(2f) ξ, x' = x + h p', a linear
    Gaussian recursion in z = (x, p) started from x = 0 (w*), p ~ N(0, 1).

    Args:
      hessian_diag: h_i, the eigenvalues of the loss's Hessian.
      nbeta: nβ.
      localization: γ.
      step_size: ε.
      friction: f, the momentum's decay per step.
      num_burnin: steps before the first kept draw.
      num_draws: the kept draws.
      thinning: steps between kept draws.

    Returns:
      ``EstimatorMoments(mean, std)`` of λ̂_c.
    """
    h = np.asarray(hessian_diag, dtype=np.float64)
    a = nbeta * h + localization
    step = np.sqrt(step_size / 2)
    f = friction
    transition = np.stack(
        [
            np.stack([1 - step**2 * a, np.full_like(a, step * (1 - f))], axis=-1),
            np.stack([-step * a, np.full_like(a, 1 - f)], axis=-1),
        ],
        axis=1,
    )
    noise = np.tile([step * np.sqrt(2 * f), np.sqrt(2 * f)], (h.size, 1))
    init = np.tile(np.diag([0.0, 1.0]), (h.size, 1, 1))
    return _gaussian_chain_moments(
        transition,
        noise,
        init,
        nbeta * h / 2,
        num_burnin=num_burnin,
        num_draws=num_draws,
        thinning=thinning,
    )


class LinearGaussianObservables(NamedTuple):
    """Exact posterior observables of a linear-Gaussian model (``linear_gaussian_observables``).

    Attributes:
      functional_variance: V_n = Σ_i Var_p[l_i(w)].
      singular_fluctuation: ν = (β/2)·V_n, β = nβ/n.
      bayes_train_loss: T_n = −(1/n) Σ_i log E_p[exp(−l_i(w))].
      gibbs_train_loss: G_t = E_p[L_n(w)].
      waic: T_n + (β/n)·V_n.
      mean: m, the posterior mean.
      covariance: Σ, the posterior covariance.
    """

    functional_variance: float
    singular_fluctuation: float
    bayes_train_loss: float
    gibbs_train_loss: float
    waic: float
    mean: np.ndarray
    covariance: np.ndarray


def linear_gaussian_observables(
    x: np.ndarray, y: np.ndarray, center: np.ndarray, *, nbeta: float, localization: float
) -> LinearGaussianObservables:
    """Exact V_n, ν, T_n, G_t and WAIC (``jaxslt.observables``' definitions) for the per-example
    loss l_i(w) = ½(y_i − x_i·w)² under p(w) ∝ exp(−nβ·L_n(w) − γ/2·||w − w*||²).

    The posterior is N(m, Σ) with Σ⁻¹ = nβ·XᵀX/n + γI and m = Σ(nβ·Xᵀy/n + γ·w*). Then
    y_i − x_i·w ~ N(r_i, s_i) with r_i = y_i − x_i·m, s_i = x_iᵀΣx_i, so
    E[l_i] = (r_i² + s_i)/2, Var[l_i] = s_i²/2 + r_i²·s_i and
    log E[exp(−l_i)] = −½·log(1 + s_i) − r_i²/(2(1 + s_i)). Computed in float64.

    Args:
      x: (n, d) inputs.
      y: (n,) targets.
      center: w*, shape (d,).
      nbeta: nβ.
      localization: γ.

    Returns:
      The ``LinearGaussianObservables``.
    """
    x, y, center = (np.asarray(a, np.float64) for a in (x, y, center))
    n, d = x.shape
    precision = nbeta * x.T @ x / n + localization * np.eye(d)
    covariance = np.linalg.inv(precision)
    mean = covariance @ (nbeta * x.T @ y / n + localization * center)
    r = y - x @ mean
    s = np.einsum("ij,jk,ik->i", x, covariance, x)
    variance = np.sum(s**2 / 2 + r**2 * s)
    bayes_train = float(np.mean(0.5 * np.log1p(s) + r**2 / (2 * (1 + s))))
    beta = nbeta / n
    return LinearGaussianObservables(
        functional_variance=float(variance),
        singular_fluctuation=float(beta / 2 * variance),
        bayes_train_loss=bayes_train,
        gibbs_train_loss=float(np.mean((r**2 + s) / 2)),
        waic=float(bayes_train + beta / n * variance),
        mean=mean,
        covariance=covariance,
    )
