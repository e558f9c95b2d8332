"""Choosing ε, γ (and nβ) by a documented procedure instead of by eye.

``calibrate`` runs short chains on a grid of step_size × localization (× nbeta) — every cell in
one compiled program, cells vmapped (or mapped in groups of ``cell_batch_size``), all cells
sharing the key (common random numbers, so differences between cells are not noise) — and
diagnoses each cell. The default step sizes come from the curvature at w*: with h_max the
largest Hessian eigenvalue of L_n (power iteration), SGLD is stable for ε·(nβ·h_max + γ) < 4
and accurate well below 0.5, so the grid spans ε·(nβ·h_max + γ) ∈ [0.003, 1].

Recommendation rule (``Calibration.recommended``, explained in ``Calibration.explanation``):

1. a cell is *healthy* when no chain diverged, the MALA acceptance of its SGLD steps is ≥ 0.8,
   its diagnostics raise no warning about R-hat, drift (still rising/falling) or a
   non-minimum, and it keeps the accuracy margin ε·(nβ·h_max + γ) ≤ 0.1. The per-direction
   SGLD variance inflation 1/(1 − εa/4) is then under 3%; measured on deep linear networks
   (benchmarks/accuracy.py, diagnostics.py), 0.2 already gives +4% to +55% from 64 to 1e5
   parameters (many directions near h_max), while 0.1 stays within 1% on 800 parameters.
   Acceptance alone is a weak guard: short calibration chains have not yet reached the stiffer
   regions the long run visits;
2. for each γ, the healthy estimates are extrapolated linearly to ε → 0 (weighted least squares
   in ε; discretisation bias is O(ε)), giving λ̂₀ ± se₀;
3. γ: the smallest localization with at least two healthy cells (a larger γ pulls the estimate
   down by confining degenerate directions; a smaller one that is still healthy converged);
4. ε: at that γ, the largest healthy step whose estimate agrees with λ̂₀ within
   max(2·√(se² + se₀²), 5%·|λ̂₀|) ("flat in ε"): the fastest-mixing step without visible bias.
5. burn-in: at least 5/(ε·γ) steps (flat directions relax in ~1/(εγ) steps; reference §3).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxslt import validation
from jaxslt.estimator import DEFAULT_BATCH_SIZE, LLCResult, sample_llc
from jaxslt.posterior import default_nbeta

PyTree = Any

MAX_MARGIN = 0.1  # ε·(nβ·h_max + γ); see the module docstring
# diagnostics warnings that disqualify a cell (ESS is low by design in short calibration runs)
_DISQUALIFYING = ("R-hat", "trace still", "λ̂ = ", "MALA acceptance", "all ")


def max_hessian_eigenvalue(
    loss_fn: Callable, params: PyTree, batch: PyTree, *, key: jax.Array, num_iters: int = 30
) -> jax.Array:
    """Largest eigenvalue h_max of ∇²L_B at ``params`` by power iteration on Hessian-vector
    products (forward-over-reverse), from a random start; returns |Rayleigh quotient| (0 where
    the Hessian vanishes, e.g. a deep linear network at w* = 0)."""

    def hvp(v):
        return jax.jvp(lambda w: jax.grad(loss_fn)(w, batch), (params,), (v,))[1]

    def normalize(v):  # a zero Hessian maps v to 0: keep it 0 rather than 0/0
        norm = optax.tree.norm(v)
        return jax.tree.map(lambda x: x / jnp.where(norm > 0, norm, 1.0), v)

    def body(v, _):
        return normalize(hvp(v)), None

    start = normalize(optax.tree.random_like(key, params, jax.random.normal))
    v, _ = jax.lax.scan(body, start, None, length=num_iters)
    return jnp.abs(optax.tree.vdot(v, hvp(v)))


@dataclass(eq=False)
class Calibration:
    """Result of ``calibrate``: ``table`` (one row per cell), ``recommended`` (keyword arguments
    for ``estimate_llc``; empty when no cell is healthy), ``explanation`` and ``extrapolation``
    (γ → (λ̂₀, se₀), the ε → 0 estimate per localization)."""

    table: Any
    recommended: dict[str, Any]
    explanation: str
    extrapolation: dict[float, tuple[float, float]] = field(default_factory=dict)
    h_max: float = math.nan
    results: LLCResult | None = None

    def __repr__(self) -> str:
        return f"Calibration(recommended={self.recommended})\n{self.explanation}"


jax.tree_util.register_static(Calibration)


def _extrapolate(eps: np.ndarray, est: np.ndarray, se: np.ndarray) -> tuple[float, float]:
    """Weighted least squares est ≈ λ₀ + c·ε; returns (λ₀, se(λ₀)). Needs ≥ 2 distinct ε."""
    w = 1.0 / np.maximum(se, 1e-12) ** 2
    design = np.stack([np.ones_like(eps), eps], axis=1)
    cov = np.linalg.inv(design.T @ (w[:, None] * design))
    coef = cov @ design.T @ (w * est)
    return float(coef[0]), float(np.sqrt(cov[0, 0]))


def _cells_grid(step_sizes, localizations, nbetas):
    grid = np.array(np.meshgrid(step_sizes, localizations, nbetas, indexing="ij")).reshape(3, -1)
    return grid[0], grid[1], grid[2]


def calibrate(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    data: PyTree,
    *,
    key: jax.Array,
    step_sizes: Sequence[float] | None = None,
    localizations: Sequence[float] = (1.0, 10.0, 100.0),
    nbetas: Sequence[float] | None = None,
    num_chains: int = 4,
    num_draws: int = 2000,
    num_burnin: int = 1000,
    batch_size: int | None = None,
    sampler: str = "sgld",
    cell_batch_size: int | None = None,
) -> Calibration:
    """Run short chains on a grid and recommend ``step_size``, ``localization`` (and ``nbeta``
    when several are given) for ``estimate_llc`` by the rule in this module's docstring.

    ``step_sizes=None`` derives six log-spaced steps from the curvature at w*:
    ε·(nβ·h_max + γ_min) ∈ [0.003, 1]. ``nbetas=None`` uses n / log n only. The whole grid runs as
    one compiled program; ``cell_batch_size`` bounds how many cells are live at once.
    """
    from jaxslt.diagnostics import diagnose

    n = validation.check_data(data)
    validation.check_params(params)
    validation.check_key(key)
    batch_size = min(n, DEFAULT_BATCH_SIZE) if batch_size is None else batch_size
    validation.check_loss_fn(loss_fn, params, data, batch_size)
    nbetas = [default_nbeta(n)] if nbetas is None else [float(b) for b in nbetas]
    localizations = [float(g) for g in localizations]
    for name, values in (("localizations", localizations), ("nbetas", nbetas)):
        if not values or min(values) < 0 or (name == "nbetas" and min(values) <= 0):
            raise ValueError(f"{name} must be a non-empty list of positive numbers; got {values}")
    curvature_batch = jax.tree.map(lambda x: x[: min(n, 4 * batch_size)], data)
    h_max = float(max_hessian_eigenvalue(loss_fn, params, curvature_batch, key=key))
    if step_sizes is None:
        stiffness = max(nbetas) * h_max + min(localizations)
        step_sizes = list(np.geomspace(0.003, 1.0, 6) / stiffness)
    step_sizes = [float(e) for e in step_sizes]
    if not step_sizes or min(step_sizes) <= 0:
        raise ValueError(f"step_sizes must be positive; got {step_sizes}")
    for gamma in localizations:
        validation.check_settings(
            n=n, step_size=min(step_sizes), num_chains=num_chains, num_draws=num_draws,
            num_burnin=num_burnin, thinning=1, batch_size=batch_size, nbeta=nbetas[0],
            localization=gamma, eval_batch_size=None,
        )  # fmt: skip

    eps, gam, nbs = _cells_grid(step_sizes, localizations, nbetas)
    results = _run_grid(
        loss_fn, params, data, key, jnp.asarray(eps, jnp.float32), jnp.asarray(gam, jnp.float32),
        jnp.asarray(nbs, jnp.float32), num_chains=num_chains, num_draws=num_draws,
        num_burnin=num_burnin, batch_size=batch_size, sampler=sampler,
        cell_batch_size=cell_batch_size,
    )  # fmt: skip
    return recommend(results, eps, gam, nbs, diagnose, h_max, num_burnin, num_draws)


@functools.partial(
    jax.jit,
    static_argnums=(0,),
    static_argnames=("num_chains", "num_draws", "num_burnin", "batch_size", "sampler",
                     "cell_batch_size"),
)  # fmt: skip
def _run_grid(loss_fn, params, data, key, eps, gam, nbs, *, num_chains, num_draws, num_burnin,
              batch_size, sampler, cell_batch_size):  # fmt: skip
    def cell(args):
        e, g, b = args
        return sample_llc(
            loss_fn, params, data, key, step_size=e, nbeta=b, localization=g,
            num_chains=num_chains, num_draws=num_draws, num_burnin=num_burnin,
            batch_size=batch_size, sampler=sampler,
        )  # fmt: skip

    return jax.lax.map(cell, (eps, gam, nbs), batch_size=cell_batch_size or eps.shape[0])


def recommend(results, eps, gam, nbs, diagnose, h_max, num_burnin, num_draws) -> Calibration:
    import pandas as pd

    rows = []
    for i in range(len(eps)):
        cell = jax.tree.map(lambda x, i=i: np.asarray(x[i]), results)
        diag = diagnose(cell)
        bad = [w for w in diag.warnings if w.startswith(_DISQUALIFYING)]
        bad += [f"{int(cell.diverged.sum())} chain(s) diverged"] if cell.diverged.any() else []
        margin = float(eps[i] * (nbs[i] * h_max + gam[i]))
        accept = (
            float(np.nanmean(cell.mala_accept))
            if not np.isnan(cell.mala_accept).all()
            else math.nan
        )
        rows.append(
            dict(
                step_size=float(eps[i]), localization=float(gam[i]), nbeta=float(nbs[i]),
                llc_mean=float(cell.llc_mean), llc_std=float(cell.llc_std),
                llc_se=float(cell.llc_std) / math.sqrt(max(int((~cell.diverged).sum()), 1)),
                mala_accept=accept, rhat=diag.rhat, ess=diag.ess_bulk, trend=diag.trend,
                diverged=int(cell.diverged.sum()), ok=not bad and margin <= MAX_MARGIN,
                margin=margin, issues="; ".join(bad),
            )
        )  # fmt: skip
    table = pd.DataFrame(rows)
    table["selected"] = False
    extrapolation: dict[float, tuple[float, float]] = {}
    notes = [f"h_max = {h_max:.4g} (power iteration on the Hessian of L at w*)."]
    chosen = fallback = None
    for nbeta in sorted(set(nbs)):
        for gamma in sorted(set(gam)):
            sub = table[(table.localization == gamma) & (table.nbeta == nbeta) & table.ok]
            if sub.step_size.nunique() < 2:
                notes.append(f"γ = {gamma:g}: {len(sub)} healthy cell(s), too few to extrapolate.")
                if len(sub) and fallback is None:
                    fallback = sub.step_size.idxmax()
                continue
            lam0, se0 = _extrapolate(sub.step_size.to_numpy(), sub.llc_mean.to_numpy(),
                                     sub.llc_se.to_numpy())  # fmt: skip
            extrapolation[gamma] = (lam0, se0)
            tol = np.maximum(2 * np.hypot(sub.llc_se, se0), 0.05 * abs(lam0))
            flat = sub[np.abs(sub.llc_mean - lam0) <= tol]
            notes.append(
                f"γ = {gamma:g}: ε → 0 extrapolation λ̂₀ = {lam0:.4g} ± {se0:.2g}; "
                f"{len(flat)} of {len(sub)} healthy steps agree with it."
            )
            if chosen is None and len(flat):
                chosen = flat.step_size.idxmax()
        if chosen is not None:
            break
    if chosen is None and fallback is not None:
        chosen = fallback
        notes.append(
            "Only single healthy cells: flatness in ε could not be checked; consider a longer "
            "calibration (num_burnin, num_draws) or a finer step grid."
        )
    if chosen is None:
        notes.append(
            "No cell is healthy and flat in ε: lower the step sizes, raise num_burnin/num_draws "
            "or check that w* is a local minimum."
        )
        return Calibration(table, {}, "\n".join(notes), extrapolation, h_max, results)
    table.loc[chosen, "selected"] = True
    row = table.loc[chosen]
    burnin = max(num_burnin, math.ceil(5 / (row.step_size * max(row.localization, 1e-12))))
    recommended = dict(
        step_size=float(row.step_size), localization=float(row.localization),
        nbeta=float(row.nbeta), num_burnin=int(min(burnin, 100 * num_burnin)),
        num_draws=int(max(num_draws, 2 * num_burnin)),
    )  # fmt: skip
    notes.append(
        f"Chosen: ε = {row.step_size:.3g}, γ = {row.localization:g} (estimate {row.llc_mean:.4g} "
        f"± {row.llc_se:.2g}, MALA acceptance {row.mala_accept:.3f}): the smallest γ with a "
        "converged extrapolation and the largest healthy ε that agrees with it; burn-in "
        f"{recommended['num_burnin']} ≥ 5/(εγ)."
    )
    return Calibration(table, recommended, "\n".join(notes), extrapolation, h_max, results)
