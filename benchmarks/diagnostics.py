"""The diagnostics contract: does every run that is off by > 20% raise a warning?

    python benchmarks/diagnostics.py                    # every problem (run in parts, see below)
    python benchmarks/diagnostics.py --problems nc11,regular --quick   # development
    python benchmarks/diagnostics.py --report           # rebuild the table from the saved rows

For each problem, SGLD runs over a grid of deliberately good and bad settings: step sizes
ε = c/(S + γ) with S = nβ·h_max at w* (the stiffness scale) for c from 0.003 (30× below the
healthy 0.1) to 3.5 (just below SGLD's divergence at 4), too few steps, a huge γ (1e4), one
chain, and ``step_size="auto"`` (with 4 and with 1 chain). A run is *off* when its estimate is
more than 20% from the exact finite-(nβ, γ) target at the run's own (nβ, γ) (or from λ where no
finite target is known), *flagged* when ``result.diagnostics`` holds any warning, an
``LLCWarning`` was emitted, or ``estimate_llc`` raised (e.g. all chains diverged, auto found no
setting). The goal of issue 13: no run off and unflagged.

Problems and their targets:

- normal crossings, devinterp's ``sampler_accuracy_test.py`` fixture: ŷ = x·w0^p0·w1^p1 at
  w* = 0, x ~ N(0, 2²), y = 0.25·N(0, 1), n = 1000, MSE loss, nβ = n/log n, full batch. Its
  L_n(w) − L_n(0) = A·m² − 2B·m with m = w0^p0·w1^p1, A = mean x², B = mean x·y: the normal
  crossing K = m² of ``jaxslt.problems.normal_crossing`` at t = nβ·A plus a small linear term.
  The target is the exact E_p[nβ(L_n(w) − L_n(0))] of that posterior (both terms) by 2-D
  trapezoid quadrature in log|w_i| per sign of m (the method of ``normal_crossing_target``,
  which it reproduces to ~1e−12 with B = 0). S := t (the Hessian vanishes at w* = 0).
- reduced-rank regression and deep linear networks (``jaxslt.problems``, n = 1e5, γ = 1): the
  exact block-Gibbs target (``jaxslt.gibbs``, float64, 4 × 4000 sweeps), as in accuracy.py.
  Rank 0 (w* = 0, zero Hessian): S from w* after 50 exact Gibbs sweeps, as in accuracy.py.
- the regular linear-Gaussian model (``problems.regular_linear_gaussian``, d = 8, n = 5000,
  batch 256): the closed-form Gaussian posterior target Σ nβh_i/(2(nβh_i + γ)).
- a small MLP (tanh, 2-6-1 student on a 2-3-1 teacher, n = 2000, trained to a minimum): no exact
  target; the reference is a long full-batch MALA run (Metropolis-adjusted, so free of
  discretisation and minibatch bias) at the same (nβ, γ): 4 chains × 40,000 steps.
- the toy model of superposition (6 features, 2 hidden dims, f(x) = ReLU(WᵀWx + b), one feature
  on per example at a U[0, 1] value, loss mean ||x − f(x)||², n = 5000), trained in float64 from
  a regular k-gon: at its 6-gon minimum (λ = 8.5; the Hessian's positive eigenvalues are
  counted and printed: 17) the target is a long full-batch MALA reference at the run's (nβ, γ)
  (4 × 40,000 steps; 9.21 at the base nβ = 587, γ = 1, 8% above λ, so λ itself would misjudge
  good runs); at the 5-gon critical point (W's 6th column 0 and its bias −0.1, so that feature
  is dead; 14 positive eigenvalues: λ = 7) the target is λ, since chains can escape to lower
  loss (a long MALA run there gives −1.5 ± 3.3).

Hand-written findings in ``results/diagnostics-notes.md`` are appended to the table.

The rows of each problem are saved in ``results/diagnostics-<platform>.json``, so the problems
can be run in separate invocations (each ≤ 15 minutes on 2 cores); the markdown table is
rebuilt from all saved rows.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import write_result
from jax.flatten_util import ravel_pytree

import jaxslt
from jaxslt import gibbs, problems
from jaxslt.curvature import max_hessian_eigenvalue
from jaxslt.estimator import LLCWarning

OFF = 0.2
HUGE_GAMMA = 1e4
STEPS = 10_000  # per chain (20% burn-in); --quick: 3,000
CS = (0.003, 0.03, 0.1, 0.3, 1.0, 2.0, 3.5)


def warning_codes(diagnostics, emitted: list[str]) -> tuple[list[str], list[str]]:
    """The run's warning messages and their codes: each diagnostics issue by its code
    (``jaxslt.diagnostics.CODES``), then every other ``LLCWarning`` as ``other:`` and its first
    40 characters, except the estimator's own divergence warning, which repeats the ``diverged``
    issue."""
    messages = list(diagnostics.warnings)
    others = [m for m in emitted if m not in messages and "chains diverged" not in m]
    codes = {*diagnostics.codes, *("other:" + m[:40] for m in others)}
    return messages + others, sorted(codes)


# ---------------------------------------------------------------------------------------------
# problems


@dataclass
class Spec:
    key: str
    label: str
    loss_fn: object
    params: object
    data: object
    nbeta: float
    gamma: float  # the base γ
    batch_size: int | None
    scale: float  # S = nβ·h_max (or its substitute where the Hessian vanishes at w*)
    lam: float
    target: object  # γ -> (value, kind)
    note: str = ""


def h_max_at(loss_fn, params, data) -> float:
    batch = jax.tree.map(lambda x: x[:4096], data)
    return float(max_hessian_eigenvalue(loss_fn, params, batch, key=jax.random.key(3)))


# normal crossings (devinterp's fixture)


@functools.cache
def _poly_loss(powers):
    def poly_mse(w, batch):
        """devinterp's Polynomial model under MSE: mean (y − x·w0^p0·w1^p1)²."""
        x, y = batch
        m = jax.lax.integer_pow(w[0], powers[0]) * jax.lax.integer_pow(w[1], powers[1])
        return jnp.mean(jnp.square(y - x * m))

    return poly_mse


