"""Does ``detect_stages`` find the stages that are there, and only those?

    python benchmarks/stages.py      # writes benchmarks/results/stages-cpu.md
    python benchmarks/stages.py --oracle 12 --draws 2000   # what any detector could do at N = 12

Curves on log-spaced steps 10^(1 + 4x), x ∈ [0, 1], N checkpoints evenly spaced in x, with
Gaussian errors of adjacent-checkpoint correlation ρ (AR(1) in checkpoint order: the
correlation that one key for every checkpoint, common random numbers, creates) passed to
``detect_stages(correlation=ρ)``.

- **False stages**: a constant curve plus noise; a draw is wrong when it has more than one
  stage. Goal ≤ 1% of draws, at N = 6 … 300, with ``llc_std`` given and (N ≥ 12) estimated.
- **Rise–plateau–rise–fall**: 0 → 0.5 at x = 0.2, flat to 0.4, → 1 (the peak) at 0.6, → 0.4 at
  x = 1; noise σ = 3% of the peak, ``llc_std`` given. A draw is right when the stage kinds are
  exactly rising, flat, rising, falling; its boundaries are right when each is within one
  checkpoint spacing of its true corner. Goal ≥ 95% right at N = 6, 12, 30, 100.
- **Bent rise**: the two-corner curve closest to that one (a rise that steepens at x = 0.465,
  then the fall), same noise; a draw is wrong when it has a flat stage. The price of finding
  short plateaus: how often one is read into a rise that only bends.
"""

from __future__ import annotations

import argparse
import itertools
import time
import warnings
from pathlib import Path

import numpy as np
from _common import write_result

from jaxslt.stages import DEFAULT_CORRELATION, detect_stages

CORNERS_X = np.array([0.0, 0.2, 0.4, 0.6, 1.0])
CORNERS_Y = np.array([0.0, 0.5, 0.5, 1.0, 0.4])
KINDS = ["rising", "flat", "rising", "falling"]
# the two-corner curve closest to it (least squares over x ∈ [0, 1], corners on a 0.005 grid):
# a rise that steepens at x = 0.465, no plateau — where a detector that finds the plateau
# too eagerly reads one
BENT_X = np.array([0.0, 0.465, 0.6, 1.0])
BENT_Y = np.array([0.143, 0.664, 1.0, 0.4])


def ar1_noise(rng: np.random.Generator, n: int, rho: float) -> np.ndarray:
    """Unit-variance AR(1) errors: e_0 ~ N(0, 1), e_t = ρ e_{t−1} + √(1 − ρ²) z_t."""
    z = rng.standard_normal(n)
    e = np.empty(n)
    e[0] = z[0]
    for t in range(1, n):
        e[t] = rho * e[t - 1] + np.sqrt(1.0 - rho**2) * z[t]
    return e


def false_stages(n: int, draws: int, rho: float, assumed: float, given: bool, seed: int) -> int:
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 1.0, n)
    steps = 10.0 ** (1.0 + 4.0 * x)
    wrong = 0
    for _ in range(draws):
        y = 50.0 + 5.0 * ar1_noise(rng, n, rho)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            st = detect_stages(steps, y, llc_std=5.0 if given else None, correlation=assumed)
        wrong += st.num_stages > 1
    return wrong


def rise_fall(n: int, draws: int, rho: float, seed: int) -> tuple[int, int, int, float]:
    """Draws with the stage sequence right, with its boundaries right too, wrong without a
    ``StagesWarning``, and the median χ²/N of the stage model."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 1.0, n)
    steps = 10.0 ** (1.0 + 4.0 * x)
    truth = np.interp(x, CORNERS_X, CORNERS_Y)
    spacing = 1.0 / (n - 1)
    right = bounds_right = silent = 0
    chi2 = []
    for _ in range(draws):
        y = truth + 0.03 * ar1_noise(rng, n, rho)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            st = detect_stages(steps, y, llc_std=0.03, correlation=rho)
        ok = list(st.stages.kind) == KINDS
        right += ok
        silent += not ok and not caught
        if ok:
            found = (np.log10(st.boundaries[1:-1]) - 1.0) / 4.0
            bounds_right += bool(np.all(np.abs(found - CORNERS_X[1:-1]) <= spacing + 1e-9))
        chi2.append(np.mean(((y - st.model) / st.noise) ** 2))
    return right, bounds_right, silent, float(np.median(chi2))


def bent_rise(n: int, draws: int, rho: float, seed: int) -> int:
    """Draws of the bent rise (``BENT_X``, ``BENT_Y``; noise 3% of the peak, llc_std given)
    in which ``detect_stages`` reports a flat stage: a plateau that is not there."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 1.0, n)
    steps = 10.0 ** (1.0 + 4.0 * x)
    truth = np.interp(x, BENT_X, BENT_Y)
    wrong = 0
    for _ in range(draws):
        y = truth + 0.03 * ar1_noise(rng, n, rho)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            st = detect_stages(steps, y, llc_std=0.03, correlation=rho)
        wrong += "flat" in list(st.stages.kind)
    return wrong


