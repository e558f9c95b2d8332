"""jaxslt vs devinterp 1.3.x: the same LLC estimate, the same posterior, two wall times.

    python benchmarks/vs_devinterp.py                  # installs devinterp into its own venv
    python benchmarks/vs_devinterp.py --skip-install   # reuse benchmarks/.venv-devinterp

The task: a deep linear network 30→40→30 (2,400 parameters) at its teacher point of rank 10
(every layer the zero-padded identity block; noise-free targets, so L_n(w*) = 0), n = 10,000
examples x ~ N(0, I), 4 chains, 1,000 burn-in steps + 1,000 kept draws, batch 500, SGLD with
the same ε, nβ = n/log n and γ. Both halves load the same data and w* from one .npz file.

The two runs sample the SAME posterior with the SAME update (conversion printed at the start):

- jaxslt ``step_size`` ε is the noise variance: w ← w − (ε/2)(nβ∇L_B + γ(w − w*)) + N(0, ε).
  devinterp's SGLD ``lr`` enters as −(lr/2)(nbeta·∇L_B + localization·(w − w0)) + √lr·N(0, 1):
  lr = ε, nbeta = nβ, localization = γ (its nbeta default, batch/log batch, is overridden).
- devinterp's ``num_draws`` excludes burn-in (steps = num_burnin_steps + num_draws ·
  num_steps_bw_draws), as jaxslt's does; both average the minibatch loss on the gradient's
  batch before each update, over the kept draws only, and report the ddof = 1 std over chains.
- Minibatches: i.i.d. indices with replacement on both sides (devinterp gets a
  ``RandomSampler(replacement=True)``); L_n(w*) is the full-data loss on both sides.

devinterp is installed by this script into ``benchmarks/.venv-devinterp`` with torch's
CPU-only build where pip can see one (a ``+cpu`` version on the configured indexes, or
``--torch-index-url``); otherwise PyPI's default torch wheel, run on the CPU, and the report
says so. Both processes are pinned to the same ``--threads`` CPUs (``sched_setaffinity``,
inherited by the devinterp subprocess) and thread counts (torch.set_num_threads, OMP/MKL
variables, XLA's Eigen pool off for one thread).

Timed: devinterp's ``estimate_learning_coeff_with_summary`` call (imports excluded, printed
apart), fed twice: by a ``DataLoader`` over a ``TensorDataset`` as devinterp's examples do
(per-example indexing and collation every step), and by a batch-indexed loader (cheaper);
jaxslt's ``estimate_llc`` as a user calls it, first call (tracing + compilation included) and
a second call with a new key (the compiled program is reused). Reference values: Aoyagi's λ
and the exact finite-(nβ, γ) target by block-Gibbs sampling (``jaxslt.gibbs``, in float64).
Estimates match when Welch's t-test on the per-chain estimates gives p ≥ 0.05.
Results: benchmarks/results/vs_devinterp-cpu.md (flags off their defaults add a suffix).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASK = HERE / "_devinterp_task.py"
DEFAULT_VENV = HERE / ".venv-devinterp"
DEVINTERP_SPEC = "devinterp>=1.3,<1.4"

WIDTHS, RANK, N = (30, 40, 30), 10, 10_000
CHAINS, BURNIN, DRAWS, BATCH = 4, 1_000, 1_000, 500  # the flags' defaults
# ε·(nβ·h_max + γ) ≈ 0.07 (h_max ≈ 2.09 at w*): MALA acceptance ≈ 0.94, within 0.5% of the
# exact target in jaxslt; γ = 10 equilibrates the flat directions in ~1/(εγ) ≈ 3,300 steps
# from the start, which 2,000 steps only partly reach, identically on both sides.
STEP_SIZE, LOCALIZATION = 3e-5, 10.0


def pin_threads(threads: int) -> list[int]:
    """Pin this process (and its children) to ``threads`` CPUs.

    JAX sizes its CPU thread pools and reads XLA_FLAGS when its backend starts, so this runs
    first and jax is imported inside the functions below, never at module level.
    """
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    if threads == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()
    return cpus


# ---------------------------------------------------------------------------------------------
# the devinterp venv


def _pip(venv: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(venv / "bin" / "python"), "-m", "pip", *args]
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, capture_output=True, text=True)


def _cpu_torch_versions(venv: Path) -> list[str]:
    """torch versions with a ``+cpu`` local label that pip's configured indexes offer."""
    out = _pip(venv, "index", "versions", "torch")
    match = re.search(r"Available versions:\s*(.*)", out.stdout)
    versions = [v.strip() for v in match.group(1).split(",")] if match else []
    return [v for v in versions if v.endswith("+cpu")]


