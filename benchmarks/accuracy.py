"""How close does each sampler get to exact answers? DLNs, normal crossings, RRR.

    python benchmarks/accuracy.py                 # the full suite (about an hour on 2 CPU cores)
    python benchmarks/accuracy.py --quick         # small models only, fewer steps (minutes)

For every problem it reports the true λ (Aoyagi / Aoyagi–Watanabe / normal crossing), the exact
finite-(nβ, γ) target where one exists — quadrature for normal crossings, jaxslt.gibbs (exact
block-Gibbs sampling of the same posterior) for deep linear networks — and each sampler's
estimate ± across-chain std, relative error against λ and against the target, chain-steps and
wall time (compile included). Results: benchmarks/results/accuracy-<platform>.md.

Settings rule (the same for every problem, justified in docs/accuracy.md): nβ = n / log n with
n = 1e5 for the regression problems; γ = 1 (the Gibbs target at γ = 1 is within 2% of λ on
these DLNs, at γ = 10 it is 3–9% low, at γ = 100 up to 35% low); step size from the curvature at
w* (h_max by power iteration; where it vanishes — rank 0 at w* = 0 — at w* after 50 exact
Gibbs sweeps, a typical posterior point): ε·(nβ·h_max + γ) = c for SGLD-type steps, and for
RMSProp-SGLD, whose preconditioner scales the stiffest direction by G ≈ 1/√(nβ·h_max),
ε·√(nβ·h_max) = c (c per sampler below); 4 chains, 20% of the steps burn-in. For normal
crossings (zero Hessian at w* = 0) the curvature scale is t·E[w²] ≈ t, so nβ·h_max := t.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _common import write_result

import jaxslt
from jaxslt import gibbs, problems
from jaxslt.curvature import max_hessian_eigenvalue

N = 100_000
# sampler → (c, options): ε = c/(nβ h_max + γ), or c/√(nβ h_max) for rmsprop_sgld
SAMPLERS = {
    "sgld": (0.2, {}),
    "rmsprop_sgld": (0.02, {}),
    "sgnht": (0.02, {"friction": 0.1}),
    "sghmc": (0.02, {"friction": 0.1}),
    "mala": (0.5, {}),
}
DEFAULT_SAMPLERS = "auto,sgld,rmsprop_sgld,sgnht"


def step_size(name, stiffness, gamma):
    """ε from the sampler's c and the stiffness nβ·h_max (the rule in the module docstring)."""
    c = SAMPLERS[name][0]
    return c / math.sqrt(stiffness) if name == "rmsprop_sgld" else c / (stiffness + gamma)


DLNS = [  # (widths, rank): 2 to 5 layers, ranks 0 and > 0, 1e2 to 1e5 parameters
    ([6, 4, 4, 6], 2),
    ([10, 8, 6, 8, 10], 2),
    ([12, 10, 8, 6, 8, 10], 0),
    ([20, 20, 20], 5),
    ([50, 40, 30, 40, 50], 10),
    ([100, 100, 100, 100], 20),
    ([250, 200, 250], 40),
]
CROSSINGS = [((1, 1), 1e4), ((1, 2), 1e4), ((2, 2), 1e4)]


def run_auto(problem, *, nbeta, key):
    """The user's path: ``step_size="auto"`` with defaults (the "auto" column); warnings are
    counted by its diagnostics and calibration cautions, not printed."""
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = jaxslt.estimate_llc(
            problem.loss_fn, problem.params, problem.data, key=key, step_size="auto",
            nbeta=nbeta, progress=False,
        )  # fmt: skip
    cautions = sum(issubclass(c.category, jaxslt.LLCWarning) for c in caught)
    return result, float(result.step_size), time.perf_counter() - start, cautions


def run_sampler(problem, name, *, stiffness, gamma, nbeta, steps, key):
    eps = step_size(name, stiffness, gamma)
    options = SAMPLERS[name][1]
    start = time.perf_counter()
    result = jaxslt.estimate_llc(
        problem.loss_fn, problem.params, problem.data, key=key, step_size=eps, nbeta=nbeta,
        localization=gamma, num_chains=4, num_draws=steps - steps // 5, num_burnin=steps // 5,
        sampler=name, sampler_options=options, progress=False,
    )  # fmt: skip
    return result, eps, time.perf_counter() - start


