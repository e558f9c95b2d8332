"""A real transformer end to end: the Flax NNX language model of examples/nnx_lm.py, trained
here on its synthetic Markov + copy sequences, through ``estimate_llc``, ``restrict=`` per
head, ``llc_trajectory`` and a study.

Cost: every full-parameter estimate below (the LLC, the trajectory, the study's cells, the
repeat) shares one compiled program (same loss function object, shapes and static settings,
checks and diagnostics off), and both heads of one layer share another; the QUICK model is
trained once for the module.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import example_module
from flax import nnx

import jaxslt
from jaxslt import study

SAVE_AT = (100, 250)  # checkpoints before the last (QUICK trains 500 steps)
# short chains: what is tested is the plumbing and exact identities, not the estimate's accuracy
SETTINGS = dict(step_size=2e-4, localization=200.0, num_chains=2, num_burnin=50, num_draws=100,
                batch_size=32, acceptance_checks=0, diagnostics=False)  # fmt: skip
SEED = 0  # the key of the full estimate: jax.random.key(SEED), as a study cell of seed 0

# study.run points JAX's persistent compilation cache at the store's folder: undo it
pytestmark = pytest.mark.usefixtures("restore_compilation_cache")


@pytest.fixture(scope="module")
def lm():
    with example_module("nnx_lm") as module:
        yield module


@pytest.fixture(scope="module")
def trained(lm):
    """The QUICK model trained once; its checkpoints; the LLC's data set (n sequences)."""
    cfg = lm.QUICK
    graphdef, init = lm.make_model(cfg)
    loss_fn = lm.make_loss_fn(graphdef)
    params, saved, _ = lm.train(cfg, loss_fn, init, save_at=SAVE_AT)
    data = lm.make_data(jax.random.key(1), cfg.eval_size, cfg)
    checkpoints = {**saved, cfg.train_steps: params}
    return SimpleNamespace(cfg=cfg, graphdef=graphdef, init=init, params=params, data=data,
                           loss_fn=loss_fn, checkpoints=checkpoints)  # fmt: skip


@pytest.fixture(scope="module")
def full(trained):
    """λ̂(w*) of every weight, key(SEED)."""
    t = trained
    return jaxslt.estimate_llc(t.loss_fn, t.params, t.data, key=jax.random.key(SEED),
                               progress=False, **SETTINGS)  # fmt: skip


def test_data_are_a_markov_chain_then_its_copy(lm):
    cfg = lm.QUICK
    tokens = np.asarray(lm.make_data(jax.random.key(3), cfg.eval_size, cfg))
    half = cfg.seq_len // 2
    assert tokens.shape == (cfg.eval_size, cfg.seq_len) and tokens.dtype == np.int32
    np.testing.assert_array_equal(tokens[:, half:], tokens[:, :half])
    allowed = np.isfinite(np.asarray(lm.transition_logits(cfg)))
    assert allowed.sum(axis=1).tolist() == [cfg.branching] * cfg.vocab
    assert allowed[tokens[:, : half - 1], tokens[:, 1:half]].all()  # every step a chain step
    assert len(np.unique(tokens[:, 0])) == cfg.vocab  # x_0 uniform: every token appears
    np.testing.assert_array_equal(lm.make_data(jax.random.key(3), cfg.eval_size, cfg), tokens)


def test_training_reaches_the_bayes_loss_and_the_llc_is_positive(lm, trained, full):
    t = trained
    assert isinstance(t.params, nnx.State)  # what jaxslt samples: the nnx.Param state

    @jax.jit
    def token_losses(params, tokens):  # −log p(x_{t+1} | x_≤t), shape (n, T − 1)
        logits = nnx.merge(t.graphdef, params)(tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])

    floor, uniform = lm.bayes_loss(t.cfg), math.log(t.cfg.vocab)
    assert float(token_losses(t.init, t.data).mean()) > 0.9 * uniform  # untrained: ~uniform
    losses = token_losses(t.params, t.data)
    trained_loss = float(losses.mean())
    # no model beats the Bayes loss (up to the n sequences' sampling error); 500 Adam steps
    # bring this one within 5% of it, a sixth of log(vocab)
    assert floor - 0.02 < trained_loss < 1.05 * floor
    # the copied half is learnt, i.e. attention works: −log p of the copied tokens ≈ 0
    half = t.cfg.seq_len // 2
    assert float(losses[:, half - 1 :].mean()) < 0.02
    assert float(full.init_loss) == pytest.approx(trained_loss, rel=1e-5)
    assert not full.diverged.any() and np.isfinite(full.llc_per_chain).all()
    num_params = sum(x.size for x in jax.tree.leaves(t.params))
    assert 0 < float(full.llc_mean) < num_params / 2  # λ ≤ d/2 at a minimum


