"""Does the test suite give the same verdict every time, on a loaded machine?

Runs the README's test command (``python -m pytest -n 2``, the default derandomized Hypothesis
profile) ``--runs`` times in a row while ``--burners`` other processes spin on the CPU (one per
core keeps a 2-core machine fully busy, so the tests get about half of it), and records each
run's wall time, its pass/fail counts and the failing tests. Writes
``results/suite_stability-cpu.md``. Run from the project root::

    python benchmarks/suite_stability.py --runs 5

Expect ~6 min per run on 2 idle cores and roughly twice that with the burners.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from _common import write_result

ROOT = Path(__file__).resolve().parent.parent


def _spin() -> None:  # a process that keeps one core busy until it is terminated
    while True:
        pass


def _git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip()


def run_suite(workers: int, log: Path) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-n", str(workers), "-p", "no:cacheprovider", "-rfE"]
    env = {k: v for k, v in os.environ.items() if k != "HYPOTHESIS_PROFILE"}  # the default
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    text = out.stdout + out.stderr
    log.write_text(text)
    counts = {
        word: int(n)
        for n, word in re.findall(r"(\d+) (passed|failed|errors?|skipped|xfailed)", text)
    }
    failing = re.findall(r"^(?:FAILED|ERROR) (\S+)", text, flags=re.M)
    return dict(wall=wall, rc=out.returncode, counts=counts, failing=failing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="pytest -n")
    parser.add_argument("--burners", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    commit = _git("rev-parse", "--short", "HEAD")
    dirty = (
        " (with uncommitted changes)"
        if _git("status", "--porcelain", "--", "jaxslt", "tests")
        else ""
    )
    burners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.burners)]
    for p in burners:
        p.start()
    rows, started = [], datetime.now(UTC)
    try:
        for i in range(args.runs):
            log = Path(f"/tmp/suite_stability_run{i + 1}.log")
            r = run_suite(args.workers, log)
            rows.append(r)
            print(f"run {i + 1}: {r['wall']:.0f} s, rc {r['rc']}, {r['counts']}, {r['failing']}",
                  flush=True)  # fmt: skip
    finally:
        for p in burners:
            p.terminate()
            p.join()

    walls = [r["wall"] for r in rows]
    lines = [
        "# Suite stability: the README's test command, repeated on a loaded machine",
        "",
        f"Machine: {os.cpu_count()}-core {platform.machine()} VM, shared with other processes "
        f"(other developers' jobs may run too); Python {platform.python_version()}. "
        f"Commit {commit}{dirty}; started {started:%Y-%m-%d %H:%M} UTC.",
        f"Command: `python benchmarks/suite_stability.py --runs {args.runs} --workers "
        f"{args.workers} --burners {args.burners}`: each run is `python -m pytest -n "
        f'{args.workers}` (default Hypothesis profile "ci", derandomized) while {args.burners} '
        "spinning processes keep the cores busy.",
        "",
        "| run | wall time (s) | passed | failed | errors | failing tests |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows, 1):
        c = r["counts"]
        lines.append(
            f"| {i} | {r['wall']:.0f} | {c.get('passed', 0)} | {c.get('failed', 0)} | "
            f"{c.get('error', 0) + c.get('errors', 0)} | {', '.join(r['failing']) or '—'} |"
        )
    failures = sum(r["rc"] != 0 for r in rows)
    lines += [
        "",
        f"{len(rows)} runs, {failures} with a failure; wall time {min(walls):.0f}–"
        f"{max(walls):.0f} s (mean {sum(walls) / len(walls):.0f} s).",
        "",
    ]
    write_result(args.out, "suite_stability-cpu.md", "\n".join(lines))


if __name__ == "__main__":
    main()
