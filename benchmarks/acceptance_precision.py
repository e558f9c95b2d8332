"""How precisely the in-loop MALA acceptance is computed in float32, against the parameter count.

    python benchmarks/acceptance_precision.py

On a separable quadratic L(w) = ½·Σ h_i·w_i² (h_i ~ U[0.5, 1.5], nβ = 10, γ = 1, w* = 0) with d
parameters, 16 SGLD transitions w → w′ from the posterior at a step ε = 0.05·d^(−1/3) (so the
exact acceptance stays near 0.9 at every d). From the same float32 positions, losses and
gradients, the acceptance α is computed three ways:

- float64, directly: U(w) − U(w′) + log q(w|w′) − log q(w′|w) (the reference);
- ``jaxslt.kernels.sgld_acceptance`` (float32, the log ratio taken in differences);
- float32, directly (what jaxslt computed before commit 4798bf3): two sums of ~d/2 subtracted.

Printed per d: the mean exact α and the mean and largest |α − exact| of both float32 forms.
Results: benchmarks/results/acceptance_precision-cpu.md.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _common import write_result

from jaxslt.kernels import sgld, sgld_acceptance
from jaxslt.posterior import localized_posterior

NBETA, GAMMA, TRANSITIONS = 10.0, 1.0, 16


def measure(d: int) -> tuple[float, float, float, float, float]:
    h = jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.5, d), jnp.float32)
    eps = 0.05 * d ** (-1 / 3)
    post = localized_posterior(
        lambda w, batch: 0.5 * jnp.sum(h * w**2), jnp.zeros(d), nbeta=NBETA, localization=GAMMA
    )

    @jax.jit
    def both(w, v, lw, gw, lv, gv):
        ours = sgld_acceptance(post, w, v, None, eps, (lw, gw), (lv, gv))
        u0, u1 = (
            NBETA * lw + 0.5 * GAMMA * jnp.sum(w * w),
            NBETA * lv + 0.5 * GAMMA * jnp.sum(v * v),
        )
        forward = jnp.sum((v - (w + 0.5 * eps * gw)) ** 2) / (2 * eps)
        backward = jnp.sum((w - (v + 0.5 * eps * gv)) ** 2) / (2 * eps)
        return ours, jnp.minimum(1.0, jnp.exp(u0 - u1 - backward + forward))

    exact, ours, direct = [], [], []
    for seed in range(TRANSITIONS):
        k1, k2 = jax.random.split(jax.random.key(seed))
        w = jax.random.normal(k1, (d,)) / jnp.sqrt(NBETA * h + GAMMA)
        new = sgld(post).step(k2, sgld(post).init(w), None, eps)[0].position
        (lw, gw), (lv, gv) = post.value_and_grad(w, None), post.value_and_grad(new, None)
        x, y, g0, g1 = (np.asarray(a, np.float64) for a in (w, new, gw, gv))
        log_ratio = (
            NBETA * (float(lw) - float(lv)) + 0.5 * GAMMA * (x @ x - y @ y)
            - np.sum((x - y - 0.5 * eps * g1) ** 2) / (2 * eps)
            + np.sum((y - x - 0.5 * eps * g0) ** 2) / (2 * eps)
        )  # fmt: skip
        exact.append(min(1.0, float(np.exp(log_ratio))))
        a, b = both(w, new, lw, gw, lv, gv)
        ours.append(float(a))
        direct.append(float(b))
    exact, ours, direct = map(np.asarray, (exact, ours, direct))
    err_ours, err_direct = np.abs(ours - exact), np.abs(direct - exact)
    return exact.mean(), err_ours.mean(), err_ours.max(), err_direct.mean(), err_direct.max()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=float, nargs="*", default=[1e4, 1e5, 1e6, 1e7])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    rows = [
        "| parameters d | exact α (mean) | in differences: mean / max abs. error | direct float32 "
        "(before): mean / max abs. error |",
        "|---|---|---|---|",
    ]
    for d in map(int, args.sizes):
        mean, ours, ours_max, direct, direct_max = measure(d)
        errors = f"{ours:.1e} / {ours_max:.1e} | {direct:.1e} / {direct_max:.1e}"
        rows.append(f"| {d:.0e} | {mean:.3f} | {errors} |")
        print(rows[-1], flush=True)
    header = (
        f"# MALA acceptance precision against the parameter count\n\nMachine: {platform.machine()} "
        f"{jax.default_backend()}, jax {jax.__version__}. Command: `python "
        "benchmarks/acceptance_precision.py`. Separable quadratic, nβ = 10, γ = 1, "
        f"{TRANSITIONS} SGLD transitions per d at ε = 0.05·d^(−1/3); errors against the float64 "
        "direct form from the same float32 positions, losses and gradients.\n\n"
    )
    name = f"acceptance_precision-{jax.default_backend()}.md"
    write_result(args.out, name, header + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
