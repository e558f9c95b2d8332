"""jaxslt vs a bare hand-written jitted SGLD loop: same model, chains, steps, batch.

    python benchmarks/throughput.py                # writes benchmarks/results/throughput-cpu.md
    python benchmarks/throughput.py --transformer  # only the NNX LM rows, appended to it

Models: deep linear networks (``jaxslt.problems``) and the Flax NNX decoder-only LM of
examples/nnx_lm.py with 2 and 6 blocks (``_common.nnx_lm_case``: its default sizes, untrained,
4096 sequences of 16 tokens).

The bare loop (``_bare.bare_sgld``) is what a user would write by hand: ``value_and_grad`` +
the SGLD update in ``lax.scan``, ``vmap`` over chains, i.i.d. minibatch indices, noise per leaf
from ``jax.random.normal``. Compile time is measured separately (``lower().compile()``); run
times are the best of ``--repeats`` warm runs.
jaxslt is timed three ways: its compiled core with no in-loop checks (the same work as the bare
loop), ``estimate_llc`` as a user calls it with its defaults (validation, the full-data L_n(w*),
50 in-loop MALA-acceptance checks at one extra gradient each, statistics, ArviZ diagnostics),
and ``estimate_llc`` with its progress bar forced on.
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
from _common import best_time, nnx_lm_case, write_result

import jaxslt
from jaxslt import SamplingConfig, problems, sample_llc_jit


def compile_time(jitted, *args, **kwargs):
    start = time.perf_counter()
    compiled = jitted.lower(*args, **kwargs).compile()
    return compiled, time.perf_counter() - start


def dln_case(widths, n=10_000):
    """A deep linear network of rank 1 on n examples: ``(name, params, data, loss_fn)``."""
    p = problems.deep_linear_network(widths, 1, key=jax.random.key(0), num_examples=n)
    return f"DLN {'-'.join(map(str, widths))}", p.params, p.data, p.loss_fn


def run_case(name, params, data, loss_fn, *, chains, steps, batch, repeats):
    eps, gamma = 1e-5, 10.0
    n = jax.tree.leaves(data)[0].shape[0]
    nbeta = jaxslt.default_nbeta(n)
    key = jax.random.key(1)
    settings = dict(
        step_size=eps, nbeta=nbeta, localization=gamma, num_chains=chains,
        num_draws=steps, num_burnin=0, batch_size=batch,
    )  # fmt: skip

    bare = jax.jit(
        functools.partial(bare_sgld, loss_fn, step_size=eps, nbeta=nbeta, gamma=gamma,
                          chains=chains, steps=steps, batch=batch)
    )  # fmt: skip
    bare_c, bare_compile = compile_time(bare, params, data, key)
    bare_run = best_time(bare_c, params, data, key, repeats=repeats)

    statics = {k: settings[k] for k in ("num_chains", "num_draws", "num_burnin", "batch_size")}
    statics["acceptance_checks"] = 0  # the bare sampler; estimate_llc below runs its defaults
    statics["step_check"] = False
    traced = dict(step_size=jnp.float32(eps), nbeta=jnp.float32(nbeta),
                  localization=jnp.float32(gamma))  # fmt: skip
    core_c, core_compile = compile_time(
        sample_llc_jit, loss_fn, params, data, key, **traced, config=SamplingConfig(**statics)
    )
    core_run = best_time(lambda: core_c(params, data, key, **traced), repeats=repeats)

    def call(progress):
        return jaxslt.estimate_llc(loss_fn, params, data, key=key, progress=progress,
                                   **settings)  # fmt: skip

    call(False), call(True)  # compile both variants
    api_run = best_time(call, False, repeats=repeats)
    bar_run = best_time(call, True, repeats=repeats)
    return dict(
        model=name,
        params=sum(x.size for x in jax.tree.leaves(params)),
        chains=chains,
        steps=steps,
        batch=batch,
        bare_compile=bare_compile,
        core_compile=core_compile,
        bare=bare_run,
        core=core_run,
        api=api_run,
        bar=bar_run,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--transformer", action="store_true",
        help="run only the NNX LM cases and append their table as a section to the results "
        "file instead of rewriting it",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    dlns = [
        (functools.partial(dln_case, [6, 4, 4, 6]), dict(chains=4, steps=5000, batch=256)),
        (functools.partial(dln_case, [100] * 4), dict(chains=4, steps=1000, batch=256)),
        (functools.partial(dln_case, [300] * 3), dict(chains=4, steps=300, batch=256)),
    ]
    lms = [
        (functools.partial(nnx_lm_case, layers, 4096), dict(chains=4, steps=500, batch=64))
        for layers in (2, 6)
    ]
    cases = lms if args.transformer else dlns + lms
    rows = [run_case(*make(), **c, repeats=args.repeats) for make, c in cases]
    machine = f"{platform.machine()} {jax.devices()[0].device_kind} ({jax.device_count()} device)"
    command = shlex.join(["python", "benchmarks/throughput.py", *sys.argv[1:]])
    lines = [
        "## Flax NNX transformer (examples/nnx_lm.py)"
        if args.transformer
        else "# Throughput: jaxslt vs a bare jitted SGLD loop",
        "",
        f"Machine: {machine}, {platform.processor() or platform.machine()}, "
        f"jax {jax.__version__}, jaxslt {jaxslt.__version__}. Command: `{command}`. Run times "
        f"are the best of {args.repeats} warm runs; compile times are one `lower().compile()`.",
        "",
        "| model | params | chains × steps | batch | compile bare / jaxslt (s) | bare run (s) "
        "| jaxslt core (s) | ratio core/bare | estimate_llc (s) | ratio | with progress bar (s) "
        "| ratio | chain-steps/s (jaxslt core) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params']:,} | {r['chains']} × {r['steps']} | {r['batch']} | "
            f"{r['bare_compile']:.2f} / {r['core_compile']:.2f} | {r['bare']:.3f} | "
            f"{r['core']:.3f} | {r['core'] / r['bare']:.3f} | {r['api']:.3f} | "
            f"{r['api'] / r['bare']:.3f} | {r['bar']:.3f} | {r['bar'] / r['bare']:.3f} | "
            f"{r['chains'] * r['steps'] / r['core']:,.0f} |"
        )
    write_result(args.out, f"throughput-{jax.devices()[0].platform}.md", "\n".join(lines) + "\n",
                 append=args.transformer)  # fmt: skip


if __name__ == "__main__":
    main()
