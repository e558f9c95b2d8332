"""The chain runner: many chains of one kernel, chains vmapped, steps looped, one program.

Randomness: chain c gets ``(init_c, k_c) = split(split(key, num_chains)[c])``; step t of chain
c uses ``fold_in(k_c, t)``, split into a minibatch key and a kernel key. A chain's draws therefore
depend only on (key, c), never on how chains are grouped or batched.

Minibatches: each step every chain draws its own ``batch_size`` indices uniformly *with
replacement* (i.i.d., O(batch_size) per step, an unbiased estimate of L_n and ∇L_n). With
``batch_size == n`` the full data set is used as is (deterministic full-batch gradients).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxslt import progress
from jaxslt.kernels import SamplingKernel
from jaxslt.sharding import param_partition_specs, replicate, shard_chains
from jaxslt.types import PyTree

__all__ = ["Accumulator", "ChainTrace", "data_size", "run_chains", "typed_key"]


class ChainTrace(NamedTuple):
    """Per-chain outputs of ``run_chains``.

    Attributes:
      loss_trace: (num_chains, num_draws) L_B(w_t) at the kept draws (every ``thinning``-th
        step after burn-in, the first step of each block).
      burnin_loss_trace: (num_chains, num_burnin) L_B(w_t) during burn-in.
      divergence_step: (num_chains,) first step whose loss was NaN/inf, −1 if none.
      accept_rate: (num_chains,) mean Metropolis acceptance probability over the steps after
        burn-in, for kernels that report one (NaN otherwise).
      check_mean: (num_chains,) or (num_chains, k) mean of ``transition_check`` (a scalar or
        a k-vector per chain) over the checked steps after burn-in, NaN entries skipped (NaN
        when nothing was checked), e.g. the MALA acceptance of SGLD transitions.
      accumulated: the per-chain accumulator of ``accumulate`` (None without one).
      loss_mean: (num_chains,) mean of the kept draws' L_B(w_t), summed in step order with
        Kahan compensation, so that it is the same, bit for bit, whatever the traces' length.
    """

    loss_trace: jax.Array
    burnin_loss_trace: jax.Array
    divergence_step: jax.Array
    accept_rate: jax.Array
    check_mean: jax.Array
    accumulated: Any = None
    loss_mean: Any = None


class Accumulator(NamedTuple):
    """A running statistic of the kept draws, per chain (vmapped): ``init()`` gives the empty
    state, ``update(acc, chain_state)`` folds in one draw. ``every``: fold in every that-many-th
    kept draw (others skip it under a ``lax.cond`` on the unbatched draw counter); may be
    traced; 0 folds in none."""

    init: Callable[[], PyTree]
    update: Callable[[PyTree, PyTree], PyTree]
    every: int | jax.Array = 1


def typed_key(key: jax.Array) -> jax.Array:
    """``key`` as a new-style typed key (``jax.random.key``): an old-style ``PRNGKey`` (uint32
    words, shape (..., 2)) is wrapped with the default implementation, which is how
    ``jax.random`` reads it, so both spellings of a seed give the same numbers bit for bit."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)


def data_size(data: PyTree) -> int:
    return jax.tree.leaves(data)[0].shape[0]


