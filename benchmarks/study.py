"""A 100-cell study of small deep linear networks: the study runner vs plain loops, and
repeated kill -9 / resume.

    python benchmarks/study.py                 # writes benchmarks/results/study-cpu.md
    python benchmarks/study.py --kills 10 --skip-naive --out /tmp/study.md   # a quicker look

The cells: DLN 6→4→4→6 (teacher rank 2, n = 2000, jaxslt.study.examples.dln_problem), 4
checkpoints of its gradient-descent training (steps 0, 300, 1000, 3000, saved as an orbax
directory) × 5 step sizes × 5 seeds; 4 chains × (200 burn-in + 1000 draws), batch 64, γ = 10.

Timed, each in a fresh process, from the first call to the last result (imports excluded); the
first three variants ``--repeats`` times, interleaved (the best run reported), the naive loop
once:

- **study**: ``jaxslt.study.run`` on a fresh store with an empty compilation cache (orbax
  loading, SQLite rows and sidecars included);
- **study, warm cache**: the same on another fresh store in a new process, JAX's persistent
  compilation cache left by the first (what a restarted study pays);
- **plain loop, as a naive script**: for each cell, call the problem's setup function
  (``dln_problem``: it builds the data and defines ``loss_fn`` inside, as user code does),
  load the checkpoint from the orbax directory, call ``estimate_llc``. Every call gets a new
  ``loss_fn`` object, so every cell compiles its program again;
- **plain loop, careful**: the setup called once and each checkpoint loaded once, then the same
  ``estimate_llc`` calls (one compile): the floor the runner's bookkeeping is measured against.

Compilations are counted with JAX's monitoring events. All four must give the same estimates
bit for bit (same programs, same keys); the script checks it.

Kill/resume: ``jaxslt study run`` subprocesses on a fresh store, each SIGKILLed at a random
moment (20%: uniformly in the first 4 s; otherwise 0-0.5 s after it stored a new cell), until
``--kills`` kills have landed or the study is done; then one run to completion. Counted: cells
lost (grid cells without a done row), duplicated (rows per cell id > 1, or a done row that
changed after it was first seen, i.e. a finished cell run again), the integrity check, and
every sidecar loading.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WIDTHS = [6, 4, 4, 6]
RANK = 2
NUM_EXAMPLES = 2000
STEPS = [0, 300, 1000, 3000]
STEP_SIZES = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3]
SEEDS = [0, 1, 2, 3, 4]
SETTINGS = {
    "num_chains": 4,
    "num_draws": 1000,
    "num_burnin": 200,
    "batch_size": 64,
    "localization": 10.0,
}
PROBLEM_KWARGS = {"widths": WIDTHS, "rank": RANK, "num_examples": NUM_EXAMPLES}


def spec_toml(store: str, checkpoints: Path) -> str:
    settings = "\n".join(f"{k} = {v}" for k, v in SETTINGS.items())
    return f"""
[study]
name = "dln-100"
problem = "jaxslt.study.examples:dln_problem"
problem_kwargs = {{ widths = {WIDTHS}, rank = {RANK}, num_examples = {NUM_EXAMPLES} }}
store = "{store}"

[checkpoints]
directory = "{checkpoints}"

[settings]
{settings}