def row(kind, label, params, truth, target, name, result, eps, steps, wall, warned=None):
    est, std = float(result.llc_mean), float(result.llc_std)
    lam = float(truth.llc)
    rel = est / lam - 1
    rel_t = est / target - 1 if target else math.nan
    return dict(
        kind=kind, problem=label, params=params, truth=lam, m=truth.multiplicity, target=target,
        sampler=name, eps=eps, estimate=est, std=std, rel=rel, rel_target=rel_t,
        chain_steps=4 * steps, wall=wall, gamma=float(result.localization),
        flags=f"{warned} warning(s)" if warned else (
            "ok" if result.diagnostics.ok else f"{len(result.diagnostics.warnings)} warning(s)"
        ),
    )  # fmt: skip


def dln_rows(widths, rank, steps, samplers, gamma=1.0):
    p = problems.deep_linear_network(widths, rank, key=jax.random.key(0), num_examples=N)
    nbeta = jaxslt.default_nbeta(N)
    params = sum(int(w.size) for w in p.params)
    stats = gibbs.dln_statistics(*p.data)
    batch = jax.tree.map(lambda x: x[:4096], p.data)
    h_max = float(max_hessian_eigenvalue(p.loss_fn, p.params, batch, key=jax.random.key(3)))
    if h_max == 0:  # rank 0 at w* = 0: probe a posterior sample (w* after 50 exact Gibbs sweeps)
        probe = tuple(p.params)
        for key in jax.random.split(jax.random.key(4), 50):
            probe = gibbs.gibbs_sweep(key, probe, stats, p.params, nbeta=nbeta,
                                      localization=gamma)  # fmt: skip
        h_max = float(max_hessian_eigenvalue(p.loss_fn, probe, batch, key=jax.random.key(3)))
    start = time.perf_counter()

    def gibbs_target(localization):
        with jax.enable_x64(True):  # the exact reference in float64 (float32 Gibbs can blow up)
            return gibbs.gibbs_llc_from_statistics(
                tuple(jnp.asarray(np.asarray(w), jnp.float64) for w in p.params),
                gibbs.dln_statistics(*(jnp.asarray(np.asarray(a), jnp.float64) for a in p.data)),
                key=jax.random.key(2), nbeta=nbeta, localization=localization, num_chains=4,
                num_sweeps=4000, num_burnin=2000,
            )  # fmt: skip

    exact = gibbs_target(gamma)
    target = float(exact.llc_mean)
    label = f"DLN {'-'.join(map(str, widths))} r={rank}"
    print(f"{label}: {params} params, λ = {float(p.truth.llc):g}, Gibbs target "
          f"{target:.4g} ± {float(exact.llc_std) / 2:.2g} ({time.perf_counter() - start:.0f} s)",
          flush=True)  # fmt: skip
    out = []
    if "auto" in samplers:
        out.append(auto_row("DLN", label, params, p, nbeta,
                            lambda g: float(gibbs_target(g).llc_mean)))  # fmt: skip
    for name in (s for s in samplers if s != "auto"):
        result, eps, wall = run_sampler(
            p, name, stiffness=nbeta * h_max, gamma=gamma, nbeta=nbeta, steps=steps,
            key=jax.random.key(1),
        )  # fmt: skip
        out.append(row("DLN", label, params, p.truth, target, name, result, eps, steps, wall))
        print(f"  {name}: {out[-1]['estimate']:.4g} ± {out[-1]['std']:.2g} "
              f"({out[-1]['rel']:+.1%} vs λ, {out[-1]['rel_target']:+.1%} vs target, "
              f"{wall:.0f} s)", flush=True)  # fmt: skip
    return out