def test_head_selector_selects_one_heads_slices(lm, trained):
    t, cfg = trained, trained.cfg
    head_dim = cfg.d_model // cfg.heads
    restriction = jaxslt.make_restriction(t.params, lm.head_selector(1, 1))
    # W_Q, W_K, W_V: d_model × head_dim each; W_O: head_dim × d_model
    assert restriction.num_free == 4 * cfg.d_model * head_dim
    assert sorted(restriction.describe().splitlines()) == [
        f"blocks/1/attn/{name}/kernel: {cfg.d_model * head_dim}/{cfg.d_model**2} sampled"
        for name in ("key", "out", "query", "value")
    ]
    # writing into the sampled elements changes exactly head 1 of layer 1
    free = restriction.gather(t.params)
    moved = restriction.scatter(t.params, jax.tree.map(lambda v: jnp.full_like(v, 7.0), free))
    for path, new, old in zip(jaxslt.tree_paths(t.params), map(np.asarray, jax.tree.leaves(moved)),
                              map(np.asarray, jax.tree.leaves(t.params)), strict=True):  # fmt: skip
        name = path.removeprefix("blocks/1/attn/").removesuffix("/kernel")
        if name not in ("query", "key", "value", "out"):
            np.testing.assert_array_equal(new, old, err_msg=path)
            continue
        axis = 0 if name == "out" else 1
        np.testing.assert_array_equal(np.take(new, 1, axis), 7.0)
        np.testing.assert_array_equal(np.take(new, 0, axis), np.take(old, 0, axis))


def test_per_head_llcs_share_a_program_and_stay_below_the_full_llc(lm, trained, full, traces):
    t = trained
    heads = []
    for head in range(t.cfg.heads):
        heads.append(
            jaxslt.estimate_llc(
                t.loss_fn, t.params, t.data, key=jax.random.key(SEED),
                restrict=lm.head_selector(1, head), progress=False, **SETTINGS,
            )
        )  # fmt: skip
        if head == 0:
            compiled = traces["sample_llc"]
    assert traces["sample_llc"] == compiled  # the second head reused the first's program
    for result in heads:
        assert not result.diverged.any() and np.isfinite(result.llc_per_chain).all()
        # L_n(w*) is the same full-data loss; a head's 512 of 6,672 weights carry little of λ̂
        assert float(result.init_loss) == float(full.init_loss)
        assert 0 < float(result.llc_mean) < 0.1 * float(full.llc_mean)  # measured: ≈ 0.04
    assert not np.array_equal(heads[0].loss_trace, heads[1].loss_trace)


def test_trajectory_reuses_the_program_and_its_last_row_is_the_estimate(trained, full, traces):
    t = trained
    compiled = traces["sample_llc"]
    table = jaxslt.llc_trajectory(t.loss_fn, t.checkpoints, t.data, key=jax.random.key(SEED),
                                  progress=False, **SETTINGS)  # fmt: skip
    assert traces["sample_llc"] == compiled  # one compiled program for every checkpoint
    assert table["step"].tolist() == [*SAVE_AT, t.cfg.train_steps]
    # the same key and settings at the final checkpoint: exactly the estimate_llc run
    last = table.attrs["results"][-1]
    np.testing.assert_array_equal(last.loss_trace, full.loss_trace)
    assert table["llc_mean"].iloc[-1] == float(full.llc_mean)
    # L_n(w_t) falls with training; every checkpoint gives a finite, positive λ̂
    assert np.all(np.diff(table["init_loss"]) < 0)
    assert (table["llc_mean"] > 0).all() and (table["num_diverged"] == 0).all()


def test_study_cells_are_the_same_estimates(trained, full, tmp_path):
    t = trained

    def nnx_lm_problem():  # the study's problem entry point: this module's loss and data
        return study.StudyProblem(t.loss_fn, t.data)

    settings = {k: v for k, v in SETTINGS.items() if k != "step_size"}
    last, final = SAVE_AT[-1], t.cfg.train_steps
    spec = study.Spec(
        problem=nnx_lm_problem, checkpoints={s: t.checkpoints[s] for s in (last, final)},
        store=tmp_path / "lm.sqlite", name="nnx-lm", settings=settings,
        grid={"step_size": [SETTINGS["step_size"]], "seed": [SEED]},
    )  # fmt: skip
    summary = study.run(spec, progress=False)
    assert (summary.ran, summary.failed) == (2, 0)
    table = study.load_results(spec).set_index("step")
    assert table.loc[final, "llc_per_chain"] == np.asarray(full.llc_per_chain).tolist()
    assert table.loc[final, "init_loss"] == float(full.init_loss)
    assert table.loc[last, "llc_mean"] != table.loc[final, "llc_mean"]
    assert study.run(spec, progress=False).ran == 0  # finished cells never run again


def test_same_key_same_bits_other_key_other_chains(trained, full):
    t = trained

    def run(seed):
        return jaxslt.estimate_llc(t.loss_fn, t.params, t.data, key=jax.random.key(seed),
                                   progress=False, **SETTINGS)  # fmt: skip

    again, other = run(SEED), run(SEED + 1)
    np.testing.assert_array_equal(again.loss_trace, full.loss_trace)
    np.testing.assert_array_equal(again.burnin_loss_trace, full.burnin_loss_trace)
    np.testing.assert_array_equal(again.llc_per_chain, full.llc_per_chain)
    assert not np.array_equal(other.loss_trace, full.loss_trace)
    assert float(other.init_loss) == float(full.init_loss)
