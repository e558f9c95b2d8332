"""The chain runner's bookkeeping: burn-in, thinning, minibatches, keys, divergence, progress."""

from __future__ import annotations

import os
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxslt import localized_posterior, progress, run_chains, sgld
from jaxslt.chains import Accumulator
from jaxslt.memory import auto_chain_batch_size, available_memory


def data_loss(params, batch):
    """Depends on which examples are in the batch, so the trace reveals the sampled indices."""
    return 0.5 * jnp.sum(params["w"] ** 2) + jnp.mean(batch[:, 0])


PARAMS = {"w": jnp.array([0.3, -0.4])}
DATA = jnp.arange(40.0)[:, None]


def _run(**kw):
    kernel = sgld(localized_posterior(data_loss, PARAMS, nbeta=10.0, localization=1.0))
    kw.setdefault("key", jax.random.key(0))
    kw.setdefault("step_size", 1e-3)
    kw.setdefault("num_chains", 3)
    kw.setdefault("batch_size", 8)
    return run_chains(kernel, PARAMS, DATA, **kw)


def test_burnin_and_thinning_pick_the_documented_steps():
    full = _run(num_draws=60, num_burnin=0)
    split = _run(num_draws=40, num_burnin=20)
    chex.assert_shape(split.burnin_loss_trace, (3, 20))
    np.testing.assert_array_equal(split.burnin_loss_trace, full.loss_trace[:, :20])
    np.testing.assert_array_equal(split.loss_trace, full.loss_trace[:, 20:])
    thinned = _run(num_draws=8, num_burnin=12, thinning=6)
    np.testing.assert_array_equal(thinned.loss_trace, full.loss_trace[:, 12::6][:, :8])


@pytest.mark.parametrize("thinning, group", [(1, None), (3, 1)])
def test_traced_lengths_in_a_larger_program_give_the_same_chains(thinning, group):
    """A run of (burn-in, draws) inside a program sized for a longer one, its lengths traced,
    is the run of a program of exactly that size, bit for bit: traces, acceptance and check
    means, accumulator and the compensated mean loss; past the lengths the traces hold NaN."""
    acc = Accumulator(init=lambda: jnp.zeros(()), update=lambda a, s: a + jnp.sum(s.position["w"]),
                      every=jnp.int32(3))  # fmt: skip
    check = lambda old, new, batch, eps, info: jnp.sum(new.position["w"] - old.position["w"])  # noqa: E731
    kw = dict(thinning=thinning, chain_batch_size=group, transition_check=check, accumulate=acc)

    @jax.jit
    def sized(burnin, draws):
        return _run(num_burnin=50, num_draws=90, lengths=(burnin, draws), check_every=draws // 5,
                    **kw)  # fmt: skip

    exact = jax.jit(lambda: _run(num_burnin=20, num_draws=30, check_every=6, **kw))()
    inside = sized(jnp.int32(20), jnp.int32(30))
    chex.assert_trees_all_equal(inside.loss_trace[:, :30], exact.loss_trace)
    chex.assert_trees_all_equal(inside.burnin_loss_trace[:, :20], exact.burnin_loss_trace)
    assert (
        np.isnan(inside.loss_trace[:, 30:]).all()
        and np.isnan(inside.burnin_loss_trace[:, 20:]).all()
    )
    for field in ("divergence_step", "accept_rate", "check_mean", "accumulated", "loss_mean"):
        chex.assert_trees_all_equal(getattr(inside, field), getattr(exact, field))
    # the mean is the kept draws' mean (compensated sum in float32, against float64 here)
    np.testing.assert_allclose(
        exact.loss_mean, np.asarray(exact.loss_trace, np.float64).mean(axis=1), rtol=1e-7
    )


def test_first_recorded_loss_is_at_the_checkpoint_before_any_update():
    trace = _run(num_draws=5, batch_size=40)  # full batch: L_B = L_n
    np.testing.assert_allclose(trace.loss_trace[:, 0], data_loss(PARAMS, DATA), rtol=1e-6)


def test_each_chain_and_step_draws_its_own_minibatch():
    trace = _run(num_draws=200, num_burnin=0, step_size=1e-9)  # params frozen: loss = batch mean
    batch_means = np.asarray(trace.loss_trace) - float(0.5 * jnp.sum(PARAMS["w"] ** 2))
    assert len(np.unique(batch_means.round(5))) > 400  # distinct batches across chains and steps
    # i.i.d. uniform indices: batch mean of 0..39 has mean 19.5 and variance (40²−1)/12/8
    se = np.sqrt((40**2 - 1) / 12 / 8 / batch_means.size)
    assert abs(batch_means.mean() - 19.5) < 4 * se


def test_full_batch_uses_all_data_deterministically():
    trace = _run(num_draws=3, batch_size=40, step_size=1e-12)
    np.testing.assert_allclose(trace.loss_trace, data_loss(PARAMS, DATA), rtol=1e-5)


def test_key_determines_the_run():
    a, b = _run(num_draws=30), _run(num_draws=30)
    chex.assert_trees_all_equal(a, b)
    c = _run(num_draws=30, key=jax.random.key(1))
    assert not np.array_equal(a.loss_trace, c.loss_trace)
    assert len({np.asarray(a.loss_trace[i]).tobytes() for i in range(3)}) == 3  # chains differ