def run_chains(
    kernel: SamplingKernel,
    position: PyTree,
    data: PyTree,
    key: jax.Array,
    *,
    step_size: float | jax.Array,
    num_chains: int,
    num_draws: int,
    num_burnin: int = 0,
    thinning: int = 1,
    batch_size: int,
    progress_every: int = 0,
    transition_check: Callable[..., jax.Array] | None = None,
    check_every: int = 0,
    chain_batch_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    accumulate: Accumulator | None = None,
    param_specs: PyTree | None = None,
    lengths: tuple[int | jax.Array, int | jax.Array] | None = None,
) -> ChainTrace:
    """Run ``num_chains`` chains of ``kernel`` from ``position`` for
    ``num_burnin + num_draws * thinning`` steps each; traceable (jit/vmap it freely).

    With ``lengths`` = (burn-in, draws), possibly traced and at most ``num_burnin`` and
    ``num_draws``, the chains run those lengths instead in a program sized by the static two
    (its traces hold NaN past them): one compiled program serves every shorter run, with the
    same numbers, bit for bit, as a program of exactly that size.

    Chain c's randomness depends only on (key, c) (see the module docstring), so grouping the
    chains (``chain_batch_size``) or spreading them over a ``mesh`` gives the same result, up
    to float rounding across devices: each device runs a program for its own share of chains
    and parameters, whose sums XLA may associate differently.

    Args:
      kernel: a ``SamplingKernel`` (``init``/``step``), e.g. ``jaxslt.sgld(posterior)``.
      position: the starting point of every chain (w*), any pytree of arrays.
      data: a pytree of arrays sharing a leading axis of length n.
      key: a PRNG key (typed or old-style); it fully determines the result.
      step_size: ε, passed to every step (may be traced).
      num_chains: independent chains.
      num_draws: kept draws per chain.
      num_burnin: steps per chain before the first kept draw.
      thinning: keep the first of every ``thinning`` steps after burn-in.
      batch_size: examples per minibatch, drawn i.i.d. with replacement per chain and step;
        ``n`` uses the full data as is.
      progress_every: report the step count to ``jaxslt.progress`` every that many steps
        through a host callback; 0 compiles no callback at all; traced, the callback is
        compiled and a period of 0 never reports.
      transition_check: ``(old_state, new_state, minibatch, step_size, info) -> scalar or
        k-vector`` (one chain; vmapped), evaluated on every ``check_every``-th step after
        burn-in: a ``lax.cond`` on the step counter (which no vmap batches) chooses between
        the step with its check and the step alone, so the other steps pay nothing for it, in
        time or memory. Its mean is ``check_mean``.
      check_every: the period of ``transition_check``, in steps (may be traced).
      chain_batch_size: k, a divisor of ``num_chains``: run the chains in groups of k, one
        group after another (``lax.map``), so that at most k chain states are live at once;
        ``None``: all chains vmapped.
      mesh: a ``jax.sharding.Mesh`` with a ``"chain"`` axis, a ``"model"`` axis, or both.
        The chains of each group are spread over ``"chain"`` (their states, keys and
        minibatches carry a ``NamedSharding(mesh, P("chain", ...))`` constraint), so each
        device steps its own chains; the group size must be a multiple of that axis size.
        Data are replicated. The outputs are replicated (fully addressable on every process
        of a multi-host mesh).
      accumulate: an ``Accumulator`` folded over the chain states at the kept draws (the
        state whose loss the trace records), e.g. per-example loss moments for WAIC.
      param_specs: how each parameter leaf of the chain states is split over ``"model"``
        (see ``param_partition_specs``; ``None`` = the automatic rule), stacked as
        ``P("chain", *spec)``.
      lengths: (burn-in, draws) that run, possibly traced, at most ``num_burnin`` and
        ``num_draws`` (which then size the traces); ``None``: those two.

    Returns:
      A ``ChainTrace``: the loss traces, divergence steps, acceptance and check means.

    Raises:
      ValueError: ``chain_batch_size`` does not divide ``num_chains``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxslt import localized_posterior, run_chains, sgld
      >>> loss = lambda w, b: 0.5 * jnp.mean(jnp.sum((b - w) ** 2, axis=-1))
      >>> data = jax.random.normal(jax.random.key(0), (64, 2))
      >>> w_star = data.mean(axis=0)
      >>> post = localized_posterior(loss, w_star, nbeta=10.0, localization=1.0)
      >>> trace = run_chains(sgld(post), w_star, data, jax.random.key(1), step_size=1e-2,
      ...                    num_chains=3, num_draws=100, num_burnin=50, batch_size=16)
      >>> trace.loss_trace.shape, trace.burnin_loss_trace.shape
      ((3, 100), (3, 50))
      >>> trace.divergence_step.tolist()  # no chain diverged
      [-1, -1, -1]
    """
    group = num_chains if chain_batch_size is None else min(chain_batch_size, num_chains)
    if num_chains % group:
        raise ValueError(f"chain_batch_size={chain_batch_size} must divide num_chains={num_chains}")
    num_groups = num_chains // group
    # typed keys: an old-style key's extra word axis would not survive the group reshape below
    key = typed_key(key)
    keys = jax.vmap(jax.random.split)(jax.random.split(key, num_chains))  # (C, 2) init/run
    layout = _Layout(
        num_draws=num_draws, num_burnin=num_burnin, thinning=thinning, batch_size=batch_size,
        progress_every=progress_every, check_every=check_every, mesh=mesh,
        param_specs=param_partition_specs(position, mesh, param_specs),
        lengths=(num_burnin, num_draws) if lengths is None else lengths,
    )  # fmt: skip

    def run(keys, group_index):
        return _run_group(
            kernel, position, data, keys, group_index, step_size, layout,
            transition_check, accumulate,
        )  # fmt: skip

    if num_groups == 1:
        return replicate(run(keys, 0), mesh)
    traces = jax.lax.map(
        lambda xs: run(*xs), (keys.reshape(num_groups, group, 2), jnp.arange(num_groups))
    )
    return replicate(jax.tree.map(lambda x: x.reshape(num_chains, *x.shape[2:]), traces), mesh)