def oracle_power(n: int, draws: int, seed: int = 0) -> list[tuple[float, float, float]]:
    """What any detector could do at ρ = 0: the likelihood-ratio test of the best continuous
    3-knot line against the best 2-knot line (knots on a 50-point grid of x), which knows the
    curve has at most three corners. Null: the 2-knot curve closest to the truth. Returns
    (false rate, threshold in χ² units, power under the truth) at false rates 5% and 1%."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0.0, 1.0, n)
    truth = np.interp(x, CORNERS_X, CORNERS_Y)
    grid = np.linspace(0.01, 0.99, 50)

    def residual_makers(k):  # I − P for every set of k knots
        out = []
        for knots in itertools.combinations(grid, k):
            design = np.array([np.ones(n), x, *(np.maximum(x - q, 0.0) for q in knots)]).T
            q, _ = np.linalg.qr(design)
            out.append(np.eye(n) - q @ q.T)
        return np.array(out)

    m2, m3 = residual_makers(2), residual_makers(3)

    def best(m, ys):  # the least residual sum of squares over the knot sets, per curve
        out = np.full(len(ys), np.inf)
        for i in range(0, len(m), 500):
            out = np.minimum(out, np.einsum("dn,snm,dm->sd", ys, m[i : i + 500], ys).min(0))
        return out

    closest = m2[np.argmin(np.einsum("n,snm,m->s", truth, m2, truth))]
    null = truth - closest @ truth  # the projection of the truth on that 2-knot model
    sigma = 0.03
    gains = []
    for mean in (null, truth):
        ys = mean + sigma * rng.standard_normal((draws, n))
        gains.append((best(m2, ys) - best(m3, ys)) / sigma**2)
    return [
        (
            q,
            float(np.quantile(gains[0], 1 - q)),
            float(np.mean(gains[1] > np.quantile(gains[0], 1 - q))),
        )
        for q in (0.05, 0.01)
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, default=400)
    parser.add_argument("--rho", type=float, default=DEFAULT_CORRELATION)
    parser.add_argument(
        "--oracle", type=int, default=None, metavar="N",
        help="print the power of the oracle test (oracle_power) at N checkpoints and exit",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.oracle is not None:
        for rate, threshold, power in oracle_power(args.oracle, args.draws):
            print(f"false rate {rate:.0%}: threshold {threshold:.1f}, power {power:.1%}")
        return
    rho, draws = args.rho, args.draws
    start = time.perf_counter()
    lines = [
        "# detect_stages: false stages and stage recovery",
        "",
        f"`python benchmarks/stages.py --draws {draws} --rho {rho}`; AR(1) noise of adjacent "
        f"correlation ρ = {rho}, passed as `correlation`.",
        "",
        "## False stages on pure noise (goal ≤ 1%)",
        "",
        "| N | llc_std | correlation passed | draws with > 1 stage |",
        "|---|---|---|---|",
    ]
    for n in (6, 12, 30, 100, 300):
        d = draws if n <= 100 else max(draws // 4, 50)
        for given in (True, False):
            if not given and n < 12:
                continue
            for assumed in sorted({rho, 0.0}, reverse=True):
                w = false_stages(n, d, rho, assumed, given, seed=n)
                lines.append(
                    f"| {n} | {'given' if given else 'estimated'} | {assumed} | "
                    f"{w}/{d} ({100 * w / d:.1f}%) |"
                )
    lines += [
        "",
        "## Rise–plateau–rise–fall, noise 3% of the peak, llc_std given (goal ≥ 95%)",
        "",
        "| N | stage sequence right | and boundaries within one spacing | wrong with no "
        "warning | median χ²/N of the stage model |",
        "|---|---|---|---|---|",
    ]
    for n in (6, 12, 30, 100):
        r, b, q, c = rise_fall(n, draws, rho, seed=1000 + n)
        lines.append(
            f"| {n} | {r}/{draws} ({100 * r / draws:.1f}%) | {b}/{draws} ({100 * b / draws:.1f}%)"
            f" | {q}/{draws} ({100 * q / draws:.1f}%) | {c:.2f} |"
        )
    lines += [
        "",
        "## The bent rise: a plateau read where there is none",
        "",
        "| N | draws with a flat stage |",
        "|---|---|",
    ]
    for n in (6, 12, 30, 100):
        w = bent_rise(n, draws, rho, seed=2000 + n)
        lines.append(f"| {n} | {w}/{draws} ({100 * w / draws:.1f}%) |")
    lines += ["", f"Wall time {time.perf_counter() - start:.0f} s.", ""]
    write_result(args.out, "stages-cpu.md", "\n".join(lines))


if __name__ == "__main__":
    main()