def crossing_target(powers, a, b, nbeta, gamma) -> float:
    """E_p[nβ(A m² − 2B m)], p ∝ exp(−nβ(A m² − 2B m) − γ/2·|w|²), m = w0^p0 w1^p1: trapezoid
    rule in u_i = log|w_i| (the grid of ``problems.normal_crossing_target``) per sign of m."""
    p0, p1 = powers
    t = nbeta * a
    h = 0.1 / max(powers)
    top = 0.5 * math.log(2 * 50.0 / gamma)
    bottom = top - 50.0 - max(0.0, math.log(t)) / (2 * min(powers))
    u = np.arange(top, bottom - h / 2, -h)[::-1]
    lw = u - 0.5 * gamma * np.exp(2 * u)
    m = np.exp(p0 * u[:, None] + p1 * u[None, :])
    base = lw[:, None] + lw[None, :]
    # the share of the four sign quadrants where m > 0 (1 if both powers are even)
    signs = [(1.0, 1.0)] if p0 % 2 == 0 and p1 % 2 == 0 else [(1.0, 0.5), (-1.0, 0.5)]
    parts = []
    for sigma, share in signs:
        energy = nbeta * (a * m * m - 2 * b * sigma * m)
        parts.append((share, base - energy, energy))
    shift = max(float(lm.max()) for _, lm, _ in parts)
    num = sum(s * float(np.sum(np.exp(lm - shift) * e)) for s, lm, e in parts)
    den = sum(s * float(np.sum(np.exp(lm - shift))) for s, lm, _ in parts)
    return num / den