def _never(period: Any) -> bool:
    """A period that is statically off (a Python int ≤ 0): nothing is compiled for it. A
    traced period is compiled in, under a ``lax.cond`` that a period of 0 never takes."""
    return isinstance(period, int) and period <= 0


def _drop_chain_axis(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda x: x[0], tree)


def _add_chain_axis(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda x: x[None], tree)


def _map_one(fn: Callable, in_axes: Any = 0) -> Callable:
    """``jax.vmap(fn, in_axes)`` for a batch of one chain: ``fn`` on the arguments without their
    chain axis, the axis put back on the outputs. XLA's CPU backend runs a matmul with a batch
    dimension of 1 ~1.3× slower than the plain one (measured at 1e8 parameters), and a group of
    one chain is the memory-bounded strategy for the largest models."""

    def call(*args):
        axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
        args = [a if ax is None else _drop_chain_axis(a) for a, ax in zip(args, axes, strict=True)]
        return _add_chain_axis(fn(*args))

    return call


class _Layout(NamedTuple):
    """What every group of ``run_chains`` shares: the schedule, the batching, the checks and
    the placement (static), in one argument."""

    num_draws: int
    num_burnin: int
    thinning: int
    batch_size: int
    progress_every: Any  # may be traced
    check_every: Any
    mesh: jax.sharding.Mesh | None
    param_specs: PyTree
    lengths: tuple[Any, Any]  # the burn-in and draws that run (≤ the two above; may be traced)