def install_devinterp(venv: Path, torch_index_url: str | None) -> str:
    """Create ``venv`` and install devinterp 1.3.x with torch; returns how torch was chosen."""
    if not (venv / "bin" / "python").exists():
        print(f"creating {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if torch_index_url:
        torch_args, how = ["torch", "--index-url", torch_index_url], f"from {torch_index_url}"
    elif cpu := _cpu_torch_versions(venv):
        torch_args, how = [f"torch=={cpu[0]}"], f"torch=={cpu[0]} (CPU-only build)"
    else:
        torch_args, how = ["torch"], "PyPI's default torch wheel (not the CPU-only build)"
    steps = [torch_args, [DEVINTERP_SPEC]]  # torch first, so devinterp keeps that build
    for args in steps:
        out = _pip(venv, "install", *args)
        if out.returncode:
            sys.exit(f"pip install {' '.join(args)} failed:\n{out.stdout[-3000:]}{out.stderr}")
    return how


def run_devinterp(venv: Path, data: Path, settings: dict) -> dict:
    python = venv / "bin" / "python"
    if not python.exists():
        sys.exit(f"{python} does not exist: run without --skip-install to create it")
    out = subprocess.run(
        [str(python), str(TASK), str(data), json.dumps(settings)], capture_output=True, text=True
    )
    if out.returncode:
        sys.exit(f"the devinterp run failed (exit {out.returncode}):\n{out.stderr[-5000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# the jaxslt half and the references


def run_jaxslt(problem, settings: dict, key: int) -> dict:
    import jax

    import jaxslt

    start, cpu_start = time.perf_counter(), time.process_time()
    r = jaxslt.estimate_llc(
        problem.loss_fn, problem.params, problem.data, key=jax.random.key(key),
        step_size=settings["step_size"], nbeta=settings["nbeta"],
        localization=settings["localization"], num_chains=settings["num_chains"],
        num_draws=settings["num_draws"], num_burnin=settings["num_burnin"],
        batch_size=settings["batch_size"], progress=False,
    )  # fmt: skip
    mean = float(r.llc_mean)  # a host float: the whole computation has finished
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return dict(
        llc_mean=mean, llc_std=float(r.llc_std),
        llc_per_chain=[float(v) for v in r.llc_per_chain], wall_s=wall, cpu_s=cpu,
        mala_accept=float(r.mala_accept.mean()), ok=bool(r.diagnostics.ok),
        warnings=list(r.diagnostics.warnings), init_loss=float(r.init_loss),
    )  # fmt: skip


def run_bare(problem, settings: dict, key: int, *, fused: bool) -> tuple[dict, dict]:
    """The floor: SGLD hand-written as one jitted JAX loop (``_bare.bare_sgld``: no argument
    checks, no in-loop checks, no diagnostics), noise from ``jax.random.normal`` or, ``fused``,
    ``jaxslt.noise.normal`` (the same numbers). Timed like ``estimate_llc``: a first call
    (tracing and compilation included) and a second call with another key; the estimate is
    nβ·(mean kept L_B − L_n(w*)) per chain, L_n(w*) on the full data inside the timed call."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from _bare import bare_sgld

    from jaxslt.noise import normal

    burnin = settings["num_burnin"]

    @jax.jit
    def llc_per_chain(params, data, key):
        losses = bare_sgld(
            problem.loss_fn, params, data, key, step_size=settings["step_size"],
            nbeta=settings["nbeta"], gamma=settings["localization"],
            chains=settings["num_chains"], steps=burnin + settings["num_draws"],
            batch=settings["batch_size"], normal=normal if fused else jax.random.normal,
        )  # fmt: skip
        init_loss = problem.loss_fn(params, data)
        return settings["nbeta"] * (jnp.mean(losses[:, burnin:], axis=1) - init_loss)

    runs = []
    for k in (key, key + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        per_chain = np.asarray(llc_per_chain(problem.params, problem.data, jax.random.key(k)))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        runs.append(dict(
            llc_mean=float(per_chain.mean()), llc_std=float(per_chain.std(ddof=1)),
            llc_per_chain=per_chain.tolist(), wall_s=wall, cpu_s=cpu,
        ))  # fmt: skip
    return runs[0], runs[1]


def gibbs_target(problem, nbeta: float, localization: float) -> tuple[float, float]:
    """Exact-sampler E_p[λ̂] at (nβ, γ), float64; returns (mean, standard error over chains)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxslt import gibbs

    with jax.enable_x64(True):  # float32 Gibbs can blow up; the reference is float64
        exact = gibbs.gibbs_llc(
            tuple(jnp.asarray(np.asarray(w), jnp.float64) for w in problem.params),
            *(jnp.asarray(np.asarray(a), jnp.float64) for a in problem.data),
            key=jax.random.key(2), nbeta=nbeta, localization=localization, num_chains=4,
            num_sweeps=4000, num_burnin=2000,
        )  # fmt: skip
    return float(exact.llc_mean), float(exact.llc_std) / math.sqrt(4)


def agreement(a: dict, b: dict) -> tuple[float, float, float, float]:
    """Welch's t-test of equal means on the per-chain estimates: (Δ, combined se, t, p-value).

    se = √(s_a²/c_a + s_b²/c_b) with the ddof = 1 std s over chains; with 4 chains a side the
    t distribution (Welch–Satterthwaite df ≈ 6) rather than the normal sets the threshold.
    """
    import numpy as np
    from scipy import stats

    x, y = np.asarray(a["llc_per_chain"]), np.asarray(b["llc_per_chain"])
    se = math.sqrt(x.var(ddof=1) / x.size + y.var(ddof=1) / y.size)
    test = stats.ttest_ind(x, y, equal_var=False)
    return float(x.mean() - y.mean()), se, float(test.statistic), float(test.pvalue)


def non_defaults(args: argparse.Namespace) -> list[tuple[str, int]]:
    """The sizing flags that differ from the issue's task, as (flag, value)."""
    defaults = dict(threads=1, chains=CHAINS, num_burnin=BURNIN, num_draws=DRAWS, seed=0)
    return [(k.replace("_", "-"), getattr(args, k)) for k, v in defaults.items()
            if getattr(args, k) != v]  # fmt: skip


def mapping(nbeta: float, num_burnin: int, num_draws: int) -> list[str]:
    """jaxslt's settings and the devinterp 1.3 arguments that give the same run."""
    return [
        f"- `step_size` ε = {STEP_SIZE:g} (the noise variance) → SGLD `lr` = {STEP_SIZE:g} "
        "(devinterp: −(lr/2)·(nbeta·∇L_B + localization·(w − w0)) + √lr·N(0, 1))",
        f"- `nbeta` = n/log n = {nbeta:.4f} (n = {N:,}) → `nbeta` = {nbeta:.4f} (devinterp's "
        f"default, batch/log batch, would be {BATCH / math.log(BATCH):.2f})",
        f"- `localization` γ = {LOCALIZATION:g} → `localization` = {LOCALIZATION:g}",
        f"- `num_burnin` = {num_burnin}, `num_draws` = {num_draws}, `thinning` = 1 → "
        f"`num_burnin_steps` = {num_burnin}, `num_draws` = {num_draws}, `num_steps_bw_draws` = 1 "
        "(devinterp's num_draws also excludes burn-in)",
        f"- `batch_size` = {BATCH}, i.i.d. with replacement → `DataLoader(batch_size={BATCH}, "
        "sampler=RandomSampler(replacement=True))` (per-example loader), or a `BatchSampler` "
        "over that sampler (batched loader)",
        "- L_n(w*) on the full data → `init_loss` (devinterp's default: a few minibatches)",
    ]


def report(
    info: dict, devs: dict[str, dict], first: dict, second: dict, bare: dict[str, tuple]
) -> str:
    """The results as markdown."""
    import jax

    import jaxslt

    a = info["args"]
    dev = devs["per-example"]
    torch_build = "CPU-only build" if dev["torch_cuda_build"] is None else "CUDA build, on CPU"
    lines = [
        "# jaxslt vs devinterp 1.3: the same LLC estimate",
        "",
        f"Task: DLN {'→'.join(map(str, WIDTHS))} ({info['params']:,} parameters), teacher rank "
        f"{RANK} at the identity-block point (L_n(w*) = {first['init_loss']:g}), n = {N:,} "
        f"examples, {a.chains} chains × ({a.num_burnin:,} burn-in + {a.num_draws:,} draws), "
        f"batch {BATCH}, SGLD; same data and w* on both sides. Settings, jaxslt → devinterp:",
        "",
        *mapping(info["nbeta"], a.num_burnin, a.num_draws),
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores; each side pinned to "
        f"{a.threads} CPU(s) and {a.threads} thread(s). Load average (1 min) "
        f"{info['load_before']:.2f} before and {info['load_after']:.2f} after the timed runs "
        f"(the run itself adds about {a.threads}; above {os.cpu_count()}, processes queued for "
        f"the CPUs: other work shared the machine). jax {jax.__version__}, jaxslt "
        f"{jaxslt.__version__}; devinterp {dev['devinterp']}, torch {dev['torch']} "
        f"({torch_build}; {info['how_torch']}), Python {dev['python']}. Command: "
        f"`python benchmarks/vs_devinterp.py{''.join(f' --{k} {v}' for k, v in non_defaults(a))}`.",
        "",
        "| run | wall (s) | CPU (s) | speed-up vs devinterp, per-example loader: wall (CPU) | "
        "vs devinterp, batched loader: wall (CPU) | LLC ± std over chains | per chain |",
        "|---|---|---|---|---|---|---|",
    ]
    slow, fast = devs["per-example"], devs["batched"]
    for name, r in (
        (f"devinterp {slow['devinterp']}, SGLD, per-example loader", slow),
        (f"devinterp {fast['devinterp']}, SGLD, batched loader", fast),
        ("jaxslt, first call (incl. compile)", first),
        ("jaxslt, second call (compiled)", second),
        *(
            (f"bare jitted loop, {noise}, {call}", r)
            for noise, runs in bare.items()
            for call, r in zip(("first call (incl. compile)", "second call"), runs, strict=True)
        ),
    ):
        per_chain = ", ".join(f"{v:.1f}" for v in r["llc_per_chain"])
        speedups = [f"{d['wall_s'] / r['wall_s']:.1f}× ({d['cpu_s'] / r['cpu_s']:.1f}×)"
                    for d in (slow, fast)]  # fmt: skip
        lines.append(
            f"| {name} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {' | '.join(speedups)} | "
            f"{r['llc_mean']:.2f} ± {r['llc_std']:.2f} | {per_chain} |"
        )
    diagnostics = "ok" if first["ok"] else "; ".join(first["warnings"])
    lines += [
        "",
        "The per-example loader is how devinterp's examples feed it (a `DataLoader` over a "
        "`TensorDataset`, which indexes and collates 500 examples one by one each step); the "
        "batched loader indexes the tensors once per batch (a `BatchSampler` as the sampler), "
        "which is cheaper; with the same seed both draw the same batches. CPU is the process's "
        "CPU time (`time.process_time`): less sensitive than wall time to other work on the "
        "machine, not immune to it (shared caches). "
        f"Imports are not counted: torch + devinterp {dev['import_s']:.1f} s; jax + jaxslt + "
        f"ArviZ + scipy.stats {info['import_s']:.1f} s. Compilation ≈ first − second call = "
        f"{first['wall_s'] - second['wall_s']:.1f} s. jaxslt's times are `estimate_llc` with its "
        "defaults (argument checks, the full-data L_n(w*), 50 in-loop MALA checks, ArviZ "
        f"diagnostics); MALA acceptance of its steps {first['mala_accept']:.3f}; diagnostics "
        f"(first call): {diagnostics}.",
        "",
        "The bare jitted loops are the floor for any JAX implementation of this task: SGLD "
        "written by hand (`benchmarks/_bare.py`: `value_and_grad` and the update in "
        "`lax.scan`, chains vmapped, L_n(w*) on the full data, no checks or diagnostics), noise "
        "from `jax.random.normal` as a user would write it, or from `jaxslt.noise.normal` (the "
        "same numbers, which XLA's CPU backend compiles much faster than JAX's rolled Threefry "
        "loop). Both get the same keys, so their estimates are identical: the fused noise changes "
        "no number; they differ from jaxslt's by their own draws (other keys).",
        "",
        f"References: Aoyagi's λ = {info['lam']:g}; the exact expected estimate at this (nβ, γ), "
        "by block-Gibbs sampling of the same posterior (`jaxslt.gibbs`, float64, 4 chains × "
        f"4,000 sweeps): {info['target']:.2f} ± {info['target_se']:.2f}.",
        "",
        "Match test: Welch's t-test of equal means on the per-chain estimates, two-sided; the "
        "estimates match when p ≥ 0.05, i.e. |Δ| is within t_0.975(df) combined standard "
        "errors √(s_a²/c_a + s_b²/c_b), s the std over the c chains (≈ 2.4 at 4 chains a side).",
        "",
    ]
    tested = {}
    for loader, d in devs.items():
        if any(d["llc_per_chain"] == t["llc_per_chain"] for t in tested.values()):
            lines.append(f"- devinterp's {loader} loader drew the same batches: same estimates")
            continue
        tested[loader] = d
        for name, r in (("first call", first), ("second call", second)):
            diff, se, t, pvalue = agreement(d, r)
            lines.append(
                f"- devinterp ({loader} loader) − jaxslt ({name}) = {diff:+.2f}, combined se "
                f"{se:.2f}, t = {t:+.2f}, p = {pvalue:.2f}: "
                f"{'match' if pvalue >= 0.05 else 'NO MATCH'}"
            )
        if abs(d["llc_mean_full_init_loss"] - d["llc_mean"]) > 1e-3:
            lines.append(
                f"- devinterp ({loader} loader) recomputed from its loss trace with the "
                f"full-data L_n(w*): {d['llc_mean_full_init_loss']:.2f}"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--skip-install", action="store_true", help="reuse the devinterp venv")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="devinterp's venv")
    parser.add_argument("--torch-index-url", help="a pip index of torch's CPU-only wheels")
    parser.add_argument("--threads", type=int, default=1, help="CPUs for each side (default 1)")
    parser.add_argument("--chains", type=int, default=CHAINS, help="chains (default 4)")
    parser.add_argument("--num-burnin", type=int, default=BURNIN, help="default 1000")
    parser.add_argument("--num-draws", type=int, default=DRAWS, help="kept draws (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="data, devinterp seed, jaxslt keys")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    args = parser.parse_args()
    available = len(os.sched_getaffinity(0))
    if not 1 <= args.threads <= available:
        parser.error(f"--threads must be between 1 and the {available} CPUs available")
    if args.chains < 2:
        parser.error("--chains must be >= 2: the match test needs a std over chains")
    if min(args.num_burnin, args.num_draws) < 1:
        parser.error("--num-burnin and --num-draws must be >= 1")
    cpus = pin_threads(args.threads)  # before anything starts JAX's CPU backend

    # Imports are not timed on either side; jaxslt's diagnostics import ArviZ and scipy.stats
    # lazily on first use, so they are imported here, as torch and devinterp are over there.
    start = time.perf_counter()
    import arviz  # noqa: F401
    import jax
    import numpy as np
    import scipy.stats  # noqa: F401

    import jaxslt
    from jaxslt import problems

    import_s = time.perf_counter() - start

    how_torch = "installed earlier (--skip-install)"
    if not args.skip_install:
        how_torch = install_devinterp(args.venv, args.torch_index_url)

    problem = problems.deep_linear_network(
        WIDTHS, RANK, key=jax.random.key(args.seed), num_examples=N
    )
    nbeta = jaxslt.default_nbeta(N)
    settings = dict(
        step_size=STEP_SIZE, nbeta=nbeta, localization=LOCALIZATION, num_chains=args.chains,
        num_burnin=args.num_burnin, num_draws=args.num_draws, batch_size=BATCH,
        seed=args.seed, threads=args.threads,
    )  # fmt: skip
    params = sum(int(w.size) for w in problem.params)
    print(
        f"DLN {'→'.join(map(str, WIDTHS))} ({params:,} parameters), teacher rank {RANK}, "
        f"n = {N:,}; each side pinned to CPUs {cpus}, {args.threads} thread(s)"
    )
    print("settings, jaxslt → devinterp 1.3 (the same posterior and update):")
    print("\n".join(mapping(nbeta, args.num_burnin, args.num_draws)), flush=True)

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "dln.npz"
        x, y = (np.asarray(a) for a in problem.data)
        layers = {f"w_{i}": np.asarray(w) for i, w in enumerate(problem.params)}
        np.savez(data, x=x, y=y, num_layers=len(layers), **layers)
        devs = {}
        for loader in ("per-example", "batched"):
            print(f"running devinterp ({loader} loader) ...", flush=True)
            d = devs[loader] = run_devinterp(args.venv, data, {**settings, "loader": loader})
            print(
                f"  devinterp {d['devinterp']}, torch {d['torch']}: {d['llc_mean']:.2f} ± "
                f"{d['llc_std']:.2f} in {d['wall_s']:.1f} s",
                flush=True,
            )
    print("running jaxslt (twice: compiling, then compiled) ...", flush=True)
    first = run_jaxslt(problem, settings, key=args.seed + 1)
    second = run_jaxslt(problem, settings, key=args.seed + 2)
    print("running the bare jitted loops (twice each) ...", flush=True)
    bare = {
        "jax.random.normal": run_bare(problem, settings, args.seed + 3, fused=False),
        "jaxslt.noise.normal": run_bare(problem, settings, args.seed + 3, fused=True),
    }
    load_after = os.getloadavg()[0]
    print("computing the exact Gibbs target ...", flush=True)
    target, target_se = gibbs_target(problem, nbeta, LOCALIZATION)

    info = dict(
        args=args, params=params, nbeta=nbeta, import_s=import_s, how_torch=how_torch,
        load_before=load_before, load_after=load_after, lam=float(problem.truth.llc),
        target=target, target_se=target_se,
    )  # fmt: skip
    text = report(info, devs, first, second, bare)
    print()
    from _common import write_result  # imports jax: only after pin_threads

    suffix = "".join(f"-{k}{v}" for k, v in non_defaults(args))
    write_result(args.out, f"vs_devinterp-cpu{suffix}.md", text)


if __name__ == "__main__":
    main()
