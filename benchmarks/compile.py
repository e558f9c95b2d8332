"""Compile cost against the number of parameter leaves: jaxslt vs the hand-written loop.

    python benchmarks/compile.py                      # writes benchmarks/results/compile-cpu.md
    python benchmarks/compile.py --layers 2 8 --no-scalars --transformer-layers  # a subset
    python benchmarks/compile.py --transformer        # only the transformer rows, appended

Models: tanh MLPs of L layers, width 32 (2L leaves), n = 4096; a model of 30 scalar leaves
against the same 30 numbers as one array; the Flax NNX decoder-only LM of examples/nnx_lm.py
with 2 and 6 blocks (20 and 52 leaves, n = 4096 sequences of 16 tokens; ``_common
.nnx_lm_case``). Every case runs 4 chains × 300 steps (100 burn-in + 200 draws), batch 128.
Timed, each in a fresh compile (``jax.clear_caches()`` first):

- ``bare``: ``_bare.bare_sgld`` jitted (``jax.random.normal`` per leaf), first and second call;
- ``estimate_llc`` with its defaults (50 in-loop MALA checks, L_n(w*), diagnostics);
- ``estimate_llc(acceptance_checks=0, diagnostics=False)``: the same work as the bare loop
  plus L_n(w*).

First call = trace + compile + run; second call = run (with the Python-side work of the call).
"""

from __future__ import annotations

import argparse
import functools
import platform
import shlex
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from _bare import bare_sgld
from _common import nnx_lm_case, write_result

import jaxslt

N, WIDTH, CHAINS, BURNIN, DRAWS, BATCH = 4096, 32, 4, 100, 200, 128
EPS, GAMMA = 1e-5, 10.0


def mlp_case(layers: int):
    keys = jax.random.split(jax.random.key(0), layers + 1)
    params = {
        f"layer_{i}": {
            "w": jax.random.normal(keys[i], (WIDTH if i else 8, WIDTH)) / jnp.sqrt(WIDTH),
            "b": jnp.zeros((WIDTH,)),
        }
        for i in range(layers)
    }
    x = jax.random.normal(keys[-1], (N, 8))
    y = jnp.sin(x.sum(-1))

    def loss_fn(p, batch):
        h, target = batch
        for i in range(layers):
            h = jnp.tanh(h @ p[f"layer_{i}"]["w"] + p[f"layer_{i}"]["b"])
        return 0.5 * jnp.mean((h.mean(-1) - target) ** 2)

    return f"MLP {layers} layers", params, (x, y), loss_fn


def scalars_case(as_array: bool):
    center = jnp.linspace(-1.0, 1.0, 30)
    x = jax.random.normal(jax.random.key(0), (N, 30))
    y = x @ center
    if as_array:
        params = {"w": center}

        def loss_fn(p, batch):
            return 0.5 * jnp.mean((batch[0] @ p["w"] - batch[1]) ** 2)

        return "30 numbers, one array", params, (x, y), loss_fn
    params = {f"w{i:02d}": center[i] for i in range(30)}

    def loss_fn(p, batch):
        w = jnp.stack([p[f"w{i:02d}"] for i in range(30)])
        return 0.5 * jnp.mean((batch[0] @ w - batch[1]) ** 2)

    return "30 scalar leaves", params, (x, y), loss_fn


def timed(fn):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def warm_up():
    """One tiny defaults call first, so that no timed case pays the one-time imports (ArviZ,
    SciPy) and the process's first-compile overheads."""
    x = jnp.linspace(-1.0, 1.0, 64)[:, None]
    jaxslt.estimate_llc(lambda p, b: jnp.mean((p["w"] * b) ** 2), {"w": jnp.ones(())}, x,
                        key=jax.random.key(0), step_size=1e-4, num_draws=100, num_burnin=10,
                        progress=False)  # fmt: skip