def nc_spec(powers) -> Spec:
    n = 1000
    kx, ky = jax.random.split(jax.random.key(42))
    x = 2.0 * jax.random.normal(kx, (n,))
    y = 0.25 * jax.random.normal(ky, (n,))
    nbeta = jaxslt.default_nbeta(n)
    x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
    a, b = float(np.mean(x64**2)), float(np.mean(x64 * y64))
    check = crossing_target(powers, a, 0.0, nbeta, 1.0)
    ref = problems.normal_crossing_target(powers, t=nbeta * a, localization=1.0)
    assert abs(check / ref - 1) < 1e-9, (check, ref)
    lam = float(jaxslt.truth.normal_crossing(powers).llc)
    return Spec(
        f"nc{powers[0]}{powers[1]}",
        f"normal crossing p={powers}",
        _poly_loss(tuple(powers)),
        jnp.zeros(2),
        (x, y),
        nbeta,
        1.0,
        n,
        nbeta * a,
        lam,
        lambda g: (crossing_target(powers, a, b, nbeta, g), "quadrature"),
        f"A = {a:.4f}, B = {b:.4f}; B = 0 reproduces normal_crossing_target to 1e-9",
    )


# deep linear networks and RRR (exact Gibbs)

N_DLN = 100_000


def dln_spec(key, widths, rank, rrr=False) -> Spec:
    if rrr:
        p = problems.reduced_rank_regression(*widths, rank, key=jax.random.key(0),
                                             num_examples=N_DLN)  # fmt: skip
        label = f"RRR {'-'.join(map(str, widths))} r={rank}"
    else:
        p = problems.deep_linear_network(widths, rank, key=jax.random.key(0), num_examples=N_DLN)
        label = f"DLN {'-'.join(map(str, widths))} r={rank}"
    nbeta = jaxslt.default_nbeta(N_DLN)
    gamma = 1.0
    stats = gibbs.dln_statistics(*p.data)
    h = h_max_at(p.loss_fn, p.params, p.data)
    note = ""
    if h == 0:  # rank 0 at w* = 0: probe a posterior sample (w* after 50 exact Gibbs sweeps)
        probe = tuple(p.params)
        for k in jax.random.split(jax.random.key(4), 50):
            probe = gibbs.gibbs_sweep(k, probe, stats, p.params, nbeta=nbeta, localization=gamma)
        h = h_max_at(p.loss_fn, probe, p.data)
        note = "h_max = 0 at w*: S from w* after 50 exact Gibbs sweeps"

    @functools.cache
    def target(g):
        with jax.enable_x64(True):
            exact = gibbs.gibbs_llc_from_statistics(
                tuple(jnp.asarray(np.asarray(w), jnp.float64) for w in p.params),
                gibbs.dln_statistics(*(jnp.asarray(np.asarray(a), jnp.float64) for a in p.data)),
                key=jax.random.key(2), nbeta=nbeta, localization=g, num_chains=4,
                num_sweeps=4000, num_burnin=2000,
            )  # fmt: skip
        return float(exact.llc_mean), "Gibbs"

    return Spec(key, label, p.loss_fn, p.params, p.data, nbeta, gamma, None, nbeta * h,
                float(p.truth.llc), target, note)  # fmt: skip


# the regular model


def regular_spec() -> Spec:
    p = problems.regular_linear_gaussian(8, key=jax.random.key(0), num_examples=5000)
    x64 = np.asarray(p.data[0], np.float64)
    eigs = np.linalg.eigvalsh(x64.T @ x64 / x64.shape[0])
    nbeta = float(p.nbeta)
    return Spec(
        "regular", "regular linear d=8", p.loss_fn, p.params, p.data, nbeta, 1.0, None,
        nbeta * float(eigs.max()), float(p.truth.llc),
        lambda g: (jaxslt.truth.quadratic_posterior(eigs, nbeta=nbeta, localization=g),
                   "closed form"),
        "batch 256: minibatch noise adds to the discretisation bias",
    )  # fmt: skip


# models with no exact target: a long MALA reference


def mala_reference(spec_loss, params, data, nbeta, gamma, scale, steps=40_000, burnin=8_000):
    n = jax.tree.leaves(data)[0].shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = jaxslt.estimate_llc(
            spec_loss, params, data, key=jax.random.key(7), step_size=0.5 / (scale + gamma),
            nbeta=nbeta, localization=gamma, num_chains=4, num_draws=steps - burnin,
            num_burnin=burnin, sampler="mala", batch_size=n, progress=False,
        )  # fmt: skip
    d = r.diagnostics
    print(f"  MALA reference γ={gamma:g}: {float(r.llc_mean):.4g} ± {float(r.llc_std):.2g} "
          f"(accept {d.accept_rate:.2f}, R-hat {d.rhat:.3f}, ESS {d.ess_bulk:.0f}, "
          f"warnings {list(d.codes)})", flush=True)  # fmt: skip
    return float(r.llc_mean)


