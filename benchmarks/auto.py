"""The user's path: ``estimate_llc(..., step_size="auto")`` with nothing else tuned.

    python benchmarks/auto.py            # writes benchmarks/results/auto-<platform>.md
    python benchmarks/auto.py --only ICL --trace   # and prints each sampler run as it ends
    python benchmarks/auto.py --big --trace        # the 1e6-parameter DLN alone (hours)

For each problem: the estimate, the exact target of the same finite-(nβ, γ) posterior at the γ
auto chose (quadrature for normal crossings, the Gaussian closed form for the regular model,
block-Gibbs for the deep linear network), the error, whether the run warned (an ``LLCWarning``
or a raised error), and the cost: wall time of the whole auto call against a call of the
final run's settings alone (defaults, diagnostics on), each after ``jax.clear_caches()`` so
each pays its own compiles as a fresh process would, and both after a warm-up call that pays
the one-time imports (ArviZ, SciPy) which any first diagnosed call pays. Problems: devinterp's
normal-crossing potentials (as ``problems.normal_crossing`` with nβ = t = 1000/log 1000 — its
fixture's data only rescale t), the regular linear-Gaussian model, the README demo's deep
linear network, and, without an exact answer (cost only), the README Quickstart's MLP and the
2-layer transformer of ``examples/icl_transformer.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import platform
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import write_result

import jaxslt
from jaxslt import calibration, gibbs, plan, problems


def _target(name, p, gamma, nbeta):
    if name.startswith("normal crossing"):
        k = tuple(int(v) for v in name.split("k=")[1].split()[0].split(","))
        return problems.normal_crossing_target(k, t=nbeta, localization=gamma)
    if name.startswith("regular"):
        x, _ = p.data
        eigs = np.linalg.eigvalsh(np.asarray(x, np.float64).T @ np.asarray(x, np.float64) / len(x))
        return jaxslt.truth.quadratic_posterior(eigs, nbeta=nbeta, localization=gamma)
    with jax.enable_x64(True):
        exact = gibbs.gibbs_llc(
            tuple(jnp.asarray(np.asarray(w), jnp.float64) for w in p.params),
            *(jnp.asarray(np.asarray(a), jnp.float64) for a in p.data),
            key=jax.random.key(7), nbeta=nbeta, localization=gamma,
            num_chains=4, num_sweeps=2000, num_burnin=200,
        )  # fmt: skip
    return float(exact.llc_mean)


def _trained(loss_fn, params, data, steps, lr):
    """``params`` after ``steps`` full-batch Adam steps on ``loss_fn``: a checkpoint to measure."""
    opt = optax.adam(lr)

    @jax.jit
    def step(carry, _):
        w, state = carry
        updates, state = opt.update(jax.grad(loss_fn)(w, data), state)
        return (optax.apply_updates(w, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return params


def _quickstart_mlp():
    """The README Quickstart's model: a tanh MLP 3 → 16 → 1 (81 parameters) fit to sin(Σx)."""
    import flax.linen as nn

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(1)(nn.tanh(nn.Dense(16)(x)))

    model = MLP()
    x = jax.random.normal(jax.random.key(0), (5_000, 3))
    y = jnp.sin(x.sum(-1, keepdims=True))

    def loss_fn(variables, batch):
        xb, yb = batch
        return 0.5 * jnp.mean(jnp.sum((model.apply(variables, xb) - yb) ** 2, -1))

    params = _trained(loss_fn, model.init(jax.random.key(1), x), (x, y), 2000, 1e-2)
    return SimpleNamespace(loss_fn=loss_fn, params=params, data=(x, y), truth=None)


