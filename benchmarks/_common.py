"""What the benchmarks share: how they time a call and how they write their results."""

from __future__ import annotations

import time
from pathlib import Path

import jax


def best_time(fn, *args, repeats: int = 3) -> float:
    """Best wall time of ``repeats`` calls of ``fn(*args)`` (outputs waited for), after one
    untimed warm-up call that compiles it."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def write_result(out: Path, name: str, text: str) -> Path:
    """Print ``text`` and write it to ``out/name`` (creating ``out``); return the path."""
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(text)
    print(f"wrote {path}")
    return path