def train(loss_fn, params, data, *, steps, lr, mask=None):
    """Adam then plain gradient descent, full batch, in float64; returns float32 params."""
    with jax.enable_x64(True):
        params = jax.tree.map(lambda x: jnp.asarray(np.asarray(x), jnp.float64), params)
        data = jax.tree.map(lambda x: jnp.asarray(np.asarray(x), jnp.float64), data)
        opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=1e-3))
        masked = (lambda g: g) if mask is None else (lambda g: jax.tree.map(jnp.multiply, g, mask))

        @jax.jit
        def run(params):
            def step(carry, _):
                w, s = carry
                g = masked(jax.grad(loss_fn)(w, data))
                u, s = opt.update(g, s, w)
                return (optax.apply_updates(w, u), s), None

            (w, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
            return w

        params = run(params)
        g = masked(jax.grad(loss_fn)(params, data))
        flat, unravel = ravel_pytree(params)
        hess = jax.hessian(lambda f: loss_fn(unravel(f), data))(flat)
        eigs = np.linalg.eigvalsh(np.asarray(hess))
        gnorm = float(optax.tree.norm(g))
        loss = float(loss_fn(params, data))
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params), eigs, gnorm, loss


def mlp_loss(params, batch):
    """½·mean (y − MLP(x))², MLP = tanh hidden layer with biases, linear output."""
    x, y = batch
    hidden = jnp.tanh(x @ params["w1"] + params["b1"])
    return 0.5 * jnp.mean(jnp.square(y - hidden @ params["w2"] - params["b2"]))


def mlp_spec() -> Spec:
    n = 2000
    k = jax.random.split(jax.random.key(5), 6)
    teacher = {"w1": 1.5 * jax.random.normal(k[0], (2, 3)), "b1": jax.random.normal(k[1], (3,)),
               "w2": jax.random.normal(k[2], (3,)), "b2": jnp.zeros(())}  # fmt: skip
    x = jax.random.normal(k[3], (n, 2))
    hidden = jnp.tanh(x @ teacher["w1"] + teacher["b1"])
    y = hidden @ teacher["w2"] + teacher["b2"] + 0.1 * jax.random.normal(k[4], (n,))
    init = {"w1": jax.random.normal(k[5], (2, 6)), "b1": jnp.zeros(6),
            "w2": 0.5 * jnp.ones(6), "b2": jnp.zeros(())}  # fmt: skip
    params, eigs, gnorm, loss = train(mlp_loss, init, (x, y), steps=30_000, lr=1e-2)
    nbeta = jaxslt.default_nbeta(n)
    pos = int(np.sum(eigs > 1e-6 * eigs.max()))
    neg = int(np.sum(eigs < -1e-6 * eigs.max()))
    note = (f"25 params; trained: L_n = {loss:.5f}, |∇L| = {gnorm:.1e}; Hessian eigenvalues: "
            f"{pos} > 0, {neg} < 0, min {eigs.min():.2g}, max {eigs.max():.3g}")  # fmt: skip
    print("MLP:", note, flush=True)
    scale = nbeta * float(eigs.max())

    @functools.cache
    def target(g):
        ref = mala_reference(mlp_loss, params, (x, y), nbeta, g, scale, 80_000, 40_000)
        return ref, "MALA reference"

    return Spec("mlp", "MLP 2-6-1 tanh", mlp_loss, params, (x, y), nbeta, 1.0, None, scale,
                math.nan, target, note + "; λ unknown")  # fmt: skip


# the toy model of superposition


def tms_loss(params, x):
    """mean ||x − ReLU(WᵀWx + b)||², W: (2, 6), b: (6,)."""
    w, b = params["W"], params["b"]
    out = jax.nn.relu((x @ w.T) @ w + b)
    return jnp.mean(jnp.sum(jnp.square(x - out), axis=-1))