[grid]
step_size = {STEP_SIZES}
seed = {SEEDS}
"""


def count_compiles():
    """Start counting backend compilations; returns a dict updated in place."""
    import jax

    counts = {"compiles": 0, "compile_s": 0.0, "cache_hits": 0}

    def timed(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":  # hits included
            counts["compiles"] += 1
            counts["compile_s"] += duration

    def hit(event, **_):
        if event == "/jax/compilation_cache/cache_hits":
            counts["cache_hits"] += 1

    jax.monitoring.register_event_duration_secs_listener(timed)
    jax.monitoring.register_event_listener(hit)
    return counts


def variant(name: str, workdir: Path, rep: int) -> dict:
    """One timed variant, in this (fresh) process; returns its figures and estimates."""
    import jax

    import jaxslt
    from jaxslt import study
    from jaxslt.checkpoints import load_checkpoint
    from jaxslt.study.examples import dln_problem

    counts = count_compiles()
    cells = [(s, e, seed) for s in STEPS for e in STEP_SIZES for seed in SEEDS]
    estimates = {}
    start = time.perf_counter()
    if name.startswith("study"):
        spec_path = workdir / f"{name}-{rep}.toml"  # a fresh store per repetition
        spec_path.write_text(spec_toml(f"{name}-{rep}.sqlite", workdir / "checkpoints"))
        cache = workdir / f"{rep}.jaxcache"  # the warm variant reuses the cold one's cache
        summary = study.run(spec_path, progress=False, compilation_cache=cache)
        elapsed = time.perf_counter() - start
        assert summary.ran == len(cells) and summary.failed == 0, summary
        table = study.load_results(spec_path)
        for row in table.itertuples():
            estimates[f"{row.step} {row.step_size} {row.seed}"] = row.llc_mean
    else:
        naive = name == "naive"
        if not naive:
            loss_fn, data, _, like = dln_problem(**PROBLEM_KWARGS)
            params = {s: load_checkpoint(workdir / "checkpoints", s, like=like) for s in STEPS}
        for step, eps, seed in cells:
            if naive:  # what a script that sets everything up per cell does
                loss_fn, data, _, like = dln_problem(**PROBLEM_KWARGS)
                w = load_checkpoint(workdir / "checkpoints", step, like=like)
            else:
                w = params[step]
            result = jaxslt.estimate_llc(
                loss_fn, w, data, key=jax.random.key(seed), step_size=eps, progress=False,
                **SETTINGS,
            )  # fmt: skip
            estimates[f"{step} {eps} {seed}"] = float(result.llc_mean)
        elapsed = time.perf_counter() - start
    return {"name": name, "wall_s": elapsed, **counts, "cells": len(cells), "estimates": estimates}


def run_variant(name: str, workdir: Path, rep: int) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--variant", name, "--workdir", str(workdir), "--rep", str(rep)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"variant {name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def done_rows(store: Path) -> dict[str, tuple]:
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as conn:
            rows = conn.execute(
                "SELECT cell_id, finished_at, llc_mean FROM cells WHERE status = 'done'"
            ).fetchall()
    except sqlite3.OperationalError:
        return {}
    return {r[0]: r[1:] for r in rows}


def kill_resume(workdir: Path, kills: int, seed: int) -> dict:
    """Kill -9 a study run at random moments ``kills`` times, resume, count the damage."""
    from jaxslt import study

    spec_path = workdir / "kill.toml"
    spec_path.write_text(spec_toml("kill.sqlite", workdir / "checkpoints"))
    spec = study.load_spec(spec_path)
    store = spec.store_path
    command = [sys.executable, "-m", "jaxslt.cli", "study", "run", str(spec_path)]
    rng = random.Random(seed)
    first_seen: dict[str, tuple] = {}
    changed = 0
    landed = in_startup = 0
    log = open(workdir / "kill.log", "wb")
    while landed < kills:
        before = len(done_rows(store))
        proc = subprocess.Popen(command, stdout=log, stderr=log)
        if rng.random() < 0.2:
            time.sleep(rng.uniform(0.0, 4.0))
            in_startup += len(done_rows(store)) == before
        else:
            while len(done_rows(store)) <= before and proc.poll() is None:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.5))
        if proc.poll() is not None:  # the study finished before this kill
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        landed += 1
        rows = done_rows(store)
        for cell_id, value in rows.items():
            if cell_id in first_seen and first_seen[cell_id] != value:
                changed += 1
            first_seen.setdefault(cell_id, value)
    done_before_resume = len(done_rows(store))
    final = subprocess.run(command, stdout=log, stderr=log, check=False)
    log.close()
    rows = done_rows(store)
    changed += sum(first_seen[c] != v for c, v in rows.items() if c in first_seen)
    with sqlite3.connect(store) as conn:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        total, distinct = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT cell_id) FROM cells"
        ).fetchone()
        rerun = conn.execute("SELECT COUNT(*) FROM cells WHERE attempts > 1").fetchone()[0]
    grid = {c.cell_id for c in study.expand(spec)}
    with study.Store(store, create=False) as reader:
        sidecars_ok = all(reader.load_traces(c)["loss_trace"].shape == (4, 1000) for c in rows)
    return {
        "kills": landed,
        "kills_in_startup": in_startup,
        "done_before_resume": done_before_resume,
        "resume_rc": final.returncode,
        "grid": len(grid),
        "done": len(rows),
        "lost": len(grid - set(rows)),
        "duplicated_rows": total - distinct,
        "finished_cells_rerun": changed,
        "interrupted_cells_rerun": rerun,
        "integrity": integrity,
        "sidecars_ok": sidecars_ok,
    }


def write_checkpoints(workdir: Path) -> None:
    from jaxslt.checkpoints import save_checkpoint
    from jaxslt.study.examples import dln_checkpoints

    trees = dln_checkpoints(WIDTHS, RANK, steps=STEPS, num_examples=NUM_EXAMPLES)
    for step, params in trees.items():
        save_checkpoint(workdir / "checkpoints", step, params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rep", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3, help="runs of the cheap variants")
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/study-cpu.md"))
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(variant(args.variant, args.workdir, args.rep)))
        return
    workdir = Path(tempfile.mkdtemp(prefix="jaxslt-study-bench-"))
    write_checkpoints(workdir)
    load = os.getloadavg()
    runs: dict[str, list[dict]] = {"study": [], "study-warm": [], "careful": []}
    for rep in range(args.repeats):  # interleaved, so that load changes hit every variant
        for name in runs:
            runs[name].append(run_variant(name, workdir, rep))
            print(f"{name} #{rep}: {runs[name][-1]['wall_s']:.1f} s", flush=True)
    if not args.skip_naive:  # once: it takes many times longer
        runs["naive"] = [run_variant("naive", workdir, 0)]
        print(f"naive: {runs['naive'][0]['wall_s']:.1f} s", flush=True)
    reference = runs["careful"][0]["estimates"]
    for name, rs in runs.items():
        for r in rs:
            assert r["estimates"] == reference, f"{name} gave other estimates than the careful loop"
    results = {name: {**min(rs, key=lambda r: r["wall_s"]), "all": [r["wall_s"] for r in rs]}
               for name, rs in runs.items()}  # fmt: skip
    kr = kill_resume(workdir, args.kills, args.seed)
    print(kr)
    write_report(args, results, kr, load, os.getloadavg())


def write_report(args, results: dict, kr: dict, load_before, load_after) -> None:
    import jax

    import jaxslt

    label = {
        "study": "`jaxslt.study.run`, fresh store, empty compilation cache",
        "study-warm": "`jaxslt.study.run`, fresh store, new process, warm compilation cache",
        "careful": "plain loop, careful (setup once, checkpoints loaded once)",
        "naive": "plain loop, naive script (setup + checkpoint load per cell)",
    }
    base = results["study"]["wall_s"]
    lines = [
        "# Studies: runner vs plain loops, and kill -9 / resume",
        "",
        f"Machine: {platform.machine()} CPU, {os.cpu_count()} cores, "
        f"{jax.devices()[0].platform} backend, jax {jax.__version__}, jaxslt {jaxslt.__version__}. "
        "**The machine was shared with other workers' jobs during the run** (load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after, on 2 cores): wall times are "
        "inflated and noisy; compile counts are exact.",
        "",
        f"Command: `python benchmarks/study.py --kills {args.kills} --seed {args.seed} "
        f"--repeats {args.repeats}"
        f"{' --skip-naive' if args.skip_naive else ''}`. Cells: DLN 6→4→4→6, rank 2, n = 2000; "
        "4 orbax checkpoints (steps 0, 300, 1000, 3000 of gradient descent) × 5 step sizes "
        "(1e-5 … 1e-3) × 5 seeds = 100 cells; 4 chains × (200 + 1000) steps, batch 64, γ = 10. "
        "Times from the first call to the last result, imports excluded. All variants gave "
        "bit-identical estimates.",
        "",
        f"Wall time: the best of {args.repeats} interleaved runs (all runs in brackets) for the "
        "first three variants, one run of the naive loop.",
        "",
        "| variant | wall (s) | per cell (s) | XLA programs built | of which from the "
        "persistent cache | compile time (s) | vs study |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        every = ", ".join(f"{t:.1f}" for t in r["all"])
        lines.append(
            f"| {label[name]} | {r['wall_s']:.1f} ({every}) | {r['wall_s'] / r['cells']:.2f} | "
            f"{r['compiles']} | {r['cache_hits']} | {r['compile_s']:.1f} | "
            f"{r['wall_s'] / base:.2f}× |"
        )
    lines += [
        "",
        "XLA programs built: every backend compilation, the sampler and the small eager "
        "programs (key handling, checks) alike, counted by JAX's monitoring events; the "
        "persistent-cache column counts those loaded from disk instead of compiled; compile "
        "time includes those loads.",
    ]
    lines += [
        "",
        "## kill -9 and resume",
        "",
        f"`jaxslt study run` on a fresh store, SIGKILLed {kr['kills']} times at random moments "
        f"({kr['kills_in_startup']} of them before the run stored anything new), then one run "
        f"to completion (exit code {kr['resume_rc']}). {kr['done_before_resume']} cells were "
        "done before that last run.",
        "",
        "| grid cells | done | lost | duplicated rows | finished cells run again | "
        "in-flight cells rerun | integrity_check | sidecars load |",
        "|---|---|---|---|---|---|---|---|",
        f"| {kr['grid']} | {kr['done']} | {kr['lost']} | {kr['duplicated_rows']} | "
        f"{kr['finished_cells_rerun']} | {kr['interrupted_cells_rerun']} | {kr['integrity']} | "
        f"{kr['sidecars_ok']} |",
        "",
        '"In-flight cells rerun": cells that were running when a kill landed (their rows said '
        '`running`); the next run ran them again, as it should. "Finished cells run again" '
        "compares every done row with its first sighting.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
