"""The user's path: ``estimate_llc(..., step_size="auto")`` with nothing else tuned.

    python benchmarks/auto.py            # writes benchmarks/results/auto-<platform>.md

For each problem: the estimate, the exact target of the same finite-(nβ, γ) posterior at the γ
auto chose (quadrature for normal crossings, the Gaussian closed form for the regular model,
block-Gibbs for the deep linear network), the error, whether the run warned (an ``LLCWarning``
or a raised error), and the cost: wall time of the whole auto call (calibration and its
compiles included) against a second call of the final run's settings alone (its compile
included). Problems: devinterp's normal-crossing potentials (as ``problems.normal_crossing``
with nβ = t = 1000/log 1000 — its fixture's data only rescale t), the regular linear-Gaussian
model, and the README demo's deep linear network.
"""

from __future__ import annotations

import argparse
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


def _target(name, p, gamma, nbeta):
    if name.startswith("normal crossing"):
        k = tuple(int(v) for v in name.split("k=")[1].split()[0].split(","))
        return problems.normal_crossing_target(k, t=nbeta, localization=gamma)
    if name.startswith("regular"):
        x, _ = p.data
        eigs = np.linalg.eigvalsh(np.asarray(x, np.float64).T @ np.asarray(x, np.float64) / len(x))
        return jaxslt.truth.quadratic_posterior(eigs, nbeta=nbeta, localization=gamma)
    with jax.enable_x64(True):
        exact = gibbs.gibbs_llc(
            tuple(jnp.asarray(np.asarray(w), jnp.float64) for w in p.params),
            *(jnp.asarray(np.asarray(a), jnp.float64) for a in p.data),
            key=jax.random.key(7), nbeta=nbeta, localization=gamma,
            num_chains=4, num_sweeps=2000, num_burnin=200,
        )  # fmt: skip
    return float(exact.llc_mean)


def _problems():
    nbeta = 1000 / np.log(1000)
    for k in [(1, 1), (1, 2), (2, 2), (0, 1)]:
        p = problems.normal_crossing(k, t=nbeta)
        yield f"normal crossing k={k[0]},{k[1]}", p, dict(batch_size=2)
    p = problems.regular_linear_gaussian(8, key=jax.random.key(0), num_examples=5000)
    yield "regular d=8, n=5000", p, {}
    p = problems.deep_linear_network([6, 4, 4, 6], 2, key=jax.random.key(0), num_examples=10_000)
    yield "DLN 6-4-4-6 r=2 (demo)", p, {}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    rows = []
    for name, p, kw in _problems():
        nbeta = p.nbeta if name.startswith("normal crossing") else None
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                r = jaxslt.estimate_llc(
                    p.loss_fn, p.params, p.data, key=jax.random.key(1), step_size="auto",
                    nbeta=nbeta, progress=False, **kw,
                )  # fmt: skip
            except (RuntimeError, FloatingPointError) as err:
                rows.append((name, "raised", str(err).splitlines()[0][:80]))
                print(rows[-1], flush=True)
                continue
        auto_s = time.perf_counter() - t0
        llcw = [str(c.message) for c in caught if issubclass(c.category, jaxslt.LLCWarning)]
        gamma, nb = float(r.localization), float(r.nbeta)
        jax.clear_caches()  # the final run alone pays its own compile, as a fresh call would
        t0 = time.perf_counter()
        jax.block_until_ready(
            jaxslt.estimate_llc(
                p.loss_fn, p.params, p.data, key=jax.random.key(2), step_size=float(r.step_size),
                localization=gamma, nbeta=nb, num_burnin=r.burnin_loss_trace.shape[1],
                num_draws=r.loss_trace.shape[1], progress=False, diagnostics=False, **kw,
            ).llc_mean
        )  # fmt: skip
        final_s = time.perf_counter() - t0
        target = _target(name, p, gamma, nb)
        err = float(r.llc_mean) / target - 1
        rows.append(
            (
                name,
                f"{float(r.llc_mean):.4g}",
                f"{target:.4g}",
                f"{float(p.truth.llc):.4g}",
                f"{err:+.1%}",
                f"{float(r.step_size):.3g}",
                f"{gamma:g}",
                "yes" if llcw else "no",
                f"{auto_s:.1f}",
                f"{final_s:.1f}",
                "; ".join(w[:90] for w in llcw),
            )
        )
        print(rows[-1], flush=True)
    header = (
        "| problem | auto λ̂ | exact target at its (nβ, γ) | λ | error vs target | ε | γ | "
        "warned | auto wall (s) | final run alone (s) | warnings |\n|" + "---|" * 11
    )
    table = "\n".join(
        "| " + " | ".join(row) + " |" if len(row) == 11 else f"| {row[0]} | {row[1]}: {row[2]} |"
        for row in rows
    )
    errors = [abs(float(r[4].rstrip("%")) / 100) for r in rows if len(r) == 11]
    ok = [r for r in rows if len(r) == 11 and abs(float(r[4].rstrip("%"))) <= 10]
    text = (
        f'# `step_size="auto"`, nothing else tuned\n\nMachine: {platform.machine()}, '
        f"{jax.devices()[0].platform}, {jax.device_count()} device(s). Command: "
        "`python benchmarks/auto.py`.\n\n" + header + "\n" + table + "\n\n"
        f"Within 10% of the exact target: {len(ok)} of {len(rows)}; mean |error| "
        f"{np.mean(errors):.1%} over the {len(errors)} that returned.\n"
    )
    write_result(args.out, f"auto-{jax.devices()[0].platform}.md", text)


if __name__ == "__main__":
    main()