def tms_spec(k_gon: int) -> Spec:
    n, f = 5000, 6
    ki, kv = jax.random.split(jax.random.key(11))
    idx = jax.random.randint(ki, (n,), 0, f)
    x = jax.nn.one_hot(idx, f) * jax.random.uniform(kv, (n, 1))
    angles = 2 * np.pi * np.arange(k_gon) / k_gon
    w = np.zeros((2, f))
    w[:, :k_gon] = np.stack([np.cos(angles), np.sin(angles)])
    b = np.full(f, -0.1)
    mask = {"W": np.ones((2, f)), "b": np.ones(f)}
    if k_gon < f:
        mask["W"][:, k_gon:] = 0.0  # the dead features stay off
        mask["b"][k_gon:] = 0.0
    init = {"W": jnp.asarray(w), "b": jnp.asarray(b)}
    params, eigs, gnorm, loss = train(tms_loss, init, x, steps=30_000, lr=1e-2, mask=mask)
    nbeta = jaxslt.default_nbeta(n)
    pos = int(np.sum(eigs > 1e-6 * eigs.max()))
    neg = int(np.sum(eigs < -1e-6 * eigs.max()))
    small = np.sort(eigs[eigs > 1e-6 * eigs.max()])[:3]
    norms = np.linalg.norm(np.asarray(params["W"]), axis=0)
    note = (f"n = {n}; L_n = {loss:.5f}, |∇L| (free coords) = {gnorm:.1e}; Hessian: {pos} "
            f"positive, {neg} negative eigenvalues (smallest positive {np.round(small, 4)}, "
            f"max {eigs.max():.3g}); column norms {np.round(norms, 3)}, "
            f"b = {np.round(np.asarray(params['b']), 3)}")  # fmt: skip
    print(f"TMS {k_gon}-gon:", note, flush=True)
    lam = {6: 8.5, 5: 7.0}[k_gon]
    scale = nbeta * float(eigs.max())

    @functools.cache
    def target(g):
        if k_gon == 5:  # chains escape from the 5-gon: no finite target, λ
            return lam, "λ"
        return mala_reference(tms_loss, params, x, nbeta, g, scale), "MALA reference"

    spec = Spec(f"tms{k_gon}", f"TMS {k_gon}-gon", tms_loss, params, x, nbeta, 1.0, None,
                scale, lam, target, note)  # fmt: skip
    if k_gon == 5:  # show what a long exact-sampler run does there
        spec.reference = functools.partial(mala_reference, tms_loss, params, x, nbeta, 1.0, scale)
    return spec


PROBLEMS = {
    "nc11": lambda: nc_spec((1, 1)),
    "nc22": lambda: nc_spec((2, 2)),
    "nc13": lambda: nc_spec((1, 3)),
    "rrr": lambda: dln_spec("rrr", (6, 4, 5), 2, rrr=True),
    "dln": lambda: dln_spec("dln", [6, 4, 4, 6], 2),
    "dln0": lambda: dln_spec("dln0", [6, 4, 4, 6], 0),
    "regular": regular_spec,
    "mlp": mlp_spec,
    "tms6": lambda: tms_spec(6),
    "tms5": lambda: tms_spec(5),
}


# ---------------------------------------------------------------------------------------------
# the grid


def settings(steps):
    out = {f"c={c:g}": dict(c=c) for c in CS}
    out["few steps"] = dict(c=0.1, steps=300)
    out["huge γ"] = dict(c=0.1, gamma=HUGE_GAMMA)
    out["1 chain"] = dict(c=0.1, chains=1)
    out["1 chain c=2"] = dict(c=2.0, chains=1)
    out["auto"] = dict(auto=True)
    out["auto 1 chain"] = dict(auto=True, chains=1)
    for s in out.values():
        s.setdefault("steps", steps)
        s.setdefault("chains", 4)
    return out


