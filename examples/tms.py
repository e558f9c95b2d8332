"""The toy model of superposition: k-gon critical points, their LLCs, and stages in training.

Elhage et al. 2022, "Toy models of superposition"; the SLT analysis is Chen, Lau, Mendel, Wei
and Murfet 2023, "Dynamical versus Bayesian phase transitions in a toy model of superposition".
c = 6 features, m = 2 hidden dimensions, parameters W ∈ R^{2×6} (columns w_i) and b ∈ R^6:

    f(x) = ReLU(WᵀW x + b),    L(W, b) = E ‖x − f(x)‖²,

with inputs x = u·e_i: exactly one feature i (uniform over the 6) on, at u ~ U[0, 1]. For x = u e_i
the output j is ReLU(u⟨w_j, w_i⟩ + b_j), so L is a sum of one-dimensional integrals of
piecewise quadratics in u, which ``population_loss`` evaluates in closed form (float64): with
a = ⟨w_j, w_i⟩ and [lo, hi] ⊂ [0, 1] where a·u + b_j > 0,

    ∫ ReLU(a u + b)² du = [a²u³/3 + a b u² + b² u]_lo^hi,
    ∫ u·ReLU(a u + b) du = [a u³/3 + b u²/2]_lo^hi,
    L = (1/6) Σ_i [1/3 − 2∫u·ReLU(a_ii u + b_i) + Σ_j ∫ReLU(a_ij u + b_j)²].

**The k-gon** (k = 4, 5, 6): features i < k at the vertices of a regular k-gon,
w_i = ℓ(cos 2πi/k, sin 2πi/k), bias b_i = β; the other 6 − k features off (w_i = 0, b_i < 0).
(ℓ, β) minimise L in that family (two variables, to machine precision); the script checks the
full 18-dimensional gradient vanishes there (a critical point of L) and reports the
population Hessian's rank r. Where the zero directions are exactly flat (the rotation
W → RW, the off features' weights and negative biases), the k-gon is a minimally singular
critical point and its learning coefficient is λ = r/2 (Chen et al. 2023, §4).

**LLC estimates**: SGLD on n samples (``jaxslt.estimate_llc``, nβ = n/log n) at each k-gon with
one fixed rule: γ = 100, ε = 0.1/(nβ·h_max + γ) with h_max the largest eigenvalue of the
population Hessian at the 6-gon, 8 chains × 4000 draws after 2000 burn-in steps. The table
compares λ̂ with r/2.

**Training**: SGD (lr 0.1, batch 1024) from a small random init (std 0.05) on the same n
samples, checkpoints every 50 steps to 2000, then to 5000. The loss passes the 4-gon++ (a saddle:
the two off features output the constant 1/12; loss 0.09722) and settles on the 5-gon+ (one off
feature outputs 1/12; loss 0.06180, rank 17, λ = 8.5). ``llc_trajectory`` (one key: common random
numbers) and ``detect_stages`` with the loss show whether the LLC plateau matches the k-gon value
and the stages the loss plateaus; ``--repeats`` more keys measure the correlation of the λ̂
errors of neighbouring checkpoints that the common key creates, and their spread (passed to
``detect_stages`` as the noise actually seen).

    python examples/tms.py --out runs/tms           # full run (minutes on 2 CPU cores)
    python examples/tms.py --out /tmp/tms --quick   # smoke test (tests/test_examples.py)

Writes into ``--out``: ``kgons.csv`` (k, loss, gradient norm, Hessian rank, theory λ, λ̂ ± se),
``trajectory.csv`` (one row per checkpoint), ``stages.csv``, ``tms_llc.png`` (LLC over training
with the k-gon levels) and ``tms_stages.png`` (``plot_stages``), and ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time
import warnings
from collections.abc import Sequence

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.optimize  # noqa: E402

import jaxslt  # noqa: E402
from jaxslt import plots  # noqa: E402
from jaxslt.stages import adjacent_correlation  # noqa: E402

NUM_FEATURES, NUM_HIDDEN = 6, 2
OFF_BIAS = -0.5  # bias of a feature that is off (any negative value is as critical)
# published k-gon losses (Chen et al. 2023, Table 1); the script recomputes them
PUBLISHED_LOSS = {4: 1.0 / 9.0, 5: 0.06874, 6: 0.04819}


# ---------------------------------------------------------------------------------------------
# the population loss in closed form


def _active(a, b):
    """[lo, hi] ⊂ [0, 1] where a·u + b > 0 (lo = hi when nowhere)."""
    safe = jnp.where(a == 0.0, 1.0, a)
    t = jnp.clip(-b / safe, 0.0, 1.0)
    lo = jnp.where(a > 0.0, t, 0.0)
    hi = jnp.where(a < 0.0, t, 1.0)
    flat_on = b > 0.0  # a = 0: active everywhere iff b > 0
    lo = jnp.where(a == 0.0, 0.0, lo)
    hi = jnp.where(a == 0.0, jnp.where(flat_on, 1.0, 0.0), hi)
    return lo, jnp.maximum(hi, lo)


def population_loss(params) -> jax.Array:
    """L(W, b) = E‖x − ReLU(WᵀWx + b)‖² for x = u·e_i, i uniform, u ~ U[0, 1], exactly."""
    w, b = params["W"], params["b"]
    a = w.T @ w  # a[i, j] = ⟨w_i, w_j⟩: input feature i, output j
    bj = jnp.broadcast_to(b[None, :], a.shape)
    lo, hi = _active(a, bj)

    def sq(u):  # ∫ (a u + b)² du
        return a**2 * u**3 / 3.0 + a * bj * u**2 + bj**2 * u

    def lin(u):  # ∫ u (a u + b) du
        return a * u**3 / 3.0 + bj * u**2 / 2.0

    relu_sq = sq(hi) - sq(lo)
    cross = jnp.diagonal(lin(hi) - lin(lo))
    per_input = 1.0 / 3.0 - 2.0 * cross + relu_sq.sum(axis=1)
    return per_input.mean()


def flat(params) -> jax.Array:
    return jnp.concatenate([params["W"].ravel(), params["b"]])


def unflat(v) -> dict:
    n = NUM_FEATURES * NUM_HIDDEN
    return {"W": v[:n].reshape(NUM_HIDDEN, NUM_FEATURES), "b": v[n:]}


# ---------------------------------------------------------------------------------------------
# k-gons


def kgon_params(k: int, length: float, bias: float, off_bias: float = OFF_BIAS) -> dict:
    angles = 2.0 * np.pi * np.arange(k) / k
    w = np.zeros((NUM_HIDDEN, NUM_FEATURES))
    w[:, :k] = length * np.stack([np.cos(angles), np.sin(angles)])
    b = np.full(NUM_FEATURES, off_bias)
    b[:k] = bias
    return {"W": jnp.asarray(w), "b": jnp.asarray(b)}


def kgon(k: int, positive: bool = False) -> dict:
    """The k-gon critical point: (ℓ, β) minimising L over the k-gon family, then checked.
    ``positive``: the variant k⁺ whose off features have a positive bias (also optimised; w = 0):
    they output that constant for every input."""

    @jax.jit
    def family_loss(p):
        angles = 2.0 * jnp.pi * jnp.arange(k) / k
        w = jnp.zeros((NUM_HIDDEN, NUM_FEATURES))
        w = w.at[:, :k].set(p[0] * jnp.stack([jnp.cos(angles), jnp.sin(angles)]))
        off = p[2] if positive else OFF_BIAS
        b = jnp.full(NUM_FEATURES, off).at[:k].set(p[1])
        return population_loss({"W": w, "b": b})

    def family(p):
        return float(family_loss(jnp.asarray(p, dtype=jnp.float64)))

    best = None
    for start in ([1.0, 0.0, 0.1], [1.2, -0.1, 0.1], [1.5, -0.3, 0.1]):
        start = start if positive else start[:2]
        res = scipy.optimize.minimize(
            family, start, method="Nelder-Mead", options={"xatol": 1e-13, "fatol": 1e-16,
                                                          "maxiter": 20_000}
        )  # fmt: skip
        if best is None or res.fun < best.fun:
            best = res
    params = kgon_params(k, *best.x)
    name = f"{k}-gon" + ("+" * (NUM_FEATURES - k) if positive and k < NUM_FEATURES else "")
    v = flat(params)
    loss = float(population_loss(params))
    grad = jax.grad(lambda v: population_loss(unflat(v)))(v)
    hess = jax.hessian(lambda v: population_loss(unflat(v)))(v)
    eig = np.linalg.eigvalsh(np.asarray(hess))
    # rank: eigenvalues above 1e-8 of the largest (the zero ones are exact: ~1e-16)
    rank = int(np.sum(np.abs(eig) > 1e-8 * np.abs(eig).max()))
    return {
        "name": name,
        "k": k,
        "length": float(best.x[0]),
        "bias": float(best.x[1]),
        "off_bias": float(best.x[2]) if positive else OFF_BIAS,
        "loss": loss,
        "published_loss": PUBLISHED_LOSS[k] if not positive else float("nan"),
        "grad_norm": float(jnp.linalg.norm(grad)),
        "hessian_rank": rank,
        "min_eigenvalue": float(eig.min()),
        "max_eigenvalue": float(eig.max()),
        "theory_llc": rank / 2.0,
        "params": params,
    }


# ---------------------------------------------------------------------------------------------
# data, loss, training


def sample_inputs(key, n: int) -> jax.Array:
    """n inputs u·e_i: i uniform over the features, u ~ U[0, 1]."""
    k1, k2 = jax.random.split(key)
    i = jax.random.randint(k1, (n,), 0, NUM_FEATURES)
    u = jax.random.uniform(k2, (n,), dtype=jnp.float64)
    return jax.nn.one_hot(i, NUM_FEATURES, dtype=jnp.float64) * u[:, None]


def loss_fn(params, x):
    """Mean over the batch of ‖x − ReLU(WᵀWx + b)‖²."""
    out = jax.nn.relu((x @ params["W"].T) @ params["W"] + params["b"])
    return jnp.mean(jnp.sum((x - out) ** 2, axis=-1))


def train(key, data, *, steps: int, lr: float, batch_size: int, init_scale: float,
          checkpoints: Sequence[int]):  # fmt: skip
    """Plain SGD from N(0, init_scale²) weights and zero biases; returns {step: params} and the
    population loss at every checkpoint."""
    k_init, k_batches = jax.random.split(key)
    params = {
        "W": init_scale * jax.random.normal(k_init, (NUM_HIDDEN, NUM_FEATURES), jnp.float64),
        "b": jnp.zeros(NUM_FEATURES, jnp.float64),
    }
    n = data.shape[0]

    @jax.jit
    def run(params, key):
        def body(p, k):
            idx = jax.random.randint(k, (batch_size,), 0, n)
            g = jax.grad(loss_fn)(p, data[idx])
            p = jax.tree.map(lambda a, b: a - lr * b, p, g)
            return p, p

        return jax.lax.scan(body, params, jax.random.split(key, steps))[1]

    path = run(params, k_batches)  # every step's parameters: 18 floats each
    return {
        int(s): params if s == 0 else jax.tree.map(lambda a, s=s: a[s - 1], path)
        for s in checkpoints
    }


# ---------------------------------------------------------------------------------------------
# the run

CRITICAL_POINTS = [(4, False), (4, True), (5, False), (5, True), (6, False)]


def sgld_settings(n: int, h_max: float, *, quick: bool) -> dict:
    nbeta = n / math.log(n)
    return dict(
        step_size=0.1 / (nbeta * h_max + 100.0),
        localization=100.0,
        nbeta=nbeta,
        num_chains=4 if quick else 8,
        num_draws=1000 if quick else 4000,
        num_burnin=500 if quick else 2000,
        batch_size=512,
    )


def theory(point: dict) -> float:
    """r/2 where the k-gon is a minimum with an analytic neighbourhood; NaN at the 4-gons (β = 0
    puts the neighbouring features exactly on the ReLU's kink: L is not analytic there) and at
    saddles (a negative Hessian eigenvalue)."""
    if point["k"] == 4 or point["min_eigenvalue"] < -1e-8:
        return float("nan")
    return point["theory_llc"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--quick", action="store_true", help="small settings: a smoke test")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--repeats",
        type=int,
        default=4,
        help="independent-key repeats of the curve to measure ρ (0: skip)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    times = {}
    start = time.perf_counter()

    # (a) the k-gons, exactly
    points = [kgon(k, positive) for k, positive in CRITICAL_POINTS]
    times["kgons"] = time.perf_counter() - start

    # (b) their LLCs
    n = 20_000 if quick else 100_000
    data = sample_inputs(jax.random.key(0), n)
    h_max = max(p["max_eigenvalue"] for p in points)
    settings = sgld_settings(n, h_max, quick=quick)
    rows = []
    for p in points:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = jaxslt.estimate_llc(loss_fn, p["params"], data, key=jax.random.key(1), **settings)
        se = float(r.llc_std) / math.sqrt(settings["num_chains"])
        rows.append(
            {
                "critical_point": p["name"],
                "loss": p["loss"],
                "published_loss": p["published_loss"],
                "grad_norm": p["grad_norm"],
                "hessian_rank": p["hessian_rank"],
                "min_eigenvalue": p["min_eigenvalue"],
                "theory_llc": theory(p),
                "llc": float(r.llc_mean),
                "llc_se": se,
                "relative_error": float(r.llc_mean) / theory(p) - 1.0,
            }
        )
    kgons = pd.DataFrame(rows)
    kgons.to_csv(out / "kgons.csv", index=False)
    times["kgon_llcs"] = time.perf_counter() - start - sum(times.values())

    # (c) training through the plateaus
    steps = [0, *range(50, 2001, 50), 2500, 3000, 4000, 5000]
    if quick:
        steps = [0, *range(100, 2001, 100), 3000]
    saved = train(jax.random.key(100 + args.seed), data, steps=max(steps), lr=0.1,
                  batch_size=1024, init_scale=0.05, checkpoints=steps)  # fmt: skip
    pop = np.array([float(population_loss(saved[s])) for s in steps])
    times["training"] = time.perf_counter() - start - sum(times.values())

    # (d) the LLC over training and its stages (half the chains and draws of the k-gon table:
    # ~45 checkpoints × (1 + repeats) curves)
    settings = {**settings, "num_chains": 4, "num_draws": settings["num_draws"] // 2,
                "num_burnin": settings["num_burnin"] // 2}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = jaxslt.llc_trajectory(loss_fn, saved, data, key=jax.random.key(2),
                                      checkpoint_batch_size=8, **settings)  # fmt: skip
        curves = [table["llc_mean"].to_numpy()]
        for r in range(args.repeats if not quick else 0):
            again = jaxslt.llc_trajectory(loss_fn, saved, data, key=jax.random.key(1000 + r),
                                          checkpoint_batch_size=8, **settings)  # fmt: skip
            curves.append(again["llc_mean"].to_numpy())
    rho = adjacent_correlation(np.array(curves)) if len(curves) > 2 else 0.0
    rho_used = float(np.clip(rho, 0.0, 0.99))
    table["population_loss"] = pop
    for r, curve in enumerate(curves[1:]):
        table[f"llc_mean_key{r + 1}"] = curve  # the independent-key repeats
    se = table["llc_std"].to_numpy() / math.sqrt(settings["num_chains"])
    # the noise actually seen: the spread of the independent-key repeats, as a multiple of the
    # chains' standard error (their median ratio over checkpoints; measured 1.49: the spread of
    # one key's 4 chains understates the error of their mean here)
    seen = np.median(np.std(curves, axis=0, ddof=1) / se) if len(curves) > 2 else 1.0
    table["llc_se_used"] = se * max(seen, 1.0)
    stages = jaxslt.detect_stages(table["step"], table["llc_mean"], llc_std=table["llc_se_used"],
                                  loss=pop, correlation=rho_used)  # fmt: skip
    table.drop(columns=[]).to_csv(out / "trajectory.csv", index=False)
    stages.stages.to_csv(out / "stages.csv", index=False)
    times["trajectory"] = time.perf_counter() - start - sum(times.values())

    # which critical point each checkpoint sits at: the nearest k-gon loss within 2%
    levels = {p["name"]: p["loss"] for p in points}

    def near(loss: float) -> str:
        name, level = min(levels.items(), key=lambda kv: abs(kv[1] - loss))
        return name if abs(level - loss) <= 0.02 * level else ""

    table["at"] = [near(v) for v in pop]
    plateaus = (
        table[table["at"] != ""].groupby("at")
        .agg(first=("step", "min"), last=("step", "max"), llc=("llc_mean", "mean"),
             llc_median=("llc_mean", "median"), llc_sd=("llc_mean", "std"),
             checkpoints=("step", "size"))
        .reset_index()
    )  # fmt: skip
    plateaus["kgon_llc"] = plateaus["at"].map(kgons.set_index("critical_point")["llc"])
    plateaus["theory_llc"] = plateaus["at"].map(kgons.set_index("critical_point")["theory_llc"])
    plateaus.to_csv(out / "plateaus.csv", index=False)

    # (e) figures
    # the plateau close up: λ̂ on the 5-gon+ against the theory levels (transition points are
    # arrows at the bottom edge)
    fig = plots.plot_trajectory(
        table.assign(init_loss=pop),
        stages=stages,
        ylim=(-2.0, 12.0),
        title="TMS (6 features, 2 hidden): LLC over SGD training, plateau close up",
    )
    ax = fig.axes[0]
    levels_theory: dict[float, list[str]] = {}
    for p, row in zip(points, rows, strict=True):
        if not math.isnan(row["theory_llc"]):
            levels_theory.setdefault(row["theory_llc"], []).append(p["name"])
    for value, names in levels_theory.items():
        ax.axhline(value, color="0.4", lw=0.8, ls="-.")
        ax.annotate(f"λ = {value:g} ({', '.join(names)})", (0.99, value),
                    xycoords=("axes fraction", "data"), ha="right", va="bottom",
                    fontsize=8, color="0.3")  # fmt: skip
    plots.save_figure(fig, out / "tms_llc.png")  # written after the theory levels are added
    full = out / "tms_llc_full.png"
    plots.plot_trajectory(table.assign(init_loss=pop), stages=stages, title="TMS", path=full)
    plots.plot_stages(
        table["step"],
        table["llc_mean"],
        stages,
        llc_std=se,
        loss=pop,
        title="TMS: stages of the LLC and the loss",
        path=out / "tms_stages.png",
    )
    times["total"] = time.perf_counter() - start

    summary = {
        "settings": {k: float(v) if isinstance(v, float) else v for k, v in settings.items()},
        "n": n,
        "kgons": rows,
        "plateaus": plateaus.to_dict(orient="records"),
        "stage_boundaries": [float(b) for b in stages.boundaries],
        "stage_kinds": [str(k) for k in stages.stages["kind"]],
        "adjacent_correlation_measured": rho,
        "repeats": len(curves),
        "seconds": times,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(kgons.to_string(index=False))
        print(plateaus.to_string(index=False))
        print(stages.stages.to_string(index=False))
    print(f"adjacent-checkpoint correlation of λ̂ errors (CRN): {rho:.3f} from {len(curves)} keys")
    print(json.dumps(times, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
