"""A small Flax NNX language model: train it, then measure its LLC and its attention heads'.

The model is a decoder-only transformer written with Flax NNX: token embeddings (``nnx.Embed``)
plus learned positions, ``layers`` pre-LN blocks h + Attn(LN(h)), h + MLP(LN(h)) with causal
``nnx.MultiHeadAttention`` and a GELU MLP, a final ``nnx.LayerNorm`` and a linear read-out to
next-token logits. It has no biases (as in PaLM and LLaMA): one head is then exactly its slices
of W_Q, W_K, W_V and W_O, and the model has 8 parameter arrays per block, not 12 (a sampler's
compile time grows with the number of arrays).

The data are synthetic and generated here from a key. A fixed random "language" (drawn from
``Config.seed``): a first-order Markov chain over ``vocab`` tokens in which every token has
``branching`` equally likely successors. A sequence of length T is a chain x_0 (uniform),
x_1, ..., x_{T/2−1} followed by a copy of itself: x_{T/2+j} = x_j. Next-token prediction then
has two parts: the first half is a bigram statistic (entropy log(branching) per token), the
second half needs attention (a copy head looking T/2 − 1 positions back). The Bayes-optimal
mean cross-entropy over the T − 1 next-token targets is

    L_min = (T/2 − 1)·log(branching) / (T − 1)

(``bayes_loss``); predicting uniformly costs log(vocab). A few hundred Adam steps on a CPU
bring a 2-layer model within a few percent of L_min (layer 1's heads then stay nearly idle:
their λ̂ is about a tenth of layer 0's).

The LLC: L_n is the mean next-token cross-entropy over n fixed evaluation sequences (the LLC's
data set), nβ = n / log n (jaxslt's default), γ = ``Config.localization``, ε =
``Config.step_size``: fixed values, chosen by hand as ``Config`` explains, rather than
``step_size="auto"``, whose calibration grid of full estimates costs many times the final run
for a transformer on a CPU (docs/trust.md).

The per-head LLC λ̂(w*; head) is the weight-refined LLC (``restrict=``): one head's slices of
W_Q, W_K, W_V and W_O sampled, every other weight frozen at w* (``head_selector``), with the
same nβ, γ and ε as the whole network's. The heads of one layer share a compiled program (their
selections differ only in index arrays).

    python examples/nnx_lm.py --quick    # 1–1.5 minutes on 2 CPU cores, most of it compiling
    python examples/nnx_lm.py            # a larger model, longer chains, every head: ~4 min

Importable (tests/test_transformer.py; benchmarks/compile.py and throughput.py through
benchmarks/_common.py): ``Config``, ``QUICK``, ``make_data``, ``bayes_loss``, ``make_model``,
``make_loss_fn``, ``train``, ``head_selector``, ``llc_settings``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _training import make_train_segment  # this folder: examples/_training.py
from flax import nnx

import jaxslt

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Config:
    """Model, data, training and LLC settings (``QUICK``: the tiny preset of ``--quick``).

    Why these LLC settings. Measured on the QUICK model (4 chains × (600 + 1000) steps, batch
    32, nβ = 512 / log 512 = 82; at w* h_max ≈ 6, so s = ε·(nβ·h_max + γ) ≈ 0.14 against
    SGLD's stability limit of 4):

    - γ = 200: at γ = 100 one of two keys left a chain still drifting after the burn-in
      (trend z = −3.2, ESS 58 < 100). With γ = 200 the flat directions, which only γ confines,
      relax in 1/(εγ) = 25 steps, and four keys gave clean diagnostics (ESS 270–600). λ̂ moves
      with γ here (≈ 28 at γ = 100, ≈ 16.5 at 200): it is a measurement at this (nβ, γ), to be
      compared only with others at the same values.
    - ε = 2e-4: MALA acceptance of the SGLD steps ≈ 0.85 for the whole network; at 2.5e-4 and
      3e-4 the step check flagged discretisation bias (and at 3e-4 the acceptance fell to
      0.80, the diagnostics' limit); at 1e-4 the chains' autocorrelation left ESS < 100.
    - ``head_layers``: QUICK refines layer 0's heads only. Layer 1's heads are nearly idle
      (λ̂ ≈ 0.4–0.6; one layer solves the copy) and at these settings their chains creep
      outwards along the idle head's degenerate directions, where the curvature grows ~10×
      (the step check's bias bound is then ≈ 11% of a λ̂ of 0.45; at ε = 1.5e-4 the trace
      still rises): measuring them cleanly needs much longer chains than a smoke test.

    The default sizes (n = 1024, nβ = 148) take ε = 8e-5: at 2e-4 the step check bounded the
    whole network's bias at 11% of λ̂ and asked for ε ≤ 8.4e-5; at 8e-5 its estimate passes
    every check (λ̂ ≈ 25.5, MALA 0.92), but the idle heads of layer 1 (λ̂ ≈ 0.2) still warn
    (the check asks for ε ≤ 2.5e-5) and one head of layer 0 was flagged as still rising
    (z = 3.1).
    """

    vocab: int = 16
    seq_len: int = 16  # T (even): a T/2-token Markov chain, then its copy
    d_model: int = 32
    heads: int = 2
    layers: int = 2
    branching: int = 2  # successors per token in the Markov chain
    train_steps: int = 1000
    train_batch: int = 64
    learning_rate: float = 1e-2  # peak of a warm-up + cosine schedule
    eval_size: int = 1024  # n, sequences in the LLC's data set
    chains: int = 4
    burnin: int = 1000
    draws: int = 2000
    llc_batch: int = 64
    localization: float = 200.0
    step_size: float = 8e-5
    head_layers: tuple[int, ...] | None = None  # layers whose heads get a λ̂; None: all
    seed: int = 0


QUICK = Config(
    vocab=8, seq_len=12, d_model=16, heads=2, layers=2, train_steps=500, train_batch=64,
    eval_size=512, chains=4, burnin=600, draws=1000, llc_batch=32, step_size=2e-4,
    head_layers=(0,),
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# data


def transition_logits(cfg: Config) -> jax.Array:
    """The language: a (vocab, vocab) matrix of logits, row v 0 on v's ``branching`` successors
    (drawn without replacement from ``Config.seed``) and −inf elsewhere."""
    keys = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), 7), cfg.vocab)
    successors = jax.vmap(lambda k: jax.random.permutation(k, cfg.vocab)[: cfg.branching])(keys)
    rows = jnp.arange(cfg.vocab)[:, None]
    return jnp.full((cfg.vocab, cfg.vocab), -jnp.inf).at[rows, successors].set(0.0)


@functools.partial(jax.jit, static_argnums=(1, 2))
def make_data(key: jax.Array, num: int, cfg: Config) -> jax.Array:
    """``num`` sequences (num, T) of int32 tokens: a T/2-step Markov chain of the language
    (``transition_logits``, x_0 uniform), then its copy. Deterministic in ``key``."""
    if cfg.seq_len % 2:
        raise ValueError(f"seq_len must be even; got {cfg.seq_len}")
    logits = transition_logits(cfg)
    k_first, k_chain = jax.random.split(key)
    first = jax.random.randint(k_first, (num,), 0, cfg.vocab)

    def step(token, k):
        token = jax.random.categorical(k, logits[token]).astype(jnp.int32)
        return token, token

    _, rest = jax.lax.scan(step, first, jax.random.split(k_chain, cfg.seq_len // 2 - 1))
    half = jnp.concatenate([first[:, None], rest.T], axis=1)
    return jnp.concatenate([half, half], axis=1)


def bayes_loss(cfg: Config) -> float:
    """The least mean next-token cross-entropy any model reaches on ``make_data``'s sequences:
    (T/2 − 1) Markov targets of entropy log(branching) and T/2 copied ones of entropy 0, over
    T − 1 targets."""
    return (cfg.seq_len // 2 - 1) * math.log(cfg.branching) / (cfg.seq_len - 1)


# ---------------------------------------------------------------------------------------------
# model


class Block(nnx.Module):
    """Pre-LN block: h + Attn(LN(h)), then h + MLP(LN(h)); causal attention without biases."""

    def __init__(self, d_model: int, heads: int, *, rngs: nnx.Rngs):
        self.ln_attn = nnx.LayerNorm(d_model, use_bias=False, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            heads, d_model, use_bias=False, decode=False, rngs=rngs
        )  # query/key/value kernels (d_model, heads, head_dim); out kernel (heads, head_dim, d)
        self.ln_mlp = nnx.LayerNorm(d_model, use_bias=False, rngs=rngs)
        self.mlp_in = nnx.Linear(d_model, 4 * d_model, use_bias=False, rngs=rngs)
        self.mlp_out = nnx.Linear(4 * d_model, d_model, use_bias=False, rngs=rngs)

    def __call__(self, h: jax.Array, mask: jax.Array) -> jax.Array:
        h = h + self.attn(self.ln_attn(h), mask=mask)
        return h + self.mlp_out(nnx.gelu(self.mlp_in(self.ln_mlp(h))))


class LM(nnx.Module):
    """Decoder-only LM: (..., t) int tokens → (..., t, vocab) next-token logits."""

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(cfg.vocab, cfg.d_model, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (cfg.seq_len, cfg.d_model)))
        self.blocks = nnx.List(
            [Block(cfg.d_model, cfg.heads, rngs=rngs) for _ in range(cfg.layers)]
        )
        self.ln_final = nnx.LayerNorm(cfg.d_model, use_bias=False, rngs=rngs)
        self.unembed = nnx.Linear(cfg.d_model, cfg.vocab, use_bias=False, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        h = self.embed(tokens) + self.pos[: tokens.shape[-1]]
        mask = nnx.make_causal_mask(tokens)
        for block in self.blocks:
            h = block(h, mask)
        return self.unembed(self.ln_final(h))


def make_model(cfg: Config, seed: int | None = None) -> tuple[nnx.GraphDef, nnx.State]:
    """A freshly initialised ``LM`` split into its graph and its ``nnx.Param`` state (the model
    holds nothing else: no dropout RNG, no batch statistics). The state is the parameter pytree
    jaxslt samples; its leaf paths read ``blocks/0/attn/query/kernel``, ``embed/embedding``."""
    model = LM(cfg, rngs=nnx.Rngs(cfg.seed if seed is None else seed))
    graphdef, params = nnx.split(model, nnx.Param)
    return graphdef, params


def make_loss_fn(graphdef: nnx.GraphDef) -> Callable[[nnx.State, jax.Array], jax.Array]:
    """L(params, tokens) = mean over sequences and positions t < T − 1 of −log p(x_{t+1} | x_≤t),
    the model rebuilt from ``params`` with ``nnx.merge``. Create it once per graph: jaxslt reuses
    its compiled programs for the same function object."""

    def loss_fn(params: nnx.State, tokens: jax.Array) -> jax.Array:
        logits = nnx.merge(graphdef, params)(tokens[..., :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[..., 1:]).mean()

    return loss_fn


# ---------------------------------------------------------------------------------------------
# training


def train(
    cfg: Config,
    loss_fn: Callable,
    params: nnx.State,
    *,
    save_at: Sequence[int] = (),
) -> tuple[nnx.State, dict[int, nnx.State], dict[int, float]]:
    """``cfg.train_steps`` Adam steps (linear warm-up over 5% of them, cosine decay to a tenth)
    on fresh batches: step s trains on ``make_data(fold_in(key, s), train_batch)``.

    Runs as one jitted ``fori_loop`` segment between consecutive checkpoints (one compile for
    every segment length). Returns the trained params, ``{step: params}`` at every step of
    ``save_at`` (each in [0, train_steps]) and ``{step: mean training loss over the segment
    ending there}`` for the same steps and ``train_steps``.
    """
    schedule = sorted({*save_at, cfg.train_steps})
    if schedule[0] < 0 or schedule[-1] > cfg.train_steps:
        raise ValueError(f"save_at {list(save_at)} must lie in [0, {cfg.train_steps}]")
    lr = optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, max(1, cfg.train_steps // 20), cfg.train_steps,
        cfg.learning_rate / 10,
    )  # fmt: skip
    optimizer = optax.adam(lr)
    segment = make_train_segment(
        loss_fn, optimizer, lambda key: make_data(key, cfg.train_batch, cfg), cfg.seed
    )
    opt_state = optimizer.init(params)
    saved, losses, done = {}, {}, 0
    for stop in schedule:
        params, opt_state, loss = segment(params, opt_state, done, stop - done)
        losses[stop] = float(loss) if stop > done else math.nan
        done = stop
        if stop in save_at:
            saved[stop] = params
    return params, saved, losses


# ---------------------------------------------------------------------------------------------
# LLC


def head_selector(layer: int, head: int) -> Callable[[str, Any], Any]:
    """``restrict=`` predicate for one attention head of block ``layer``: the head's slice of
    the query, key and value kernels (d_model, heads, head_dim) along axis 1 and of the output
    kernel (heads, head_dim, d_model) along axis 0; every other weight frozen at w*."""
    return jaxslt.attention_head(f"blocks/{layer}/attn/", head)


def llc_settings(cfg: Config) -> dict[str, Any]:
    """``estimate_llc`` / ``llc_trajectory`` keyword arguments of ``cfg`` (key and restrict
    aside): ε, γ, chains, burn-in, draws, batch; nβ left at its default n / log n."""
    return dict(
        step_size=cfg.step_size, localization=cfg.localization, num_chains=cfg.chains,
        num_burnin=cfg.burnin, num_draws=cfg.draws, batch_size=cfg.llc_batch, progress=False,
    )  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> Config:
    """``Config`` from the command line: ``--quick`` picks QUICK's values as the defaults, and
    every field has its flag (``--d-model 64``, ``--head-layers 0,1``)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--quick", action="store_true")
    base = QUICK if pre.parse_known_args(argv)[0].quick else Config()
    parser = argparse.ArgumentParser(
        prog="nnx_lm.py",
        description="Train a small Flax NNX language model on synthetic Markov + copy "
        "sequences, then estimate its LLC and its attention heads' (restrict=).",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the QUICK preset)")
    for field in dataclasses.fields(Config):
        default = getattr(base, field.name)
        if field.name == "head_layers":
            kind = lambda text: tuple(int(v) for v in text.split(","))  # noqa: E731
            shown = "all" if default is None else ",".join(map(str, default))
        else:
            kind, shown = type(default), default
        parser.add_argument(
            "--" + field.name.replace("_", "-"), type=kind, default=default,
            help=f"default {shown}",
        )  # fmt: skip
    args = parser.parse_args(argv)
    cfg = Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})
    if cfg.d_model % cfg.heads:
        parser.error(f"--d-model {cfg.d_model} must be divisible by --heads {cfg.heads}")
    if cfg.seq_len % 2 or cfg.seq_len < 4:
        parser.error(f"--seq-len must be even and >= 4; got {cfg.seq_len}")
    if not 1 <= cfg.branching <= cfg.vocab:
        parser.error(f"--branching must lie in [1, --vocab]; got {cfg.branching}")
    if cfg.chains < 2:
        parser.error("--chains must be >= 2 (the spread across chains is the error bar)")
    bad = [layer for layer in cfg.head_layers or () if not 0 <= layer < cfg.layers]
    if bad:
        parser.error(f"--head-layers {bad} out of range: the model has layers 0..{cfg.layers - 1}")
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    clock = time.perf_counter()
    graphdef, params = make_model(cfg)
    loss_fn = make_loss_fn(graphdef)
    num_params = sum(x.size for x in jax.tree.leaves(params))
    print(
        f"NNX LM: {cfg.layers} layers, d_model {cfg.d_model}, {cfg.heads} heads, vocab "
        f"{cfg.vocab}, T = {cfg.seq_len}: {num_params} parameters in "
        f"{len(jax.tree.leaves(params))} arrays"
    )
    params, _, train_loss = train(cfg, loss_fn, params)
    data = make_data(jax.random.fold_in(jax.random.key(cfg.seed), 2), cfg.eval_size, cfg)
    loss = float(jax.jit(loss_fn)(params, data))
    print(
        f"trained {cfg.train_steps} Adam steps in {time.perf_counter() - clock:.1f} s (mean "
        f"training loss {train_loss[cfg.train_steps]:.3f}): L_n(w*) = {loss:.3f} on the "
        f"n = {cfg.eval_size} LLC sequences; Bayes-optimal {bayes_loss(cfg):.3f}, uniform "
        f"log(vocab) = {math.log(cfg.vocab):.3f}"
    )

    key = jax.random.fold_in(jax.random.key(cfg.seed), 3)
    settings = llc_settings(cfg)
    layers = range(cfg.layers) if cfg.head_layers is None else cfg.head_layers
    rows = []
    with warnings.catch_warnings(record=True) as caught:  # printed below, after the table
        warnings.simplefilter("always")
        clock = time.perf_counter()
        full = jaxslt.estimate_llc(loss_fn, params, data, key=key, **settings)
        rows.append(("all weights", num_params, full, time.perf_counter() - clock))
        for layer in layers:
            for head in range(cfg.heads):
                clock = time.perf_counter()
                selector = head_selector(layer, head)
                part = jaxslt.estimate_llc(
                    loss_fn, params, data, key=key, restrict=selector, **settings
                )
                size = jaxslt.make_restriction(params, selector).num_free
                seconds = time.perf_counter() - clock
                rows.append((f"layer {layer} head {head}", size, part, seconds))
    print(full)
    print(
        f"\n{'weights sampled':<18} {'params':>7} {'LLC':>8} {'± std':>7} {'MALA':>6}  "
        f"{'diagnostics':<11} {'time':>6}"
    )
    for name, size, result, seconds in rows:
        print(
            f"{name:<18} {size:>7} {float(result.llc_mean):>8.3f} {float(result.llc_std):>7.3f} "
            f"{float(np.nanmean(result.mala_accept)):>6.3f}  "
            f"{'ok' if result.diagnostics.ok else 'warned':<11} {seconds:>5.1f}s"
        )
    skipped = sorted(set(range(cfg.layers)) - set(layers))
    if skipped:
        print(f"(heads of layer(s) {skipped} not measured; --head-layers chooses)")
    for w in caught:
        print(f"{w.category.__name__}: {w.message}")
    print(f"{len(caught)} warning(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