def run_one(spec: Spec, name: str, s: dict, key: int = 1) -> dict:
    steps, chains = s["steps"], s["chains"]
    kw = dict(num_chains=chains, num_draws=steps - steps // 5, num_burnin=steps // 5,
              nbeta=spec.nbeta, batch_size=spec.batch_size, progress=False)  # fmt: skip
    if s.get("auto"):
        kw["step_size"] = "auto"
    else:
        gamma = s.get("gamma", spec.gamma)
        kw.update(step_size=s["c"] / (spec.scale + gamma), localization=gamma)
    start = time.perf_counter()
    raised = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = jaxslt.estimate_llc(spec.loss_fn, spec.params, spec.data,
                                         key=jax.random.key(key), **kw)  # fmt: skip
        except (FloatingPointError, RuntimeError, ValueError) as err:
            raised, result = err, None
    wall = time.perf_counter() - start
    emitted = [str(w.message) for w in caught if issubclass(w.category, LLCWarning)]
    row = dict(problem=spec.label, key=spec.key, setting=name, chains=chains, steps=steps,
               lam=spec.lam, wall=wall)  # fmt: skip
    if result is None:
        gamma = kw.get("localization", spec.gamma)
        target, kind = spec.target(gamma)
        row.update(estimate=math.nan, eps=kw.get("step_size") if not s.get("auto") else math.nan,
                   gamma=gamma, target=target, kind=kind, codes=[f"raised:{type(raised).__name__}"],
                   messages=[str(raised)[:300]], flagged=True, off=True, stiffness=math.nan,
                   bias_bound=math.nan, mala=math.nan, rhat=math.nan, ess=math.nan,
                   trend=math.nan, trend_z=math.nan, frac_below=math.nan,
                   diverged=chains)  # fmt: skip
        return row
    d = result.diagnostics
    gamma = float(result.localization)
    target, kind = spec.target(gamma)
    est = float(result.llc_mean)
    messages, codes = warning_codes(d, emitted)
    row.update(
        estimate=est, eps=float(result.step_size), gamma=gamma, target=target, kind=kind,
        codes=codes, messages=messages, flagged=bool(messages),
        off=not (abs(est / target - 1) <= OFF), stiffness=float(d.stiffness),
        bias_bound=float(d.bias_bound), mala=float(d.mala_accept), rhat=float(d.rhat),
        ess=float(d.ess_bulk), trend=float(d.trend), trend_z=float(d.trend_z),
        frac_below=float(d.frac_below_init), diverged=int(np.sum(np.asarray(result.diverged))),
    )  # fmt: skip
    return row


def fmt(x, spec=".4g"):
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def rel(r, ref):
    return r["estimate"] / ref - 1 if math.isfinite(r["estimate"]) else math.nan


def other_keys(stores: list[Path]) -> list[str]:
    """A section summarising the same grid run with other keys (``--key k``)."""
    lines = [
        "",
        "## The same grid with other keys",
        "",
        "Off and unflagged depends on the key: the same grid rerun with other keys "
        "(`--key k`, on the problems listed).",
        "",
        "| key | problems | runs | off & flagged | **off & not flagged** | off & not flagged: "
        "problem / setting (vs target) |",
        "|---|---|---|---|---|---|",
    ]
    for store in stores:
        other = json.loads(store.read_text())
        rows = [r for p in other["problems"].values() for r in p["rows"]]
        bad = [r for r in rows if r["off"] and not r["flagged"]]
        listing = "; ".join(
            f"{r['problem']} / {r['setting']} ({fmt(rel(r, r['target']), '+.0%')})" for r in bad
        )
        names = ", ".join(p["label"] for p in other["problems"].values())
        flagged_off = sum(r["off"] and r["flagged"] for r in rows)
        lines.append(
            f"| {other['key']} | {names} | {len(rows)} | {flagged_off} | **{len(bad)}** | "
            f"{listing or '–'} |"
        )
    return lines


