"""The memory model behind ``chain_batch_size="auto"`` against XLA's compiled memory.

    python benchmarks/memory_model.py                  # a 4-layer DLN of 1000×1000 layers
    python benchmarks/memory_model.py --width 2000     # 16M parameters

For each sampler setting it compiles the whole estimate (``sample_llc``) for one chain at a
time (``chain_batch_size=1``) and for all chains vmapped, and reads XLA's memory analysis
(arguments + temporaries + outputs); nothing runs. It prints, in float32 copies of the
parameters P: the compiled totals, the measured cost of one more live chain
((vmapped − one) / (chains − 1)), and the model's prediction of both
(``jaxslt.memory.chain_memory``: fixed + k × per chain). Results:
benchmarks/results/memory_model-<platform>.md.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import jax
import jax.numpy as jnp
from _common import write_result

import jaxslt
from jaxslt import SamplingConfig, problems, sample_llc_jit
from jaxslt.memory import chain_memory

SETTINGS = [
    ("sgld, no checks", dict(sampler="sgld", acceptance_checks=0)),
    ("sgld, 50 checks (default)", dict(sampler="sgld", acceptance_checks=50)),
    ("sghmc, no checks", dict(sampler="sghmc", acceptance_checks=0)),
    ("sgnht, no checks", dict(sampler="sgnht", acceptance_checks=0)),
    ("rmsprop_sgld, no checks", dict(sampler="rmsprop_sgld", acceptance_checks=0)),
    ("sgld, no checks, observables", dict(sampler="sgld", acceptance_checks=0, observables=True)),
]


def compiled_bytes(p, *, chains, group, batch, **setting) -> int:
    kw = dict(step_size=jnp.float32(1e-7), nbeta=jnp.float32(1000.0),
              localization=jnp.float32(1.0))  # fmt: skip
    program = sample_llc_jit.lower(
        p.loss_fn, p.params, p.data, jax.random.key(1), **kw, config=SamplingConfig(
            num_chains=chains, num_draws=100, num_burnin=0, batch_size=batch,
            chain_batch_size=group, step_check=False, **setting,
        ),
    ).compile()  # fmt: skip
    m = program.memory_analysis()
    return m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    w = args.width
    p = problems.deep_linear_network([w] * 5, w // 4, key=jax.random.key(0),
                                     num_examples=args.examples)  # fmt: skip
    param_bytes = 4 * sum(int(x.size) for x in p.params)
    rows = []
    for name, setting in SETTINGS:
        one = compiled_bytes(p, chains=args.chains, group=1, batch=args.batch, **setting)
        every = compiled_bytes(p, chains=args.chains, group=None, batch=args.batch, **setting)
        checks = setting.get("acceptance_checks", 0) > 0
        memory = chain_memory(
            p.loss_fn, p.params, p.data, SamplingConfig(batch_size=args.batch, **setting),
            checks=checks,
        )  # fmt: skip
        fixed = memory.params + memory.data
        rows.append((name, one, every, (every - one) / (args.chains - 1), fixed + memory.chain,
                     fixed + args.chains * memory.chain, memory.chain))  # fmt: skip
        print(f"{name}: one chain {one / param_bytes:.2f} P, all {every / param_bytes:.2f} P; "
              f"model {rows[-1][4] / param_bytes:.2f} P, {rows[-1][5] / param_bytes:.2f} P",
              flush=True)  # fmt: skip
    data_bytes = sum(int(x.nbytes) for x in jax.tree.leaves(p.data))
    lines = [
        '# Memory model of `chain_batch_size="auto"` against XLA\'s compiled memory',
        "",
        f"Machine: {platform.machine()} {jax.devices()[0].device_kind}, jax {jax.__version__}, "
        f"jaxslt {jaxslt.__version__}. Command: `python benchmarks/memory_model.py --width {w}`. "
        f"DLN {w}→{w}→{w}→{w}→{w} ({param_bytes // 4:,} parameters, P = "
        f"{param_bytes / 2**20:.1f} MiB), {args.examples} examples (data = "
        f"{data_bytes / param_bytes:.2f} P), batch {args.batch}, {args.chains} chains. "
        "Compiled: XLA memory analysis (arguments + temporaries + outputs) of the whole "
        "estimate, in copies of P; 'per chain' = (all vmapped − one at a time) / (chains − 1). "
        "Model: `jaxslt.memory.chain_memory` (fixed + k × per chain), what the automatic rule "
        "compares with 80% of the free memory.",
        "",
        "| setting | compiled, one at a time | compiled, all vmapped | compiled per chain | "
        "model, one | model, all | model per chain |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, one, every, per, m_one, m_all, m_per in rows:
        cells = [one, every, per, m_one, m_all, m_per]
        lines.append(f"| {name} | " + " | ".join(f"{c / param_bytes:.2f}" for c in cells) + " |")
    write_result(args.out, f"memory_model-{jax.devices()[0].platform}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