def _icl_transformer():
    """The in-context regression transformer of ``examples/icl_transformer.py`` (2 layers,
    d_model 32, 2 heads; 27,000 parameters in 31 leaves) after 500 Adam steps."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import icl_transformer as icl

    cfg = icl.Config()
    model = icl.ICLTransformer(cfg.d_model, cfg.heads, cfg.layers)
    loss_fn = icl.make_loss_fn(model)
    data = icl.make_batch(jax.random.key(1), cfg.eval_size, cfg.dim, cfg.pairs)
    params = _trained(loss_fn, model.init(jax.random.key(0), data[0][:1]), data, 500, 1e-3)
    return SimpleNamespace(loss_fn=loss_fn, params=params, data=data, truth=None)


def _problems(big=False):
    if big:  # issue 13's at-scale case: an hour or more on 2 CPU cores, Gibbs target included
        p = problems.deep_linear_network(
            [1000, 500, 1000], 100, key=jax.random.key(0), num_examples=100_000
        )
        yield "DLN 1000-500-1000 r=100 (1e6 parameters, n = 1e5)", p, {}
        return
    nbeta = 1000 / np.log(1000)
    for k in [(1, 1), (1, 2), (2, 2), (0, 1)]:
        p = problems.normal_crossing(k, t=nbeta)
        yield f"normal crossing k={k[0]},{k[1]}", p, dict(batch_size=2)
    p = problems.regular_linear_gaussian(8, key=jax.random.key(0), num_examples=5000)
    yield "regular d=8, n=5000", p, {}
    p = problems.deep_linear_network([6, 4, 4, 6], 2, key=jax.random.key(0), num_examples=10_000)
    yield "DLN 6-4-4-6 r=2 (demo)", p, {}
    yield "Quickstart MLP (no exact answer)", _quickstart_mlp(), {}
    yield "2-layer ICL transformer (no exact answer)", _icl_transformer(), {}


def _warm_up():
    """One-time imports (ArviZ, SciPy, pandas) that a user's first diagnosed call pays
    whatever the step size: paid here so neither timed column carries them."""
    p = problems.regular_linear_gaussian(2, key=jax.random.key(0), num_examples=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a deliberately short run
        jaxslt.estimate_llc(
            p.loss_fn, p.params, p.data, key=jax.random.key(0), step_size=1e-4, num_draws=20,
            num_burnin=5, progress=False,
        )  # fmt: skip
    jax.clear_caches()


@contextlib.contextmanager
def _traced_sampler_runs():
    """Print every compiled sampler run of auto (the calibration's pilot, cells and probe,
    the final run) as it ends: its lengths, settings and wall time, compile included."""
    start = time.perf_counter()

    def traced(run, who):
        def call(*args, **kwargs):
            t0 = time.perf_counter()
            result = jax.block_until_ready(run(*args, **kwargs))
            lengths = kwargs.get("schedule")
            burnin, draws = (
                ("-", "-") if lengths is None else (int(lengths.num_burnin), int(lengths.num_draws))
            )
            print(
                f"  [{time.perf_counter() - start:7.1f} s] {who}: burn-in {burnin}, draws {draws}, "
                f"ε = {float(kwargs['step_size']):.3g}, γ = {float(kwargs['localization']):g}: "
                f"{time.perf_counter() - t0:.1f} s",
                file=sys.stderr, flush=True,
            )  # fmt: skip
            return result

        return call

    patched = [(calibration, "calibration"), (plan, "final run")]
    originals = [module.sample_llc_jit for module, _ in patched]
    for module, who in patched:
        module.sample_llc_jit = traced(module.sample_llc_jit, who)
    try:
        yield
    finally:
        for (module, _), original in zip(patched, originals, strict=True):
            module.sample_llc_jit = original


def _row(name, p, kw, seed, trace=False):
    """One problem, one key: auto's estimate, its target, error and cost, as a table row."""
    jax.clear_caches()  # auto pays its compiles, as a fresh call would
    nbeta = p.nbeta if name.startswith("normal crossing") else None
    t0 = time.perf_counter()
    traced = _traced_sampler_runs() if trace else contextlib.nullcontext()
    with warnings.catch_warnings(record=True) as caught, traced:
        warnings.simplefilter("always")
        try:
            r = jaxslt.estimate_llc(
                p.loss_fn, p.params, p.data, key=jax.random.key(seed), step_size="auto",
                nbeta=nbeta, progress=False, **kw,
            )  # fmt: skip
        except (RuntimeError, FloatingPointError) as err:
            return (name, str(seed), "raised", str(err).splitlines()[0][:80])
    auto_s = time.perf_counter() - t0
    if trace:
        print(r.calibration.explanation, file=sys.stderr, flush=True)
    llcw = [str(c.message) for c in caught if issubclass(c.category, jaxslt.LLCWarning)]
    gamma, nb = float(r.localization), float(r.nbeta)
    jax.clear_caches()  # the final run alone pays its own compiles, as a fresh call would
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its warnings are auto's, counted above
        jax.block_until_ready(
            jaxslt.estimate_llc(
                p.loss_fn, p.params, p.data, key=jax.random.key(seed + 1),
                step_size=float(r.step_size), localization=gamma, nbeta=nb,
                num_burnin=r.burnin_loss_trace.shape[1], num_draws=r.loss_trace.shape[1],
                progress=False, **kw,
            ).llc_mean
        )  # fmt: skip
    final_s = time.perf_counter() - t0
    exact = p.truth is not None
    target = _target(name, p, gamma, nb) if exact else math.nan
    err = float(r.llc_mean) / target - 1 if exact else math.nan
    se = float(r.llc_std) / math.sqrt(np.isfinite(np.asarray(r.llc_per_chain)).sum())
    return (
        name,
        str(seed),
        f"{float(r.llc_mean):.4g} ± {se:.2g}",
        f"{target:.4g}" if exact else "—",
        f"{float(p.truth.llc):.4g}" if exact else "—",
        f"{err:+.1%}" if exact else "—",
        f"{float(r.step_size):.3g}",
        f"{gamma:g}",
        f"{r.loss_trace.shape[1]}",
        "yes" if llcw else "no",
        f"{auto_s:.1f}",
        f"{final_s:.1f}",
        f"{auto_s / final_s:.1f}",
        "; ".join(w[:90] for w in llcw),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--only", default="", help="run the problems whose name contains this")
    parser.add_argument("--skip", default=None, help="skip the problems whose name contains this")
    parser.add_argument(
        "--keys", type=int, nargs="+", default=[1], help="auto's key(s); the timed final run "
        "uses key + 1"
    )  # fmt: skip
    parser.add_argument(
        "--trace", action="store_true", help="print each sampler run of auto as it ends (its "
        "lengths, settings and wall time) and the calibration's explanation"
    )  # fmt: skip
    parser.add_argument(
        "--big", action="store_true", help="only the 1e6-parameter deep linear network "
        "(1000-500-1000, rank 100, n = 1e5) instead of the other problems"
    )  # fmt: skip
    args = parser.parse_args()
    _warm_up()
    rows = []
    for name, p, kw in _problems(args.big):
        if args.only not in name or (args.skip and args.skip in name):
            continue
        for seed in args.keys:
            rows.append(_row(name, p, kw, seed, trace=args.trace))
            print(rows[-1], flush=True)
    header = (
        "| problem | key | auto λ̂ ± SE | exact target at its (nβ, γ) | λ | error vs target | ε | "
        "γ | draws | warned | auto wall (s) | final run alone (s) | auto / final | warnings |\n|"
        + "---|"
        * 14
    )
    table = "\n".join(
        "| " + " | ".join(row) + " |"
        if len(row) == 14
        else f"| {row[0]} | {row[1]} | {row[2]}: {row[3]} |"
        for row in rows
    )
    exact = [r for r in rows if len(r) != 14 or r[5] != "—"]
    errors = [abs(float(r[5].rstrip("%")) / 100) for r in exact if len(r) == 14]
    ok = [r for r in exact if len(r) == 14 and abs(float(r[5].rstrip("%"))) <= 10]
    command = " ".join(["python benchmarks/auto.py", *sys.argv[1:]])
    text = (
        f'# `step_size="auto"`, nothing else tuned\n\nMachine: {platform.machine()}, '
        f"{jax.devices()[0].platform}, {jax.device_count()} device(s). Command: "
        f"`{command}`.\n\n" + header + "\n" + table + "\n\n"
        f"Within 10% of the exact target: {len(ok)} of {len(exact)}; mean |error| "
        f"{np.mean(errors):.1%} over the {len(errors)} that returned.\n"
    )
    write_result(args.out, f"auto-{jax.devices()[0].platform}.md", text)


if __name__ == "__main__":
    main()
