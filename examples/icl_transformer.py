"""Developmental interpretability on a small transformer: the LLC over training, per head.

Trains a 2-layer pre-LN transformer (Flax Linen) on in-context linear regression, saves orbax
checkpoints at log-spaced steps, loads them back and measures at every checkpoint w_t

- λ̂(w_t), the local learning coefficient of the whole network (``jaxslt.llc_trajectory``);
- λ̂(w_t; head), the weight-refined LLC of each attention head: W_Q, W_K, W_V and W_O of that
  head sampled, every other weight frozen at w_t (``restrict=``, a predicate returning element
  masks along the head axis of the packed attention kernels);

then splits the LLC curve into developmental stages (``jaxslt.stages.detect_stages``) and plots
it (``jaxslt.plots.plot_stages``).

The task (Garg et al. 2022; Raventós et al. 2023; Hoogland et al., "Loss landscape degeneracy
and stagewise development in transformers"): every sequence has its own task t ~ N(0, I_d);
x_k ~ N(0, I_d), y_k = t·x_k + ε_k with ε_k ~ N(0, σ²), σ² = 0.125, k = 1..K. Tokens interleave
x_k as (0, x_k) and y_k as (y_k, 0, ..., 0); reading the causal prefix up to x_k the model
predicts y_k. The per-sequence loss is the mean over the K positions of (ŷ_k − y_k)²; L_n is its
mean over n fixed evaluation sequences (the LLC's data set; nβ = n / log n). Reference levels:
predicting 0 costs E[y²] = d + σ²; the Bayes posterior mean of t from the k earlier pairs (ridge
with penalty σ²) is the best any model can do.

SGLD settings, one rule for every checkpoint so that the curve is one measurement: γ = 100,
nβ = n / log n, ε = margin / (nβ·h_max + γ) with h_max the largest Hessian eigenvalue of L_n at
the final checkpoint (power iteration, ``jaxslt.curvature.max_hessian_eigenvalue``) and
margin = 0.3: SGLD is stable for ε·(nβ·h_max + γ) < 4; at 0.3 the stiffest direction's variance
is inflated by 1/(1 − 0.3/4) ≈ 8% while the chains equilibrate within a few hundred steps.
``jaxslt.calibrate``'s stricter 0.1 needs ~3× longer chains: in a trial on a checkpoint trained
for 2000 steps (4 chains × 1000 steps), margins 0.1 / 0.3 / 1.0 gave λ̂ = 36.7 (still rising) /
40.3 (flat after ~500 steps) / 42.7, MALA acceptance 0.99 / 0.98 / 0.97. The MALA acceptance
and the diagnostics of every checkpoint are in the CSV.

    python examples/icl_transformer.py --out runs/icl          # full run (minutes on 2 cores)
    python examples/icl_transformer.py --out /tmp/icl --quick  # smoke test

Writes into ``--out``: ``checkpoints/`` (orbax, one folder per step), ``llc_curve.csv`` (one
row per checkpoint: loss, λ̂ and its diagnostics, the stage, every head's λ̂), ``stages.csv``,
``llc_curve.png`` (LLC, loss and stages), ``head_llcs.png`` (one curve per head) and
``summary.json`` (settings, baselines, stage boundaries, wall time per phase).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from _training import make_train_segment  # this folder: examples/_training.py
from matplotlib.figure import Figure

import jaxslt
from jaxslt.checkpoints import checkpoint_steps, load_checkpoints, save_checkpoint
from jaxslt.curvature import max_hessian_eigenvalue
from jaxslt.plots import plot_stages, save_figure
from jaxslt.stages import detect_stages

PyTree = Any
NOISE_VARIANCE = 0.125  # σ² of the regression noise, as in Raventós et al. and Hoogland et al.
DPI = 100  # figures for the docs (docs/figures): small files


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a run (``--quick`` swaps in ``QUICK``'s values)."""

    dim: int = 4  # d, input dimension of the regression tasks
    pairs: int = 8  # K, (x, y) pairs per sequence
    d_model: int = 32
    heads: int = 2
    layers: int = 2
    train_steps: int = 4000
    train_batch: int = 64
    learning_rate: float = 3e-3
    checkpoints: int = 16
    eval_size: int = 1024  # n, sequences in the LLC's data set
    chains: int = 4
    burnin: int = 200
    draws: int = 300
    llc_batch: int = 32
    localization: float = 100.0
    margin: float = 0.3
    step_size: float | None = None  # ε; None: margin / (nβ·h_max + γ) at the final checkpoint
    head_layers: tuple[int, ...] | None = None  # layers whose heads get a refined LLC; None: all
    seed: int = 0