def test_divergence_step_is_the_first_non_finite_loss():
    def blows_up(params, batch):
        del batch
        return jnp.sum(params["w"] ** 2)

    kernel = sgld(localized_posterior(blows_up, PARAMS, nbeta=100.0, localization=0.0))
    trace = run_chains(
        kernel, PARAMS, DATA, jax.random.key(0), step_size=0.05, num_chains=2,
        num_draws=150, num_burnin=50, batch_size=8,
    )  # fmt: skip
    full = np.concatenate([trace.burnin_loss_trace, trace.loss_trace], axis=1)
    for c in range(2):
        first = int(np.argmax(~np.isfinite(full[c])))
        assert first > 0 and trace.divergence_step[c] == first


@pytest.mark.parametrize("every", [7, 10])
def test_progress_reports_reach_the_total(every, monkeypatch):
    seen = []
    monkeypatch.setattr(progress, "report", lambda step: seen.append(int(step)))
    jax.block_until_ready(_run(num_draws=30, num_burnin=20, thinning=2, progress_every=every))
    jax.effects_barrier()
    assert sorted(seen) == list(range(every, 81, every))


@pytest.mark.parametrize("group", [1, 3])
def test_chain_groups_give_the_same_chains(group):
    kw = dict(num_chains=6, num_draws=40, num_burnin=10, thinning=2)
    together = _run(**kw)
    grouped = _run(chain_batch_size=group, **kw)
    chex.assert_trees_all_close(grouped, together, rtol=1e-6, atol=1e-7)


@pytest.mark.xla_internals
def test_chain_groups_bound_the_live_memory():
    """At most k chain states live at once: compiled temporaries grow by exactly one state and
    one gradient per live chain (the Gaussian noise is fused into the update, never stored)."""
    params = {"w": jnp.zeros((512, 512))}

    def big_loss(p, batch):
        return 0.5 * jnp.sum(p["w"] ** 2) + jnp.mean(batch[:, 0])

    kernel = sgld(localized_posterior(big_loss, params, nbeta=10.0, localization=1.0))

    def temp_bytes(group):
        run = jax.jit(lambda k: run_chains(
            kernel, params, DATA, k, step_size=1e-3, num_chains=8, num_draws=3, batch_size=8,
            chain_batch_size=group,
        ))  # fmt: skip
        return run.lower(jax.random.key(0)).compile().memory_analysis().temp_size_in_bytes

    param_bytes = 512 * 512 * 4
    one, two, together = temp_bytes(1), temp_bytes(2), temp_bytes(None)
    per_chain = two - one  # the live bytes one more chain costs
    assert per_chain == pytest.approx(2 * param_bytes, rel=0.01)
    assert together == pytest.approx(8 * per_chain + param_bytes, rel=0.01)
    assert one < 4.1 * param_bytes
    with pytest.raises(ValueError, match="must divide num_chains"):
        temp_bytes(3)


@pytest.mark.xla_internals
def test_groups_of_one_chain_run_plain_matmuls():
    """A group of one chain is stepped without a chain axis: XLA's CPU backend runs a matmul
    with a batch dimension of 1 ~1.3× slower than the plain one (measured at 1e8 parameters);
    before, every group was vmapped and its matmuls carried that batch dimension."""

    def mlp_loss(p, batch):
        return jnp.mean((batch @ p["w"]) ** 2)

    params = {"w": jnp.ones((1, 3))}
    kernel = sgld(localized_posterior(mlp_loss, params, nbeta=10.0, localization=1.0))

    def hlo(group):
        run = jax.jit(lambda k: run_chains(
            kernel, params, DATA, k, step_size=1e-3, num_chains=4, num_draws=3, batch_size=8,
            chain_batch_size=group,
        ).loss_trace)  # fmt: skip
        return run.lower(jax.random.key(0)).as_text()

    assert "batching_dims" in hlo(2)  # vmapped groups: batched matmuls
    assert "dot_general" in hlo(1) and "batching_dims" not in hlo(1)
    chex.assert_trees_all_close(
        _run(num_chains=4, num_draws=5, chain_batch_size=1),
        _run(num_chains=4, num_draws=5), rtol=1e-6, atol=1e-7,
    )  # fmt: skip


@pytest.mark.parametrize(
    "available, chain_axis, expected",
    [
        (None, 1, None),  # memory unknown: all chains at once
        (10_000, 1, None),  # 100 + 8·100 = 900 ≤ 8,000: all fit
        (1_000, 1, 4),  # budget 800: 100 + 4·100 fits, 8 chains do not
        (400, 1, 2),  # budget 320: 300 fits
        (100, 1, 1),  # nothing fits: the smallest group
        (1_000, 2, None),  # 2 devices on "chain": 4 chains per device fit (100 + 4·100 ≤ 800)
        (400, 2, 4),  # 2 chains per device (300 ≤ 320)
        (100, 4, 4),  # nothing fits: the smallest multiple of the chain axis
    ],
)
def test_auto_chain_batch_size_is_the_largest_group_that_fits(available, chain_axis, expected):
    got = auto_chain_batch_size(
        8, chain_bytes=100, fixed_bytes=100, available=available, chain_axis=chain_axis
    )
    assert got == expected


class _Device(NamedTuple):
    platform: str
    stats: dict | None

    def memory_stats(self):
        return self.stats


def test_available_memory_reads_the_allocator_or_the_host():
    # an accelerator: its allocator's limit less what is in use
    gpu = _Device("gpu", {"bytes_limit": 1000, "bytes_in_use": 300})
    assert available_memory(gpu) == 700
    assert available_memory(_Device("gpu", None)) is None  # unknown: no guess
    # a CPU device (this Linux host): the available physical memory, below the total
    free = available_memory(_Device("cpu", None))
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert isinstance(free, int) and 0 < free <= total
    assert isinstance(available_memory(jax.devices()[0]), int)