def run_case(name, params, data, loss_fn):
    nbeta = jaxslt.default_nbeta(N)
    key = jax.random.key(1)
    row = {"model": name, "leaves": len(jax.tree.leaves(params)),
           "params": sum(x.size for x in jax.tree.leaves(params))}  # fmt: skip

    jax.clear_caches()
    bare = jax.jit(
        functools.partial(bare_sgld, loss_fn, step_size=EPS, nbeta=nbeta, gamma=GAMMA,
                          chains=CHAINS, steps=BURNIN + DRAWS, batch=BATCH)
    )  # fmt: skip
    row["bare_first"] = timed(lambda: bare(params, data, key))
    row["bare_second"] = timed(lambda: bare(params, data, key))

    settings = dict(key=key, step_size=EPS, localization=GAMMA, num_chains=CHAINS,
                    num_draws=DRAWS, num_burnin=BURNIN, batch_size=BATCH,
                    progress=False)  # fmt: skip
    checks_off = {"acceptance_checks": 0, "diagnostics": False}
    for label, extra in (("llc", {}), ("llc_nochecks", checks_off)):
        jax.clear_caches()
        fn = functools.partial(loss_fn)  # a new function object: a fresh compile

        def call(fn=fn, extra=extra):
            return jaxslt.estimate_llc(fn, params, data, **settings, **extra).llc_per_chain

        row[f"{label}_first"] = timed(call)
        row[f"{label}_second"] = timed(call)
    print(row, flush=True)
    return row


def table(rows) -> str:
    head = ("| model | leaves | params | bare 1st | bare 2nd | estimate_llc 1st | 2nd | "
            "checks off 1st | 2nd | 1st / bare 1st (checks off) |")  # fmt: skip
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['leaves']} | {r['params']} | {r['bare_first']:.1f} s | "
            f"{r['bare_second']:.2f} s | {r['llc_first']:.1f} s | {r['llc_second']:.2f} s | "
            f"{r['llc_nochecks_first']:.1f} s | {r['llc_nochecks_second']:.2f} s | "
            f"{r['llc_first'] / r['bare_first']:.2f} "
            f"({r['llc_nochecks_first'] / r['bare_first']:.2f}) |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="*", default=[2, 8, 24, 100])
    parser.add_argument("--no-scalars", action="store_true", help="skip the 30-scalar cases")
    parser.add_argument(
        "--transformer-layers", type=int, nargs="*", default=[2, 6],
        help="blocks of the NNX LM cases (examples/nnx_lm.py); none: skip them",
    )  # fmt: skip
    parser.add_argument(
        "--transformer", action="store_true",
        help="run only the NNX LM cases and append their table as a section to the results "
        "file instead of rewriting it",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--name", default="compile-cpu.md")
    args = parser.parse_args()
    # each case is built when its turn comes
    cases = [] if args.transformer else [functools.partial(mlp_case, n) for n in args.layers]
    if not (args.no_scalars or args.transformer):
        cases += [functools.partial(scalars_case, True), functools.partial(scalars_case, False)]
    cases += [functools.partial(nnx_lm_case, n, N) for n in args.transformer_layers]
    warm_up()
    rows = [run_case(*case()) for case in cases]
    command = shlex.join(["python", "benchmarks/compile.py", *sys.argv[1:]])
    machine = (
        f"{platform.node()} · {platform.processor() or platform.machine()} · jax "
        f"{jax.__version__} · {jax.devices()[0].platform} · {CHAINS} chains × "
        f"{BURNIN + DRAWS} steps, batch {BATCH}, n = {N}"
    )
    if args.transformer:
        text = (
            f"## Flax NNX transformer (examples/nnx_lm.py)\n\n`{command}`\n\n{machine}; "
            f"untrained initialisation of the example's default sizes (d_model 32, 2 heads, "
            f"vocab 16, 16 tokens) with {' and '.join(map(str, args.transformer_layers))} "
            f"blocks\n\n{table(rows)}\n"
        )
    else:
        text = f"# Compile cost vs parameter leaves\n\n`{command}`\n\n{machine}\n\n{table(rows)}\n"
    write_result(args.out, args.name, text, append=args.transformer)


if __name__ == "__main__":
    main()