QUICK = dict(
    dim=3, pairs=6, d_model=16, heads=2, train_steps=300, train_batch=32, checkpoints=8,
    eval_size=256, chains=2, burnin=20, draws=40, llc_batch=16, head_layers=(1,),
    step_size=2e-4,
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# data and model (pure)


def make_batch(
    key: jax.Array, num: int, dim: int, pairs: int, noise_std: float = NOISE_VARIANCE**0.5
) -> tuple[jax.Array, jax.Array]:
    """``num`` sequences of in-context linear regression: tokens (num, 2K, d + 1), x_k as
    (0, x_k) at even positions and y_k as (y_k, 0, ..., 0) at odd ones, and targets y (num, K)."""
    k_task, k_x, k_noise = jax.random.split(key, 3)
    task = jax.random.normal(k_task, (num, dim))
    x = jax.random.normal(k_x, (num, pairs, dim))
    y = jnp.einsum("nkd,nd->nk", x, task) + noise_std * jax.random.normal(k_noise, (num, pairs))
    x_tokens = jnp.concatenate([jnp.zeros((num, pairs, 1)), x], axis=-1)
    y_tokens = jnp.concatenate([y[..., None], jnp.zeros((num, pairs, dim))], axis=-1)
    tokens = jnp.stack([x_tokens, y_tokens], axis=2).reshape(num, 2 * pairs, dim + 1)
    return tokens, y


def bayes_mse(tokens: np.ndarray, targets: np.ndarray, noise_var: float = NOISE_VARIANCE) -> float:
    """Loss of the Bayes-optimal predictor: at position k the posterior mean of t given the k
    earlier pairs under t ~ N(0, I), i.e. ridge regression with penalty σ²."""
    x = np.asarray(tokens, dtype=np.float64)[:, 0::2, 1:]
    y = np.asarray(targets, dtype=np.float64)
    dim = x.shape[-1]
    errors = []
    for k in range(x.shape[1]):
        gram = np.einsum("nki,nkj->nij", x[:, :k], x[:, :k]) + noise_var * np.eye(dim)
        task = np.linalg.solve(gram, np.einsum("nki,nk->ni", x[:, :k], y[:, :k])[..., None])
        errors.append(np.mean((np.einsum("ni,ni->n", x[:, k], task[..., 0]) - y[:, k]) ** 2))
    return float(np.mean(errors))


class Block(nn.Module):
    """Pre-LN transformer block: h + Attn(LN(h)), then h + MLP(LN(h)). Attention has no biases,
    so one head is exactly its slices of W_Q, W_K, W_V and W_O."""

    d_model: int
    heads: int

    @nn.compact
    def __call__(self, h: jax.Array, mask: jax.Array) -> jax.Array:
        a = nn.LayerNorm(name="ln_attn")(h)
        attention = nn.MultiHeadDotProductAttention(self.heads, use_bias=False, name="attn")
        h = h + attention(a, mask=mask)
        m = nn.Dense(4 * self.d_model, name="mlp_in")(nn.LayerNorm(name="ln_mlp")(h))
        return h + nn.Dense(self.d_model, name="mlp_out")(nn.gelu(m))


class ICLTransformer(nn.Module):
    """Linear embedding + learned positions, ``layers`` pre-LN blocks (causal), final LN and a
    linear read-out at the x positions: (..., 2K, d + 1) tokens → (..., K) predictions of y."""

    d_model: int
    heads: int
    layers: int

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        positions = self.param(
            "pos_embed", nn.initializers.normal(0.02), (tokens.shape[-2], self.d_model)
        )
        h = nn.Dense(self.d_model, name="embed")(tokens) + positions
        mask = nn.make_causal_mask(tokens[..., 0])
        for i in range(self.layers):
            h = Block(self.d_model, self.heads, name=f"block_{i}")(h, mask)
        return nn.Dense(1, name="unembed")(nn.LayerNorm(name="ln_final")(h))[..., 0::2, 0]


def make_loss_fn(model: ICLTransformer) -> Callable[[PyTree, tuple], jax.Array]:
    """L(variables, (tokens, y)) = mean over sequences of the per-sequence mean squared error.
    Create it once: jaxslt reuses its compiled programs for the same function object."""

    def loss_fn(variables: PyTree, batch: tuple) -> jax.Array:
        tokens, targets = batch
        return jnp.mean((model.apply(variables, tokens) - targets) ** 2)

    return loss_fn


def checkpoint_schedule(train_steps: int, num: int) -> list[int]:
    """Step 0 and ``num − 1`` log-spaced steps from train_steps/300 to train_steps (fewer when
    rounding merges some). Step 1 is left out: its update has learning rate 0 (warm-up)."""
    first = max(2.0, train_steps / 300)
    logspaced = np.rint(np.geomspace(first, train_steps, num - 1)).astype(int)
    return sorted({0, *logspaced.tolist()})


def head_selector(layer: int, head: int) -> Callable[[str, Any], Any]:
    """``restrict=`` predicate for one attention head: the head's slice of the query, key and
    value kernels (d_model, heads, head_dim) and of the output kernel (heads, head_dim,
    d_model); everything else frozen."""
    return jaxslt.attention_head(f"params/block_{layer}/attn/", head)


# ---------------------------------------------------------------------------------------------
# the phases (the shell: files, printing, timing)


def train(cfg: Config, model: ICLTransformer, loss_fn: Callable, directory: pathlib.Path):
    """Train with Adam (warm-up, cosine decay) and save a checkpoint at every scheduled step.
    Returns {step: mean training loss over the steps since the previous checkpoint}."""
    schedule = checkpoint_schedule(cfg.train_steps, cfg.checkpoints)
    existing = checkpoint_steps(directory) if directory.exists() else []
    if existing:
        if existing != schedule:
            raise SystemExit(
                f"{directory} holds checkpoints {existing}, not this run's {schedule}: choose "
                "a fresh --out"
            )
        print(f"reusing the {len(existing)} checkpoints in {directory}")
        return {}
    tokens, _ = make_batch(jax.random.key(0), 1, cfg.dim, cfg.pairs)
    params = model.init(jax.random.key(cfg.seed), tokens)
    lr = optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, max(1, cfg.train_steps // 50), cfg.train_steps,
        cfg.learning_rate / 10,
    )  # fmt: skip
    optimizer = optax.adam(lr)
    opt_state = optimizer.init(params)
    segment = make_train_segment(
        loss_fn, optimizer,
        lambda key: make_batch(key, cfg.train_batch, cfg.dim, cfg.pairs), cfg.seed,
    )  # fmt: skip
    train_loss, done = {}, 0
    for step in schedule:
        params, opt_state, loss = segment(params, opt_state, done, step - done)
        train_loss[step] = float(loss) if step > done else math.nan
        done = step
        save_checkpoint(directory, step, params)
    return train_loss


def step_size_rule(loss_fn, params, data, *, nbeta, localization, margin, key):
    """ε = margin / (nβ·h_max + γ), h_max by power iteration on ≤ 512 sequences."""
    subset = jax.tree.map(lambda x: x[:512], data)
    h_max = float(max_hessian_eigenvalue(loss_fn, params, subset, key=key))
    return margin / (nbeta * h_max + localization), h_max


def head_names(cfg: Config) -> list[tuple[str, int, int]]:
    layers = range(cfg.layers) if cfg.head_layers is None else cfg.head_layers
    return [(f"L{layer}H{head}", layer, head) for layer in layers for head in range(cfg.heads)]


def plot_heads(table: pd.DataFrame, heads: Sequence[str], stages, chains: int) -> Figure:
    """One λ̂ curve per head (± standard error across chains), stage boundaries dotted."""
    fig = Figure(figsize=(8.0, 4.5), layout="constrained")
    ax = fig.subplots()
    steps = table["step"].to_numpy(float)
    if stages.scale == "log":
        ax.set_xscale("symlog", linthresh=float(steps[steps > 0][0]), linscale=1.0)
    for i, name in enumerate(heads):
        mean = table[f"{name}_llc_mean"].to_numpy(float)
        se = table[f"{name}_llc_std"].to_numpy(float) / math.sqrt(chains)
        color = f"C{i}"
        ax.plot(steps, mean, marker="o", ms=3, lw=1.2, color=color, label=name)
        ax.fill_between(steps, mean - se, mean + se, color=color, alpha=0.2, lw=0)
    for b in stages.boundaries[1:-1]:
        ax.axvline(b, color="0.5", lw=0.8, ls=":")
    ax.axhline(0, color="0.7", lw=0.6)
    ax.set_xlabel("training step")
    ax.set_ylabel(r"weight-refined $\hat\lambda$ (head)")
    ax.set_title("Per-head LLC (W_Q, W_K, W_V, W_O of one head sampled; dotted: LLC stages)")
    ax.legend(ncol=min(len(heads), 4), fontsize=8, title="layer/head", title_fontsize=8)
    return fig


def parse_args(argv: Sequence[str] | None) -> tuple[Config, pathlib.Path]:
    parser = argparse.ArgumentParser(
        prog="icl_transformer.py",
        description="LLC and per-head LLC curves over training of a small transformer on "
        "in-context linear regression, with developmental stages.",
    )
    parser.add_argument("--out", required=True, type=pathlib.Path, help="output directory")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    flags = {f.name: f for f in dataclasses.fields(Config)}
    for name, field in flags.items():
        if name == "step_size":
            parser.add_argument(
                "--step-size", type=float,
                help="SGLD ε for every checkpoint (default: margin / (nβ·h_max + γ))",
            )  # fmt: skip
            continue
        if name == "head_layers":
            parser.add_argument(
                "--head-layers", type=lambda s: tuple(int(v) for v in s.split(",")),
                help="comma-separated layers whose heads get a refined LLC (default: all)",
            )  # fmt: skip
            continue
        parser.add_argument(
            "--" + name.replace("_", "-"), type=type(field.default),
            help=f"default {field.default} ({QUICK.get(name, field.default)} with --quick)",
        )  # fmt: skip
    args = parser.parse_args(argv)
    values = {**(QUICK if args.quick else {})}
    values.update({k: v for k, v in vars(args).items() if k in flags and v is not None})
    cfg = Config(**values)
    if cfg.checkpoints < 5:
        parser.error("--checkpoints must be >= 5 (stage detection needs five points)")
    if cfg.d_model % cfg.heads:
        parser.error(f"--d-model {cfg.d_model} must be divisible by --heads {cfg.heads}")
    if cfg.chains < 2:
        parser.error("--chains must be >= 2 (the spread across chains is the error bar)")
    bad = [layer for layer in cfg.head_layers or () if not 0 <= layer < cfg.layers]
    if bad:
        parser.error(f"--head-layers {bad} out of range: the model has layers 0..{cfg.layers - 1}")
    return cfg, args.out


def main(argv: Sequence[str] | None = None) -> int:
    cfg, out = parse_args(argv)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    model = ICLTransformer(cfg.d_model, cfg.heads, cfg.layers)
    loss_fn = make_loss_fn(model)

    clock = time.perf_counter()
    train_loss = train(cfg, model, loss_fn, out / "checkpoints")
    timings["train"] = time.perf_counter() - clock

    clock = time.perf_counter()
    tokens, _ = make_batch(jax.random.key(0), 1, cfg.dim, cfg.pairs)
    like = jax.eval_shape(model.init, jax.random.key(0), tokens)
    checkpoints = dict(load_checkpoints(out / "checkpoints", like=like))
    timings["load"] = time.perf_counter() - clock
    steps = sorted(checkpoints)
    num_params = sum(x.size for x in jax.tree.leaves(like))
    print(f"{len(steps)} checkpoints, steps {steps}; {num_params} parameters")

    data = make_batch(jax.random.key(cfg.seed + 1000), cfg.eval_size, cfg.dim, cfg.pairs)
    nbeta = jaxslt.default_nbeta(cfg.eval_size)
    key = jax.random.key(cfg.seed + 2000)
    step_size, h_max = cfg.step_size, None
    if step_size is None:
        clock = time.perf_counter()
        step_size, h_max = step_size_rule(
            loss_fn, checkpoints[steps[-1]], data, nbeta=nbeta, localization=cfg.localization,
            margin=cfg.margin, key=key,
        )  # fmt: skip
        timings["step_size"] = time.perf_counter() - clock
        print(f"h_max = {h_max:.4g} at step {steps[-1]} (power iteration)")
    print(
        f"SGLD: ε = {step_size:.3g}, nβ = n/log n = {nbeta:.4g}, γ = {cfg.localization:g}, "
        f"{cfg.chains} chains × ({cfg.burnin} burn-in + {cfg.draws} draws), "
        f"batch {cfg.llc_batch}"
    )

    settings = dict(
        step_size=step_size, nbeta=nbeta, localization=cfg.localization, num_chains=cfg.chains,
        num_draws=cfg.draws, num_burnin=cfg.burnin, batch_size=cfg.llc_batch,
        eval_batch_size=min(cfg.eval_size, 256), progress=False,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", jaxslt.LLCWarning)
        clock = time.perf_counter()
        table = jaxslt.llc_trajectory(
            loss_fn, checkpoints, data, key=jax.random.fold_in(key, 0), **settings
        )
        timings["llc_full"] = time.perf_counter() - clock
        print(f"LLC curve: {timings['llc_full']:.1f} s")
        heads = head_names(cfg)
        clock = time.perf_counter()
        for i, (name, layer, head) in enumerate(heads):
            part = jaxslt.llc_trajectory(
                loss_fn, checkpoints, data, key=jax.random.fold_in(key, 1 + i),
                restrict=head_selector(layer, head), **settings,
            )  # fmt: skip
            for column in ("llc_mean", "llc_std", "mala_accept", "ok"):
                table[f"{name}_{column}"] = part[column].to_numpy()
            print(f"  head {name}: {time.perf_counter() - clock:.1f} s so far")
        timings["llc_heads"] = time.perf_counter() - clock
    flagged = table["step"][~table["ok"].astype(bool)].tolist()
    print(f"{len(caught)} diagnostic warnings; the LLC curve is flagged at steps {flagged} "
          "(the CSV's warnings column says why)")  # fmt: skip

    clock = time.perf_counter()
    table.insert(1, "train_loss", [train_loss.get(s, math.nan) for s in steps])
    table = table.rename(columns={"init_loss": "loss"})
    llc = table["llc_mean"].to_numpy(float)
    llc_se = table["llc_std"].to_numpy(float) / math.sqrt(cfg.chains)
    loss = table["loss"].to_numpy(float)
    stages = detect_stages(steps, llc, llc_std=llc_se, loss=loss)
    table["stage"] = np.searchsorted(stages.boundaries[1:-1], steps, side="right")
    baselines = {
        "predict_zero": float(jnp.mean(data[1] ** 2)),
        "bayes_optimal": bayes_mse(*data),
    }
    fig = plot_stages(
        steps, llc, stages, llc_std=llc_se, loss=loss,
        title=f"LLC over training, {cfg.layers}-layer transformer, in-context linear regression "
        f"(d={cfg.dim}, K={cfg.pairs}); loss: predict-0 {baselines['predict_zero']:.2f}, "
        f"Bayes {baselines['bayes_optimal']:.2f}",
    )  # fmt: skip
    save_figure(fig, out / "llc_curve.png", dpi=DPI)
    heads_fig = plot_heads(table, [name for name, _, _ in heads], stages, cfg.chains)
    save_figure(heads_fig, out / "head_llcs.png", dpi=DPI)
    table.to_csv(out / "llc_curve.csv", index=False)
    stages.stages.to_csv(out / "stages.csv", index=False)
    timings["stages_plots"] = time.perf_counter() - clock

    summary = dict(
        config=dataclasses.asdict(cfg), num_params=num_params, steps=steps,
        nbeta=nbeta, localization=cfg.localization, step_size=step_size, h_max=h_max,
        baselines=baselines, boundaries=[float(b) for b in stages.boundaries],
        stages=stages.stages.to_dict(orient="records"), timings_s=timings,
    )  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(stages.stages.to_string(index=False))
    print("wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    print(f"wrote {out}/llc_curve.png, head_llcs.png, llc_curve.csv, stages.csv, summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
