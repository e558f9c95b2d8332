"""Do the diagnostics flag the runs that are wrong? And does calibration pick good settings?

    python benchmarks/diagnostics.py     # writes benchmarks/results/diagnostics-<platform>.md

On small deep linear networks (n = 1e5, nβ = n/log n, true λ from Aoyagi's formula) SGLD runs
with good settings and with deliberately bad ones — tiny ε, huge ε, tiny γ, too few steps — and
``step_size="auto"`` (calibration under the same total budget). A run is *off* when its estimate
is more than 20% from λ; *flagged* when ``result.diagnostics`` raised any warning. The table
counts flagged/not flagged × off/not off; the goal is no unflagged run that is off.
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings
from pathlib import Path

import jax
from _common import write_result

import jaxslt
from jaxslt import problems
from jaxslt.calibration import max_hessian_eigenvalue

N = 100_000
MODELS = [([6, 4, 4, 6], 2), ([10, 8, 6, 8, 10], 2), ([20, 20, 20], 5), ([8, 6, 4, 6, 8], 2)]
STEPS = 20_000  # per chain, the budget of every run (calibration included for "auto")
# name → (c in ε = c/(nβ h_max + γ), γ, total steps)
SETTINGS = {
    "good": (0.1, 1.0, STEPS),
    "tiny ε": (0.001, 1.0, STEPS),
    "huge ε": (3.0, 1.0, STEPS),
    "tiny γ": (0.1, 0.001, STEPS),
    "too few steps": (0.1, 1.0, 500),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    nbeta = jaxslt.default_nbeta(N)
    rows = []
    for widths, rank in MODELS:
        p = problems.deep_linear_network(widths, rank, key=jax.random.key(0), num_examples=N)
        batch = jax.tree.map(lambda x: x[:4096], p.data)
        h_max = float(max_hessian_eigenvalue(p.loss_fn, p.params, batch, key=jax.random.key(3)))
        lam = float(p.truth.llc)
        label = f"DLN {'-'.join(map(str, widths))} r={rank}"
        runs = {
            name: dict(step_size=c / (nbeta * h_max + gamma), localization=gamma,
                       num_burnin=steps // 5, num_draws=steps - steps // 5)
            for name, (c, gamma, steps) in SETTINGS.items()
        }  # fmt: skip
        # calibration: 6 steps × γ ∈ {1, 10} × 4 chains × 3,000 steps, then the recommended run
        cal = jaxslt.calibrate(
            p.loss_fn, p.params, p.data, key=jax.random.key(2), localizations=(1.0, 10.0),
            num_burnin=1000, num_draws=2000,
        )  # fmt: skip
        if cal.recommended:
            runs["auto"] = cal.recommended | dict(num_draws=STEPS - STEPS // 5)
        for name, kw in runs.items():
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    result = jaxslt.estimate_llc(
                        p.loss_fn, p.params, p.data, key=jax.random.key(1), num_chains=4,
                        progress=False, **kw,
                    )  # fmt: skip
                except FloatingPointError as err:  # every chain diverged: loudly flagged
                    rows.append(dict(model=label, setting=name, truth=lam, estimate=float("nan"),
                                     off=True, flagged=True, eps=kw["step_size"],
                                     gamma=kw.get("localization"), warnings=str(err)[:80],
                                     wall=time.perf_counter() - start))  # fmt: skip
                    continue
            est = float(result.llc_mean)
            diag = result.diagnostics
            rows.append(
                dict(
                    model=label, setting=name, truth=lam, estimate=est,
                    off=abs(est / lam - 1) > 0.2, flagged=not diag.ok,
                    eps=float(result.step_size), gamma=float(result.localization),
                    warnings="; ".join(w.split(":")[0] for w in diag.warnings),
                    wall=time.perf_counter() - start,
                )
            )  # fmt: skip
            r = rows[-1]
            print(
                f"{label} {name}: {est:.4g} vs λ {lam:g} ({est / lam - 1:+.1%}), "
                f"flagged={r['flagged']} [{r['warnings']}] {r['wall']:.0f} s",
                flush=True,
            )

    counts = {(f, o): 0 for f in (True, False) for o in (True, False)}
    for r in rows:
        counts[(r["flagged"], r["off"])] += 1
    auto = [r for r in rows if r["setting"] == "auto"]
    machine = f"{platform.machine()} {jax.devices()[0].device_kind}, jax {jax.__version__}"
    lines = [
        "# Diagnostics: flagged vs off (> 20% from λ)",
        "",
        f"Machine: {machine}. Command: `python benchmarks/diagnostics.py`. SGLD, 4 chains, "
        f"{STEPS:,} steps per run (20% burn-in) unless the setting says otherwise, n = {N:,}, "
        "nβ = n/log n, batch 256; ε = c/(nβ·h_max + γ) with h_max the Hessian's at w*.",
        "",
        "| | off by > 20% | within 20% |",
        "|---|---|---|",
        f"| flagged | {counts[(True, True)]} | {counts[(True, False)]} |",
        f"| not flagged | {counts[(False, True)]} | {counts[(False, False)]} |",
        "",
        f"Calibrated (`jaxslt.calibrate`, 12 cells × 4 chains × 3,000 steps, then the "
        f"recommended settings): {sum(abs(r['estimate'] / r['truth'] - 1) <= 0.1 for r in auto)}"
        f" of {len(auto)} within 10% of λ (of {len(MODELS)} models).",
        "",
        "| model | setting | ε | γ | estimate | λ | rel. err | flagged | warnings | wall (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['setting']} | {r['eps']:.3g} | {r['gamma']} | "
            f"{r['estimate']:.4g} | {r['truth']:g} | {r['estimate'] / r['truth'] - 1:+.1%} | "
            f"{'yes' if r['flagged'] else 'no'} | {r['warnings']} | {r['wall']:.0f} |"
        )
    write_result(args.out, f"diagnostics-{jax.devices()[0].platform}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