def report(data: dict, machine: str, command: str, stores=()) -> str:
    rows = [r for p in data["problems"].values() for r in p["rows"]]
    counts = {(f, o): 0 for f in (True, False) for o in (True, False)}
    for r in rows:
        counts[(r["flagged"], r["off"])] += 1
    bad = [r for r in rows if r["off"] and not r["flagged"]]
    off_lam = [r for r in rows if not r["flagged"] and math.isfinite(r["estimate"])
               and abs(rel(r, r["lam"])) > OFF and not r["off"]]  # fmt: skip
    bad_list = "; ".join(
        f"{r['problem']} / {r['setting']} ({fmt(rel(r, r['target']), '+.0%')})" for r in bad
    )
    lam_list = "; ".join(
        f"{r['problem']} / {r['setting']} (target {r['target']:.3g}, λ {r['lam']:g})"
        for r in off_lam
    )
    lines = [
        "# Diagnostics contract: is every run that is off by > 20% flagged?",
        "",
        f"Machine: {machine} — a 2-core x86_64 VM shared with other processes at the time "
        "(wall times are indicative only). "
        f"Command: `{command}` (run in parts with `--problems`, rows merged). SGLD; the base "
        f"run is 4 chains × {data['steps']:,} steps (20% burn-in); ε = c/(S + γ), S = nβ·h_max "
        "at w* (see each problem's note); *off*: |estimate/target − 1| > 20% (target at the "
        "run's own nβ, γ; raised ⇒ off); *flagged*: any warning in `result.diagnostics`, any "
        f"`LLCWarning`, or an exception. Every run uses key {data.get('key', 1)}.",
        "",
        "| | off by > 20% | within 20% |",
        "|---|---|---|",
        f"| flagged | {counts[(True, True)]} | {counts[(True, False)]} |",
        f"| **not flagged** | **{counts[(False, True)]}** | {counts[(False, False)]} |",
        "",
        f"**Off and not flagged: {len(bad)}** (goal 0)" + (f": {bad_list}" if bad else "") + ".",
        "",
        "Within 20% of the target but more than 20% from λ, unflagged (the localizer or finite "
        f"nβ moves the target itself; no warning exists for that): {len(off_lam)}"
        + (f": {lam_list}" if off_lam else "")
        + ".",
        "",
        "## What each warning caught",
        "",
        "| warning | runs where it fired | of them off | off runs where it was the only warning |",
        "|---|---|---|---|",
    ]
    allcodes = sorted({c for r in rows for c in r["codes"]})
    for c in allcodes:
        fired = [r for r in rows if c in r["codes"]]
        offs = [r for r in fired if r["off"]]
        only = [f"{r['problem']} / {r['setting']}" for r in offs if r["codes"] == [c]]
        lines.append(f"| {c} | {len(fired)} | {len(offs)} | {'; '.join(only) or '–'} |")
    lines += ["", "## Problems", ""]
    for p in data["problems"].values():
        base = next((r for r in p["rows"] if r["setting"] == "c=0.1"), p["rows"][0])
        lines.append(
            f"- **{p['label']}**: S = nβ·h_max = {p['scale']:.4g}, nβ = {p['nbeta']:.4g}, "
            f"base γ = {p['gamma']:g}, λ = {fmt(p['lam'], 'g')}, target at the base (nβ, γ) "
            f"{base['target']:.4g} ({base['kind']}). {p['note']}"
        )
    lines += [
        "",
        "## Every run",
        "",
        "Codes: the diagnostics' issue codes (`jaxslt.diagnostics.CODES`): diverged, "
        "not_minimum (λ̂ < 0 or most draws below L_n(w*)), step_size (stiffness > 1 or bias "
        "bound > 10% of λ̂), mala_low (acceptance < 0.8), trend_rising / trend_falling, rhat, "
        "ess, mc_error (Monte-Carlo SE > 10% of λ̂), float_resolution (λ̂ within the loss's "
        "rounding); other:<start of another LLCWarning>; raised:<exception>. s = ε·(S + γ) as "
        "the estimator measures it (stiffness); bias = the first-order bound on λ̂'s inflation.",
        "",
        "| problem | setting | ε | γ | s | bias | estimate | target (kind) | vs target | vs λ |"
        " off | flagged | codes | MALA acc | R-hat | ESS | trend (z) | wall (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        mark = " **←**" if r["off"] and not r["flagged"] else ""
        lines.append(
            f"| {r['problem']} | {r['setting']} | {fmt(r['eps'], '.3g')} | {r['gamma']:g} | "
            f"{fmt(r['stiffness'], '.2g')} | {fmt(r['bias_bound'], '.2g')} | "
            f"{fmt(r['estimate'])} | {r['target']:.4g} ({r['kind']}) | "
            f"{fmt(rel(r, r['target']), '+.0%')} | {fmt(rel(r, r['lam']), '+.0%')} | "
            f"{'yes' if r['off'] else 'no'}{mark} | {'yes' if r['flagged'] else 'no'} | "
            f"{', '.join(r['codes'])} | {fmt(r['mala'], '.3f')} | {fmt(r['rhat'], '.3f')} | "
            f"{fmt(r['ess'], '.0f')} | {fmt(r['trend'], '+.0%')} ({fmt(r['trend_z'], '.1f')}) | "
            f"{r['wall']:.0f} |"
        )  # fmt: skip
    if stores:
        lines += other_keys(list(stores))
    notes = Path(__file__).parent / "results" / "diagnostics-notes.md"
    if notes.exists() and data.get("key", 1) == 1 and not data.get("quick"):
        lines += ["", notes.read_text().rstrip()]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--problems", default=",".join(PROBLEMS))
    parser.add_argument("--settings", default=None, help="comma-separated subset of the grid")
    parser.add_argument("--quick", action="store_true", help=f"3,000 steps instead of {STEPS:,}")
    parser.add_argument("--report", action="store_true", help="only rebuild the markdown")
    parser.add_argument(
        "--key", type=int, default=1, help="PRNG key of every run (results suffixed)"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    steps = 3000 if args.quick else STEPS
    plat = jax.devices()[0].platform
    suffix = ("-quick" if args.quick else "") + (f"-key{args.key}" if args.key != 1 else "")
    store = args.out / f"diagnostics-{plat}{suffix}.json"
    data = json.loads(store.read_text()) if store.exists() else {"problems": {}}
    data["steps"], data["key"], data["quick"] = steps, args.key, args.quick
    grid = settings(steps)
    if args.settings:
        grid = {k: v for k, v in grid.items() if k in args.settings.split(",")}
    if not args.report:
        for key in args.problems.split(","):
            start = time.perf_counter()
            spec = PROBLEMS[key]()
            print(f"{spec.label}: S = {spec.scale:.4g}, λ = {spec.lam:g}, base target "
                  f"{spec.target(spec.gamma)[0]:.4g} ({time.perf_counter() - start:.0f} s)",
                  flush=True)  # fmt: skip
            note = spec.note
            if hasattr(spec, "reference"):
                ref = spec.reference()
                note += f"; long full-batch MALA reference at the base (nβ, γ): {ref:.4g}"
            old = {r["setting"]: r for r in data["problems"].get(key, {}).get("rows", [])}
            for name, s in grid.items():
                r = run_one(spec, name, s, args.key)
                old[name] = r
                print(f"  {name}: {fmt(r['estimate'])} vs {r['target']:.4g} "
                      f"({fmt(rel(r, r['target']), '+.0%')}) off={r['off']} "
                      f"flagged={r['flagged']} {r['codes']} s={fmt(r['stiffness'], '.2g')} "
                      f"{r['wall']:.0f} s", flush=True)  # fmt: skip
            order = [n for n in settings(steps) if n in old]
            data["problems"][key] = dict(
                label=spec.label, scale=spec.scale, nbeta=spec.nbeta, gamma=spec.gamma,
                lam=spec.lam, note=note, rows=[old[n] for n in order],
            )  # fmt: skip
            store.parent.mkdir(parents=True, exist_ok=True)
            store.write_text(json.dumps(data, indent=1, default=float))
    order = [k for k in PROBLEMS if k in data["problems"]]
    data["problems"] = {k: data["problems"][k] for k in order}
    machine = f"{platform.machine()} {jax.devices()[0].device_kind}, jax {jax.__version__}"
    command = f"python benchmarks/diagnostics.py{' --quick' if args.quick else ''}"
    command += f" --key {args.key}" if args.key != 1 else ""
    stores = []
    if args.key == 1 and not args.quick:
        stores = sorted(args.out.glob(f"diagnostics-{plat}-key*.json"))
    text = report(data, machine, command, stores)
    write_result(args.out, f"diagnostics-{plat}{suffix}.md", text)


if __name__ == "__main__":
    main()
