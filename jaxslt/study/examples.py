"""Ready-made entry points for studies: a deep linear network and its training checkpoints.

``dln_problem`` (a problem entry point) and ``dln_checkpoints`` (a checkpoints entry point) make
a complete, runnable study of the LLC over training with nothing to write but the TOML::

    [study]
    problem = "jaxslt.study.examples:dln_problem"
    problem_kwargs = { widths = [4, 3, 4], rank = 1 }

    [checkpoints]
    entry_point = "jaxslt.study.examples:dln_checkpoints"
    kwargs = { widths = [4, 3, 4], rank = 1, steps = [0, 100, 1000] }

Parameters are ``{"layer_0": W_1, ..., "layer_{L-1}": W_L}`` with W_l of shape (H_{l-1}, H_l),
f(x) = x W_1 ⋯ W_L, and the loss the mean of ½||y − f(x)||² (``jaxslt.problems.dln_loss``).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxslt import problems
from jaxslt.study.entry_points import StudyProblem

__all__ = ["dln_checkpoints", "dln_problem"]


def _teacher(widths: Sequence[int], rank: int, num_examples: int, seed: int):
    return problems.deep_linear_network(
        widths, rank, key=jax.random.key(seed), num_examples=num_examples
    )


def dln_problem(
    widths: Sequence[int] = (4, 3, 4), rank: int = 1, num_examples: int = 1000, seed: int = 0
) -> StudyProblem:
    """The teacher–student DLN of ``jaxslt.problems.deep_linear_network`` (noise-free teacher
    of rank ``rank`` at identity blocks, x ~ N(0, I)), with one extra data slice
    ``"first_half"`` (the first n // 2 examples) for data-refined LLCs.

    The loss is a closure made afresh on every call, as in most user code: a study calls the
    entry point once per process, so every cell still passes one ``loss_fn`` object to
    ``estimate_llc`` (and its compiled program is reused)."""
    teacher = _teacher(widths, rank, num_examples, seed)
    depth = len(widths) - 1

    def loss_fn(params, batch):
        return problems.dln_loss([params[f"layer_{i}"] for i in range(depth)], batch)

    x, y = teacher.data
    half = num_examples // 2
    like = {f"layer_{i}": w for i, w in enumerate(teacher.params)}
    return StudyProblem(loss_fn, (x, y), {"first_half": (x[:half], y[:half])}, like)


@jax.jit
def _descend(params, data, count, learning_rate):
    """``count`` steps of full-batch gradient descent on the DLN loss (compiled once per
    shape; count and learning rate are traced)."""
    depth = len(params)

    def step(_, p):
        grads = jax.grad(
            lambda q: problems.dln_loss([q[f"layer_{i}"] for i in range(depth)], data)
        )(p)
        return jax.tree.map(lambda a, g: a - learning_rate * g, p, grads)

    return jax.lax.fori_loop(0, count, step, params)


def dln_checkpoints(
    widths: Sequence[int] = (4, 3, 4),
    rank: int = 1,
    steps: Sequence[int] = (0, 100, 1000),
    num_examples: int = 1000,
    seed: int = 0,
    learning_rate: float = 0.05,
    init_scale: float = 0.1,
) -> dict[int, dict[str, jax.Array]]:
    """Checkpoints of full-batch gradient descent on ``dln_problem``'s loss from a small
    random initialisation (entries N(0, init_scale²)), at the given steps: step → params.
    Deep linear networks learn in stages from small inits, so the LLC rises over training."""
    steps = sorted(int(s) for s in steps)
    if not steps or steps[0] < 0:
        raise ValueError(f"steps must be a non-empty list of integers >= 0; got {steps}")
    teacher = _teacher(widths, rank, num_examples, seed)
    keys = jax.random.split(jax.random.key(seed + 1), len(widths) - 1)
    params = {
        f"layer_{i}": init_scale * jax.random.normal(k, w.shape, w.dtype)
        for i, (k, w) in enumerate(zip(keys, teacher.params, strict=True))
    }
    out, done = {}, 0
    for target in steps:
        params = _descend(params, teacher.data, jnp.int32(target - done), learning_rate)
        done = target
        out[target] = jax.tree.map(np.asarray, params)
    return out
