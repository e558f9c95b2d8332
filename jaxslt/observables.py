"""Other SLT quantities from the same draws: functional variance, singular fluctuation, WAIC,
WBIC, Bayes and Gibbs training losses.

With l_i(w) the per-example loss (the negative log-likelihood of example i, so that
L_n = (1/n) Σ_i l_i), β = nβ/n, and E_p, Var_p over the sampled posterior:

    V_n   = Σ_i Var_p[l_i(w)]                       functional variance
    ν̂     = (β/2)·V_n                               singular fluctuation
    T_n   = −(1/n) Σ_i log E_p[exp(−l_i(w))]        Bayes training loss
    G_t   = E_p[L_n(w)]                             Gibbs training loss
    WAIC  = T_n + (β/n)·V_n
    WBIC  = n·E_p[L_n(w)]   (Watanabe's WBIC when nβ = n/log n and γ = 0)

These need l_i on the *full* data at each evaluated draw (minibatch versions are unreliable):
``per_example_losses`` computes them in chunks, and a ``PointwiseMoments`` accumulator keeps
per-example running means, centred second moments (Welford) and log Σ exp(−l_i) per chain, so
memory is O(n) per chain whatever the number of draws. Chains are pooled exactly at the end
(Chan's parallel formula; log-sum-exp across chains): the posterior expectations are over all
evaluated draws of the healthy chains.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxslt.posterior import map_chunks
from jaxslt.types import PyTree

__all__ = [
    "Observables",
    "PointwiseMoments",
    "init_moments",
    "observables",
    "per_example_losses",
    "update_moments",
]


class PointwiseMoments(NamedTuple):
    """Running per-example statistics of one chain: draw count, mean of l_i, Σ (l_i − mean)²,
    and log Σ_draws exp(−l_i)."""

    count: jax.Array
    mean: jax.Array
    m2: jax.Array
    log_sum_exp: jax.Array


class Observables(NamedTuple):
    """The quantities of the module docstring, pooled over the healthy chains (scalars).

    With l_i the per-example loss, β = nβ/n and E_p, Var_p over the evaluated draws.

    Attributes:
      functional_variance: V_n = Σ_i Var_p[l_i(w)].
      singular_fluctuation: ν̂ = (β/2)·V_n.
      bayes_train_loss: T_n = −(1/n) Σ_i log E_p[exp(−l_i(w))].
      gibbs_train_loss: G_t = E_p[L_n(w)].
      waic: T_n + (β/n)·V_n.
      wbic: n·E_p[L_n(w)] (Watanabe's WBIC when nβ = n/log n and γ = 0).
      num_evaluations: full-data evaluations per chain.
      per_chain: the same quantities from each chain's own draws (shape (num_chains,), NaN
        for diverged chains): their spread measures the Monte-Carlo error.
    """

    functional_variance: jax.Array
    singular_fluctuation: jax.Array
    bayes_train_loss: jax.Array
    gibbs_train_loss: jax.Array
    waic: jax.Array
    wbic: jax.Array
    num_evaluations: jax.Array
    per_chain: Any = None


def per_example_losses(
    loss_fn: Callable[[PyTree, PyTree], jax.Array], params: PyTree, data: PyTree, chunk_size: int
) -> jax.Array:
    """(l_1(w), …, l_n(w)) with l_i = ``loss_fn(w, example i as a batch of one)``, evaluated
    ``chunk_size`` examples at a time (``lax.map`` over chunks, ``vmap`` within one)."""
    n = jax.tree.leaves(data)[0].shape[0]

    def chunk_losses(chunk):
        one = lambda example: loss_fn(params, jax.tree.map(lambda x: x[None], example))  # noqa: E731
        losses = jax.vmap(one)(chunk)
        return losses.astype(jnp.promote_types(losses.dtype, jnp.float32))

    full, rest = map_chunks(chunk_losses, data, max(1, min(chunk_size, n)))
    return full.reshape(-1) if rest is None else jnp.concatenate([full.reshape(-1), rest])


def init_moments(n: int, dtype: Any = jnp.float32) -> PointwiseMoments:
    zeros = jnp.zeros((n,), dtype)
    return PointwiseMoments(jnp.zeros((), dtype), zeros, zeros, jnp.full((n,), -jnp.inf, dtype))


def update_moments(acc: PointwiseMoments, losses: jax.Array) -> PointwiseMoments:
    """Fold one draw's per-example losses into the running statistics (Welford)."""
    count = acc.count + 1
    delta = losses - acc.mean
    mean = acc.mean + delta / count
    m2 = acc.m2 + delta * (losses - mean)
    return PointwiseMoments(count, mean, m2, jnp.logaddexp(acc.log_sum_exp, -losses))


def observables(moments: PointwiseMoments, healthy: jax.Array, nbeta: jax.Array) -> Observables:
    """Pool per-chain ``moments`` (leading chain axis) over the ``healthy`` chains and form the
    observables (and each chain's own, in ``per_chain``). V_n uses the unbiased (ddof=1)
    variance over all pooled draws; fewer than two draws give NaN."""
    chains = jnp.arange(healthy.shape[0])
    per_chain = jax.vmap(lambda c: _pooled(moments, healthy & (chains == c), nbeta))(chains)
    return _pooled(moments, healthy, nbeta)._replace(per_chain=per_chain)


def _pooled(moments: PointwiseMoments, include: jax.Array, nbeta: jax.Array) -> Observables:
    n = moments.mean.shape[-1]
    beta = nbeta / n
    count = jnp.where(include, moments.count, 0.0)
    total = jnp.sum(count)
    weight = (count / jnp.maximum(total, 1.0))[:, None]
    mean = jnp.sum(weight * jnp.where(include[:, None], moments.mean, 0.0), axis=0)
    between = count[:, None] * (moments.mean - mean) ** 2  # Chan et al.'s parallel update
    spread = jnp.where(include[:, None], moments.m2 + between, 0.0)
    variance = jnp.sum(spread, axis=0) / jnp.maximum(total - 1.0, 1.0)
    log_sum_exp = jnp.where(include[:, None], moments.log_sum_exp, -jnp.inf)
    log_mean_exp = jax.scipy.special.logsumexp(log_sum_exp, axis=0) - jnp.log(total)
    functional_variance = jnp.sum(variance)
    bayes_train = -jnp.mean(log_mean_exp)
    gibbs_train = jnp.mean(mean)
    enough = total > 1
    nan_unless = lambda x: jnp.where(enough, x, jnp.nan)  # noqa: E731
    return Observables(
        functional_variance=nan_unless(functional_variance),
        singular_fluctuation=nan_unless(0.5 * beta * functional_variance),
        bayes_train_loss=nan_unless(bayes_train),
        gibbs_train_loss=nan_unless(gibbs_train),
        waic=nan_unless(bayes_train + beta / n * functional_variance),
        wbic=nan_unless(n * gibbs_train),
        num_evaluations=moments.count,
    )