def _run_group(
    kernel, position, data, keys, group_index, step_size, layout, transition_check, accumulate
) -> ChainTrace:  # fmt: skip
    """Chains of one group: steps in one while loop, the group's chains vmapped inside each
    step (so the step counter t stays unbatched for ``lax.cond``); a group of one chain has no
    chain axis."""
    num_draws, num_burnin, thinning, batch_size = layout[:4]
    progress_every, check_every, mesh, param_specs, (burnin_len, draws_len) = layout[4:]
    # the steps that run; the loop below runs exactly these, whatever the traces' capacity
    total = burnin_len + draws_len * thinning
    n = data_size(data)
    num_chains = keys.shape[0]
    single = num_chains == 1
    chain_map = _map_one if single else jax.vmap

    # A lone chain's state is also carried without its chain axis: with the axis put back on
    # every step's output, XLA fused sghmc's update worse (+2.2 parameter copies, measured).
    to_carry = _drop_chain_axis if single else lambda tree: tree
    from_carry = _add_chain_axis if single else lambda tree: tree

    def spread(tree, params=True):  # chains over "chain", parameter dimensions over "model"
        return shard_chains(tree, mesh, position if params else None, param_specs)

    keys = spread(keys, params=False)
    init_keys, chain_keys = keys[:, 0], keys[:, 1]
    full_batch = batch_size == n
    batch_axis = None if full_batch else 0

    def minibatches(keys):
        if full_batch:
            return data

        def one(k):
            idx = jax.random.randint(k, (batch_size,), 0, n)
            return jax.tree.map(lambda x: jnp.take(x, idx, axis=0), data)

        return spread(chain_map(one)(keys), params=False)

    # the init batch comes from the init key, so it never repeats a step's batch
    states = spread(
        chain_map(kernel.init, in_axes=(None, 0, batch_axis))(
            position, init_keys, minibatches(chain_map(jax.random.fold_in, (0, None))(init_keys, 1))
        )
    )

    reports_accept = []

    checking = transition_check is not None and not _never(check_every)

    def transition(kernel_keys, states, batches):
        new, info = chain_map(kernel.step, in_axes=(0, 0, batch_axis, None))(
            kernel_keys, states, batches, step_size
        )
        return spread(new), info

    def checked_transition(kernel_keys, states, batches):
        new, info = transition(kernel_keys, states, batches)
        value = chain_map(transition_check, in_axes=(0, 0, batch_axis, None, 0))(
            states, new, batches, step_size, info
        )
        return new, info._replace(grad=None), value.astype(jnp.float32)

    if checking:  # the check's value per chain: a scalar or a vector of checked quantities
        check_shape = jax.eval_shape(
            lambda: checked_transition(init_keys, states, minibatches(init_keys))[2]
        ).shape
    else:
        check_shape = (num_chains,)

    def unchecked_transition(kernel_keys, states, batches):
        new, info = transition(kernel_keys, states, batches)
        return new, info._replace(grad=None), jnp.full(check_shape, jnp.nan, jnp.float32)

    def step(carry, t):
        states, first_bad, accept_sum, check_sum, check_count = carry
        states = from_carry(states)
        keys = chain_map(jax.random.fold_in, in_axes=(0, None))(chain_keys, t)
        batch_keys, kernel_keys = jnp.unstack(chain_map(jax.random.split)(keys), axis=1)
        batches = minibatches(batch_keys)
        if not checking:
            states, info = transition(kernel_keys, states, batches)
        else:
            # The whole step sits under the cond (not just the check), so a checked step holds
            # w, w', ∇(w), ∇(w') and an unchecked one only w and ∇(w): the cond's operands are
            # the step's own inputs, never the extra copies.
            due = (t >= burnin_len) & ((t - burnin_len) % check_every == 0)
            states, info, value = jax.lax.cond(
                due, checked_transition, unchecked_transition, kernel_keys, states, batches
            )
            ok = ~jnp.isnan(value)
            check_sum = check_sum + jnp.where(ok, value, 0.0)
            check_count = check_count + ok
        bad = ~jnp.isfinite(info.loss)
        first_bad = jnp.where((first_bad < 0) & bad, t, first_bad)
        if info.accept_prob is not None:  # known at trace time
            reports_accept.append(True)
            accept_sum = accept_sum + jnp.where(t >= burnin_len, info.accept_prob, 0.0)
        if not _never(progress_every):
            jax.lax.cond(
                (progress_every > 0) & ((t + 1) % jnp.maximum(progress_every, 1) == 0),
                lambda: jax.debug.callback(progress.report, group_index * total + t + 1),
                lambda: None,
            )
        return (to_carry(states), first_bad, accept_sum, check_sum, check_count), info.loss

    zeros = jnp.zeros((num_chains,), jnp.float32)
    checks = jnp.zeros(check_shape, jnp.float32)
    carry = (to_carry(states), jnp.full((num_chains,), -1, jnp.int32), zeros, checks, checks)
    # One loop over all steps, so the model's forward and backward passes are compiled once
    # (not once for burn-in and once for the draws); losses land in preallocated traces, O(C)
    # per step, so memory is chains × (burn-in + draws) floats whatever the thinning.
    dtype = jax.eval_shape(lambda: step(carry, jnp.int32(0))[1]).dtype

    def record(trace, index, value, due):
        if trace.shape[1] == 0:
            return trace
        index = jnp.clip(index, 0, trace.shape[1] - 1)
        return trace.at[:, index].set(jnp.where(due, value, trace[:, index]))

    def kahan(sums, value, due):  # compensated, so the mean is exact to float rounding
        running, compensation = sums
        y = jnp.where(due, value - compensation, 0.0)
        new = running + y
        return new, jnp.where(due, (new - running) - y, compensation)

    def body(body_carry):
        t, carry, acc, burnin, draws, sums = body_carry
        k, offset = jnp.divmod(t - burnin_len, thinning)
        kept = (t >= burnin_len) & (offset == 0)
        if accumulate is not None:
            every = accumulate.every
            acc = jax.lax.cond(
                kept & (every > 0) & (k % jnp.maximum(every, 1) == 0),
                lambda: spread(chain_map(accumulate.update)(acc, from_carry(carry[0]))),
                lambda: acc,
            )
        carry, loss = step(carry, t)
        burnin = record(burnin, t, loss, t < burnin_len)
        draws = record(draws, k, loss, kept)
        return t + 1, carry, acc, burnin, draws, kahan(sums, loss, kept)

    acc = None
    if accumulate is not None:
        acc = spread(chain_map(lambda _: accumulate.init())(jnp.arange(num_chains)))
    # NaN past the lengths that run (a program sized for a longer run)
    traces = (
        jnp.full((num_chains, num_burnin), jnp.nan, dtype),
        jnp.full((num_chains, num_draws), jnp.nan, dtype),
    )
    sums = (jnp.zeros((num_chains,), dtype), jnp.zeros((num_chains,), dtype))
    # a while loop over the steps that run, so the program does not depend on their number
    _, carry, acc, burnin, draws, sums = jax.lax.while_loop(
        lambda c: c[0] < total, body, (jnp.int32(0), carry, acc, *traces, sums)
    )
    _, first_bad, accept_sum, check_sum, check_count = carry
    # multiplied by 1/count, computed apart: the same bits whether the count is traced or not
    inv_steps = 1.0 / jnp.asarray(draws_len * thinning, jnp.float32)
    accept_rate = accept_sum * inv_steps if reports_accept else zeros + jnp.nan
    check_mean = jnp.where(check_count > 0, check_sum / jnp.maximum(check_count, 1), jnp.nan)
    loss_mean = sums[0] * (1.0 / jnp.asarray(draws_len, dtype))
    return ChainTrace(draws, burnin, first_bad, accept_rate, check_mean, acc, loss_mean)
