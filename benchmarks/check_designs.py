"""Where an in-loop MALA check can sit, and what each place costs to compile (issue 14).

    python benchmarks/check_designs.py --layers 8 24 --repeat 5

A stand-alone SGLD loop (not jaxslt's): the tanh MLP of ``compile.py``, 4 chains vmapped, 300
steps scanned, batch 128, a MALA acceptance check every 6th step. Three programs, each
compiled from a clear cache (``lower().compile()``) and run once:

- ``plain``: no checks (the floor);
- ``cond``: jaxslt's present design — the whole step under a ``lax.cond`` whose checked branch
  holds the transition and the check's gradient at w′ (two gradient call sites);
- ``one_site``: every gradient at one call site. A checked step saves w, ∇log p(w) and its
  batch key; the next loop iteration is a check: it evaluates the same gradient call at w′ on
  that batch and does not move (its update is discarded by a select). The acceptance's sums
  run over the leaves concatenated into one vector (``--per-leaf``: one sum per leaf).

Printed: compile times (``--repeat`` times; one compile varies by ±20% here), their median
ratios to ``plain``, and whether the final positions and loss traces are bit-identical
to ``plain`` (the acceptance itself is summed in another order, so its last digits differ).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from compile import mlp_case

EPS, NBETA, GAMMA, STEPS, CHECK_EVERY, BATCH, CHAINS = 1e-5, 500.0, 10.0, 300, 6, 128, 4


def programs(layers: int, per_leaf: bool):
    _, params, (x, y), loss_fn = mlp_case(layers)
    n = x.shape[0]
    leaves = jax.tree.leaves

    def logp(w, batch):
        loss = loss_fn(w, batch)
        pull = sum(jnp.sum((a - b) ** 2) for a, b in zip(leaves(w), leaves(params), strict=True))
        return -(NBETA * loss + 0.5 * GAMMA * pull), loss

    value_and_grad = jax.value_and_grad(logp, has_aux=True)

    def batch_of(k):
        idx = jax.random.randint(k, (BATCH,), 0, n)
        return x[idx], y[idx]

    def sgld(w, g, k):
        flat, tree = jax.tree.flatten(w)
        ks = jax.random.split(k, len(flat))
        moved = [
            a + 0.5 * EPS * b + jnp.sqrt(EPS) * jax.random.normal(kk, a.shape)
            for a, b, kk in zip(flat, leaves(g), ks, strict=True)
        ]
        return jax.tree.unflatten(tree, moved)

    def squares(trees, sign):  # Σ |w′ − w − (ε/2)·g|² (sign 1) or |w − w′ − (ε/2)·g′|² (sign −1)
        if per_leaf:
            return sum(
                jnp.sum((sign * (b - a) - 0.5 * EPS * g) ** 2)
                for a, b, g in zip(*map(leaves, trees), strict=True)
            )
        a, b, g = (jnp.concatenate([v.ravel() for v in leaves(t)]) for t in trees)
        return jnp.sum((sign * (b - a) - 0.5 * EPS * g) ** 2)

    def accept(w, w2, g, g2, lp, lp2):
        forward, reverse = squares((w, w2, g), 1.0), squares((w, w2, g2), -1.0)
        return jnp.minimum(1.0, jnp.exp(lp2 - lp + (forward - reverse) / (2 * EPS)))

    def plain(key):
        def body(w, t):
            kb, kn = jax.random.split(jax.random.fold_in(key, t))
            (_, loss), g = value_and_grad(w, batch_of(kb))
            return sgld(w, g, kn), loss

        return jax.lax.scan(body, params, jnp.arange(STEPS))

    def cond(key):
        def body(carry, t):
            w, total = carry
            kb, kn = jax.random.split(jax.random.fold_in(key, t))
            batch = batch_of(kb)

            def checked(w):
                (lp, loss), g = value_and_grad(w, batch)
                w2 = sgld(w, g, kn)
                (lp2, _), g2 = value_and_grad(w2, batch)
                return w2, loss, accept(w, w2, g, g2, lp, lp2)

            def unchecked(w):
                (_, loss), g = value_and_grad(w, batch)
                return sgld(w, g, kn), loss, jnp.float32(0.0)

            w2, loss, a = jax.lax.cond(t % CHECK_EVERY == 0, checked, unchecked, w)
            return (w2, total + a), loss

        (w, total), losses = jax.lax.scan(body, (params, 0.0), jnp.arange(STEPS))
        return w, losses, total

    def one_site(key):
        def body(carry, _):
            w, t, check, w_old, g_old, lp_old, kb_old, total = carry
            kb, kn = jax.random.split(jax.random.fold_in(key, t))
            kb_use = jnp.where(check, kb_old, jax.random.key_data(kb))
            (lp, loss), g = value_and_grad(w, batch_of(jax.random.wrap_key_data(kb_use)))
            stepped = sgld(w, g, kn)
            a = accept(w_old, w, g_old, g, lp_old, lp)
            due = ~check & (t % CHECK_EVERY == 0)

            def keep(new, old):
                return jax.tree.map(lambda p, q: jnp.where(due, p, q), new, old)

            carry = (
                jax.tree.map(lambda s, o: jnp.where(check, o, s), stepped, w),
                jnp.where(check, t, t + 1),
                due,
                keep(w, w_old),
                keep(g, g_old),
                jnp.where(due, lp, lp_old),
                jnp.where(due, jax.random.key_data(kb), kb_old),
                total + jnp.where(check, a, 0.0),
            )
            return carry, (loss, check)

        zeros = jax.tree.map(jnp.zeros_like, params)
        start = (params, jnp.int32(0), jnp.bool_(False), params, zeros, jnp.float32(0.0),
                 jax.random.key_data(jax.random.key(0)), jnp.float32(0.0))  # fmt: skip
        carry, (losses, check) = jax.lax.scan(body, start, None, STEPS + STEPS // CHECK_EVERY)
        return carry[0], losses, check, carry[-1]

    return {"plain": plain, "cond": cond, "one_site": one_site}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, nargs="*", default=[8, 24])
    parser.add_argument("--per-leaf", action="store_true", help="one acceptance sum per leaf")
    parser.add_argument("--repeat", type=int, default=3, help="compiles per case (noisy: ±20%%)")
    args = parser.parse_args()
    keys = jax.random.split(jax.random.key(1), CHAINS)
    for layers in args.layers:
        ratios = {"cond": [], "one_site": []}
        for _ in range(args.repeat):
            out, seconds = {}, {}
            for name, f in programs(layers, args.per_leaf).items():
                jax.clear_caches()
                start = time.perf_counter()
                compiled = jax.jit(jax.vmap(f)).lower(keys).compile()
                seconds[name] = time.perf_counter() - start
                out[name] = jax.block_until_ready(compiled(keys))
            w0, losses0 = out["plain"]
            w1, losses1, _ = out["cond"]
            w2, losses2, check, _ = out["one_site"]
            losses2 = np.asarray(losses2)[:, ~np.asarray(check)[0]]
            for name in ratios:
                ratios[name].append(seconds[name] / seconds["plain"])

            def same(a, b):
                return all(
                    np.array_equal(p, q)
                    for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
                )

            print(
                f"MLP {layers} layers ({2 * layers} leaves): compile plain "
                f"{seconds['plain']:.1f} s, cond {seconds['cond']:.1f} s "
                f"({ratios['cond'][-1]:.2f}×), one_site {seconds['one_site']:.1f} s "
                f"({ratios['one_site'][-1]:.2f}×); bit-identical to plain: "
                f"cond {same(w1, w0) and np.array_equal(losses1, losses0)}, "
                f"one_site {same(w2, w0) and np.array_equal(losses2, losses0)}",
                flush=True,
            )
        print(
            f"MLP {layers} layers, median over {args.repeat}: cond "
            f"{np.median(ratios['cond']):.2f}×, one_site {np.median(ratios['one_site']):.2f}× "
            "the plain loop's compile",
            flush=True,
        )


if __name__ == "__main__":
    main()
