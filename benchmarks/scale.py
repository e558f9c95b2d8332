"""Per-step time and memory of SGLD chains on deep linear networks from 1e4 to 1e8 parameters.

    python benchmarks/scale.py                      # all sizes (1e8 needs ~10 GB and minutes)
    python benchmarks/scale.py --sizes 1e4,1e5,1e6  # a quick subset

For each size (a 4-layer square DLN, widths H = √(P/4)) and each execution strategy — all chains
vmapped, chains in groups of one (``chain_batch_size=1``) — it reports:

- the compile time of the whole estimate (``sample_llc``);
- the time per step of all chains: the chain runner (``run_chains``: minibatches, gradients,
  noise, updates, loss traces) timed at 2s and at s steps, each compiled beforehand, best of 3,
  the difference divided by s, so set-up costs do not inflate it; chain-steps/s;
- XLA's compiled memory (arguments + temporaries + outputs, from ``memory_analysis``, less the
  data set) in units of one float32 copy of the parameters, per live chain, and against the
  goal 1.2·(k + 2) copies for k live chains, and against the same figure for a hand-written
  jitted SGLD loop (``_bare.bare_sgld`` with jaxslt's fused noise, chains vmapped or run one
  after another like the strategy): what XLA allocates for the update itself;
- the floor: a bare jitted ``value_and_grad`` step of one chain on the same batch, and the time
  of the step's Gaussian draw alone (``jaxslt.noise.tree_normal``), which a bare gradient step
  does not pay; 'ratio' = time per chain-step / bare step;
- the hand-written loop's time per step, measured the same way: jaxslt's overhead over the
  same SGLD written by hand;
- achieved FLOP/s from XLA's cost analysis of the bare step (a chain-step does the same matmuls)
  and, on a GPU whose peak is known, the fraction of peak.

Results: benchmarks/results/scale-<platform>.md.
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
from _bare import bare_sgld
from _common import best_time, write_result

import jaxslt
from jaxslt import SamplingConfig, localized_posterior, problems, run_chains, sample_llc_jit, sgld
from jaxslt.noise import normal, tree_normal

# dense float32 peak (TF32 tensor cores, which XLA uses for float32 matmuls by default), TFLOP/s
PEAK_TFLOPS = {"NVIDIA H100": 494.7, "NVIDIA H200": 494.7, "NVIDIA A100": 156.0}


def peak_tflops(device) -> float | None:
    kind = device.device_kind
    return next((v for k, v in PEAK_TFLOPS.items() if kind.startswith(k)), None)


def measure(size, *, chains, group, steps, batch):
    if group not in (None, 1):
        raise ValueError(f"group must be None (all vmapped) or 1, got {group}")
    width = round(math.sqrt(size / 4))
    p = problems.deep_linear_network([width] * 5, width // 4, key=jax.random.key(0),
                                     num_examples=max(4 * batch, 1024))  # fmt: skip
    num_params = sum(int(w.size) for w in p.params)
    param_bytes = 4 * num_params
    kw = dict(step_size=jnp.float32(1e-7), nbeta=jnp.float32(1000.0),
              localization=jnp.float32(1.0))  # fmt: skip
    statics = dict(num_chains=chains, num_burnin=0, batch_size=batch, chain_batch_size=group,
                   acceptance_checks=0, step_check=False)  # fmt: skip
    key = jax.random.key(1)
    lowered = sample_llc_jit.lower(p.loss_fn, p.params, p.data, key, **kw,
                                   config=SamplingConfig(**statics, num_draws=steps))  # fmt: skip
    start = time.perf_counter()
    program = lowered.compile()  # the whole estimate: its memory is what a user needs
    compile_s = time.perf_counter() - start
    # Step time from the chain runner alone (what sample_llc scans), so that the full-data
    # L_n(w*) (slow for linear networks on XLA's CPU backend, see the notes) does not blur it.
    posterior = localized_posterior(p.loss_fn, p.params, nbeta=kw["nbeta"],
                                    localization=kw["localization"])  # fmt: skip

    def runner(num_draws):
        return jax.jit(lambda w, data, k: run_chains(
            sgld(posterior), w, data, k, step_size=kw["step_size"], num_chains=chains,
            num_draws=num_draws, batch_size=batch, chain_batch_size=group,
        ).loss_trace)  # fmt: skip

    repeats = 3 if size < 5e7 else 1
    t_short = best_time(runner(steps), p.params, p.data, key, repeats=repeats)
    t_long = best_time(runner(2 * steps), p.params, p.data, key, repeats=repeats)
    step_s = max(t_long - t_short, 1e-9) / steps
    data_bytes = sum(int(x.nbytes) for x in jax.tree.leaves(p.data))

    def copies(compiled):  # XLA's memory, less the data set, in copies of the parameters
        m = compiled.memory_analysis()
        used = m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes
        return (used - data_bytes) / param_bytes

    def loop(num_steps):
        return jax.jit(functools.partial(
            bare_sgld, p.loss_fn, step_size=kw["step_size"], nbeta=kw["nbeta"],
            gamma=kw["localization"], chains=chains, steps=num_steps, batch=batch,
            normal=normal, sequential=group == 1,
        ))  # fmt: skip

    short_loop = loop(steps).lower(p.params, p.data, key).compile()  # timed and measured
    floor = copies(short_loop)
    loop_short = best_time(short_loop, p.params, p.data, key, repeats=repeats)
    loop_long = best_time(loop(2 * steps), p.params, p.data, key, repeats=repeats)
    loop_s = max(loop_long - loop_short, 1e-9) / steps
    batch_data = jax.tree.map(lambda x: x[:batch], p.data)
    bare = jax.jit(jax.value_and_grad(p.loss_fn)).lower(p.params, batch_data).compile()
    bare_s = best_time(bare, p.params, batch_data)
    flops = bare.cost_analysis().get("flops", float("nan"))
    noise_s = best_time(jax.jit(tree_normal), key, p.params)
    live = chains if group is None else group
    used = copies(program)
    strategy = "vmap all" if group is None else f"groups of {group}"
    return dict(
        size=size, params=num_params, strategy=strategy,
        chains=chains, compile=compile_s, step=step_s,
        chain_steps=chains / step_s, copies=used, floor=floor, per_chain=(used - 1) / live,
        goal=1.2 * (live + 2), bare=bare_s, noise=noise_s, ratio=step_s / (chains * bare_s),
        loop=loop_s,
        gflops=flops * chains / step_s / 1e9,
    )  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1e4,1e5,1e6,1e7,1e8")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    device = jax.devices()[0]
    peak = peak_tflops(device)
    rows = []
    for size in (float(s) for s in args.sizes.split(",")):
        steps = max(2, int(2e7 / size))  # a few seconds per run
        for group in (None, 1):
            rows.append(measure(int(size), chains=args.chains, group=group, steps=steps,
                                batch=args.batch))  # fmt: skip
            r = rows[-1]
            print(f"{r['params']:.2e} params, {r['strategy']}: {r['step'] * 1e3:.1f} ms/step, "
                  f"{r['copies']:.2f}× param bytes (goal {r['goal']:.1f}), ratio to bare "
                  f"{r['ratio']:.2f}, to the bare loop {r['step'] / r['loop']:.2f}",
                  flush=True)  # fmt: skip
    lines = [
        "# Scale: time and memory per step, DLNs 1e4–1e8 parameters",
        "",
        f"Machine: {platform.machine()} {device.device_kind} ({jax.device_count()} device), "
        f"jax {jax.__version__}, jaxslt {jaxslt.__version__}. Command: `python "
        f"benchmarks/scale.py --sizes {args.sizes}`. {args.chains} chains, batch {args.batch}, "
        "SGLD, no in-loop acceptance checks. Time per step: (run of 2s steps − run of s "
        "steps)/s of the chain runner, all chains. "
        "Memory: XLA compiled memory analysis (arguments + temporaries + outputs, less the data "
        "set) in float32 copies of the parameters; 'per live chain' subtracts one copy (w*) and "
        "divides by the chains alive at once; 'goal' is 1.2·(k + 2) for k live chains; 'bare loop' "
        "the same for a hand-written jitted SGLD scan with the same noise and strategy. 'bare' "
        "is a jitted value_and_grad step of one chain on the same batch, 'noise' the step's "
        "Gaussian draw alone; 'ratio' = time per chain-step / bare; 'bare loop (ms/step)' the "
        "hand-written scan's time per step, timed like jaxslt's. GFLOP/s from XLA's cost "
        "analysis of the bare step" + (f", peak {peak} TFLOP/s." if peak else "."),
        "",
        "| params | strategy | compile (s) | ms/step (all chains) | chain-steps/s "
        "| memory (× param bytes) | bare loop | goal | per live chain | bare v&g (ms) "
        "| noise (ms) | ratio | bare loop (ms/step) | ratio to it "
        "| GFLOP/s |" + (" % peak |" if peak else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if peak else ""),
    ]
    for r in rows:
        lines.append(
            f"| {r['params']:,} | {r['strategy']} | {r['compile']:.1f} "
            f"| {r['step'] * 1e3:.1f} | {r['chain_steps']:,.1f} | {r['copies']:.2f} | "
            f"{r['floor']:.2f} | "
            f"{r['goal']:.1f} | {r['per_chain']:.2f} | {r['bare'] * 1e3:.1f} | "
            f"{r['noise'] * 1e3:.1f} | {r['ratio']:.2f} | {r['loop'] * 1e3:.1f} | "
            f"{r['step'] / r['loop']:.2f} | {r['gflops']:,.0f} |"
            + (f" {100 * r['gflops'] / (peak * 1e3):.1f} |" if peak else "")
        )
    write_result(args.out, f"scale-{device.platform}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
