"""Per-step time and memory of SGLD chains on deep linear networks from 1e4 to 1e8 parameters.

    python benchmarks/scale.py                      # all sizes (1e8 needs ~10 GB and minutes)
    python benchmarks/scale.py --sizes 1e4,1e5,1e6  # a quick subset

For each size (a 4-layer square DLN, widths H = √(P/4)) and each execution strategy — all chains
vmapped, chains in groups of one (``chain_batch_size=1``) — it reports the compile time, the time
per step (a short run, minus nothing: the run is timed after compiling), chain-steps/s, XLA's
compiled memory (arguments + temporaries + outputs, from ``memory_analysis``) in bytes per
parameter and per live chain, and the same figures for a bare jitted ``value_and_grad`` step of
one chain on the same batch (the floor). Results: benchmarks/results/scale-<platform>.md.
"""

from __future__ import annotations

import argparse
import functools
import math
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp

import jaxslt
from jaxslt import problems
from jaxslt.estimator import _sample_llc_jit


def bare_step_time(loss_fn, params, batch, repeats=3):
    step = jax.jit(jax.value_and_grad(loss_fn))
    jax.block_until_ready(step(params, batch))
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(step(params, batch))
    return (time.perf_counter() - start) / repeats


def measure(size, *, chains, group, steps, batch):
    width = round(math.sqrt(size / 4))
    p = problems.deep_linear_network([width] * 5, width // 4, key=jax.random.key(0),
                                     num_examples=max(4 * batch, 1024))  # fmt: skip
    num_params = sum(int(w.size) for w in p.params)
    kw = dict(step_size=jnp.float32(1e-7), nbeta=jnp.float32(1000.0),
              localization=jnp.float32(1.0))  # fmt: skip
    statics = dict(num_chains=chains, num_draws=steps, num_burnin=0, batch_size=batch,
                   chain_batch_size=group, acceptance_checks=0)  # fmt: skip
    key = jax.random.key(1)
    start = time.perf_counter()
    compiled = _sample_llc_jit.lower(p.loss_fn, p.params, p.data, key, **kw, **statics).compile()
    compile_s = time.perf_counter() - start
    mem = compiled.memory_analysis()
    data_bytes = sum(int(x.nbytes) for x in jax.tree.leaves(p.data))
    total = (
        mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes - data_bytes
    )
    run = functools.partial(compiled, p.params, p.data, key, **kw)
    jax.block_until_ready(run())
    start = time.perf_counter()
    jax.block_until_ready(run())
    step_s = (time.perf_counter() - start) / steps
    batch_data = jax.tree.map(lambda x: x[:batch], p.data)
    bare = bare_step_time(p.loss_fn, p.params, batch_data)
    live = chains if group is None else group
    strategy = "vmap all" if group is None else f"groups of {group}"
    return dict(
        size=size, params=num_params, strategy=strategy, chains=chains, compile=compile_s,
        step=step_s, chain_steps=chains / step_s,
        bytes_per_param=total / (4 * num_params), per_chain=(total / (4 * num_params) - 1) / live,
        bare=bare, ratio=step_s / (chains * bare),
    )  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1e4,1e5,1e6,1e7,1e8")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    rows = []
    for size in (float(s) for s in args.sizes.split(",")):
        steps = max(2, int(2e7 / size))  # a few seconds per run
        for group in (None, 1):
            rows.append(measure(int(size), chains=args.chains, group=group, steps=steps,
                                batch=args.batch))  # fmt: skip
            r = rows[-1]
            print(f"{r['params']:.2e} params, {r['strategy']}: {r['step'] * 1e3:.1f} ms/step, "
                  f"{r['bytes_per_param']:.1f}× param bytes, ratio to bare "
                  f"{r['ratio']:.2f}", flush=True)  # fmt: skip
    device = jax.devices()[0]
    lines = [
        "# Scale: time and memory per step, DLNs 1e4–1e8 parameters",
        "",
        f"Machine: {platform.machine()} {device.device_kind} ({jax.device_count()} device), "
        f"jax {jax.__version__}, jaxslt {jaxslt.__version__}. Command: `python "
        f"benchmarks/scale.py --sizes {args.sizes}`. {args.chains} chains, batch {args.batch}, "
        "SGLD, no in-loop acceptance checks. Memory: XLA compiled memory analysis (arguments + "
        "temporaries + outputs, less the data set) in units of one float32 copy of the "
        "parameters; 'per live chain' subtracts one copy (w*) and divides by the chains "
        "alive at once. 'ratio' is the time per step of all chains over chains × a bare "
        "jitted value_and_grad step.",
        "",
        "| params | strategy | compile (s) | ms/step (all chains) | chain-steps/s | memory "
        "(× param bytes) | per live chain | bare v&g (ms) | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['params']:,} | {r['strategy']} | {r['compile']:.1f} | {r['step'] * 1e3:.1f} | "
            f"{r['chain_steps']:,.0f} | {r['bytes_per_param']:.1f} | {r['per_chain']:.1f} | "
            f"{r['bare'] * 1e3:.1f} | {r['ratio']:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"scale-{device.platform}.md"
    path.write_text(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