def auto_row(kind, label, params, p, nbeta, target_at):
    """The "auto" column: its estimate against the exact target at the γ it chose."""
    result, eps, wall, warned = run_auto(p, nbeta=nbeta, key=jax.random.key(1))
    target = target_at(float(result.localization))
    steps = result.loss_trace.shape[-1] + result.burnin_loss_trace.shape[-1]
    out = row(kind, label, params, p.truth, target, "auto", result, eps, steps, wall, warned)
    print(
        f"  auto (γ = {out['gamma']:g}): {out['estimate']:.4g} ± {out['std']:.2g} "
        f"({out['rel_target']:+.1%} vs its target {target:.4g}, {wall:.0f} s)",
        flush=True,
    )
    return out


def crossing_rows(k, t, steps, samplers):
    p = problems.normal_crossing(k, t=t, localization=1.0)
    label = f"normal crossing k={k} t={t:g}"
    out = []
    if "auto" in samplers:
        out.append(
            auto_row(
                "crossing",
                label,
                len(k),
                p,
                t,
                lambda g: problems.normal_crossing_target(k, t=t, localization=g),
            )
        )
    for name in [*(s for s in samplers if s != "auto"), "mala"]:
        result, eps, wall = run_sampler(
            p, name, stiffness=t, gamma=p.localization, nbeta=t, steps=steps,
            key=jax.random.key(1),
        )  # fmt: skip
        out.append(row("crossing", label, len(k), p.truth, p.target, name, result, eps, steps,
                       wall))  # fmt: skip
    return out


def markdown(rows, header):
    lines = [
        header,
        "",
        "| problem | params | λ (m) | exact target | sampler | ε | γ | estimate ± std | rel. "
        "err vs λ | vs target | diagnostics | chain-steps | wall (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        target = f"{r['target']:.4g}" if r["target"] else "–"
        vs_t = f"{r['rel_target']:+.1%}" if r["target"] else "–"
        lines.append(
            f"| {r['problem']} | {r['params']:,} | {r['truth']:g} ({r['m']}) | {target} | "
            f"{r['sampler']} | {r['eps']:.3g} | {r['gamma']:g} | {r['estimate']:.4g} ± "
            f"{r['std']:.2g} | "
            f"{r['rel']:+.1%} | {vs_t} | {r['flags']} | {r['chain_steps']:,} | {r['wall']:.0f} |"
        )
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small models, 10k steps")
    parser.add_argument("--steps", type=int, default=None, help="steps per chain (50k; quick 10k)")
    parser.add_argument(
        "--samplers", default=DEFAULT_SAMPLERS,
        help='comma-separated; "auto" is the user\'s path (step_size="auto", defaults), '
        "compared with the exact target at the γ it chose",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    samplers = args.samplers.split(",")
    steps = args.steps or (10_000 if args.quick else 50_000)
    dlns = DLNS[:3] if args.quick else DLNS
    rows = []
    for widths, rank in dlns:
        rows += dln_rows(widths, rank, steps, samplers)
    for k, t in CROSSINGS:
        rows += crossing_rows(k, t, steps, samplers)
    dln = [r for r in rows if r["kind"] == "DLN"]
    summary = []
    for name in samplers:
        errs = np.array([abs(r["rel"]) for r in dln if r["sampler"] == name])
        errs_t = np.array([abs(r["rel_target"]) for r in dln if r["sampler"] == name])
        summary.append(
            f"- {name}: DLN mean |rel. err| vs λ {errs.mean():.1%} (worst {errs.max():.1%}); "
            f"vs the exact Gibbs target {errs_t.mean():.1%} (worst {errs_t.max():.1%})"
        )
    machine = f"{platform.machine()} {jax.devices()[0].device_kind}, jax {jax.__version__}"
    header = (
        f"# Accuracy of LLC estimates against exact answers\n\nMachine: {machine}. Command: "
        f"`python benchmarks/accuracy.py{' --quick' if args.quick else ''} --steps {steps}`. "
        f"Budget: 4 chains × {steps:,} steps per model and sampler (20% burn-in), batch 256, "
        f"n = {N:,}, nβ = n/log n, γ = 1 for DLNs.\n\n" + "\n".join(summary)
    )
    suffix = "-quick" if args.quick else ""
    name = f"accuracy-{jax.devices()[0].platform}{suffix}.md"
    write_result(args.out, name, "\n".join(markdown(rows, header)) + "\n")


if __name__ == "__main__":
    main()
