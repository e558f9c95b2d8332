"""What the benchmarks share: how they time a call, how they write their results, and the
transformer case they take from examples/nnx_lm.py."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import jax

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


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


def write_result(out: Path, name: str, text: str, *, append: bool = False) -> Path:
    """Print ``text`` and write it to ``out/name`` (creating ``out``), or with ``append`` add
    it at the end of that file after a blank line; return the path."""
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    if append and path.exists():
        text = path.read_text().rstrip("\n") + "\n\n" + text
    path.write_text(text)
    print(f"{'appended to' if append else 'wrote'} {path}")
    return path


def load_example(name: str) -> ModuleType:
    """``examples/<name>.py`` imported as a module (the examples are scripts, not a package),
    with the examples folder on ``sys.path`` as when it runs as a script (its sibling
    ``_training``)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.append(str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"{name}_example", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def nnx_lm_case(layers: int, num_examples: int):
    """The Flax NNX decoder-only LM of examples/nnx_lm.py (its default sizes: d_model 32, 2
    heads, vocab 16, 16 tokens) with ``layers`` blocks, at its untrained initialisation (the
    cost of a step does not depend on the weights' values), on ``num_examples`` of its
    synthetic sequences: ``(name, params, data, loss_fn)``, params the ``nnx.State`` of its
    ``nnx.Param`` variables and loss_fn the mean next-token cross-entropy."""
    lm = load_example("nnx_lm")
    cfg = dataclasses.replace(lm.Config(), layers=layers)
    graphdef, params = lm.make_model(cfg)
    data = lm.make_data(jax.random.key(1), num_examples, cfg)
    return f"NNX LM {layers} layers", params, data, lm.make_loss_fn(graphdef)
