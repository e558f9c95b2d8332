"""The LLC over a training trajectory: λ̂(w_t) for a sequence of checkpoints w_t, one compile.

Every checkpoint is estimated with the same settings and the same key (common random numbers:
the chains of two checkpoints see the same minibatches and noise, so differences along the
curve are not blurred by independent Monte-Carlo noise). The compiled program is shared: either
a Python loop over checkpoints calls one compiled ``sample_llc`` (``checkpoint_batch_size=1``,
memory of one estimate, a progress bar per checkpoint), or ``lax.map`` runs all checkpoints in
one program, ``checkpoint_batch_size`` of them vmapped at a time (memory ≈ that many estimates).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from jaxslt import plan as stages
from jaxslt import validation
from jaxslt.config import ESTIMATE_SETTINGS, split_settings
from jaxslt.core import LLCResult, sample_llc, with_geometry
from jaxslt.types import PyTree

__all__ = ["llc_trajectory"]

# estimate_llc's sampling settings: the same knobs, the same meaning, the same defaults
_SETTINGS = frozenset(ESTIMATE_SETTINGS) - {"step_size", "diagnostics", "progress"}


def _checkpoint_list(checkpoints: Any, steps: Sequence[int] | None) -> tuple[list[int], list]:
    """(steps, list of pytrees) from a Mapping step → pytree, a sequence, or a stacked pytree."""
    if (
        isinstance(checkpoints, Mapping)
        and checkpoints
        and all(isinstance(k, (int, np.integer)) for k in checkpoints)
    ):
        if steps is not None:
            raise ValueError("steps: give steps either as the Mapping's keys or here, not both")
        items = sorted(checkpoints.items())
        return [int(k) for k, _ in items], [v for _, v in items]
    if isinstance(checkpoints, (list, tuple)):
        trees = list(checkpoints)
    else:
        leaves = jax.tree.leaves(checkpoints)
        sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
        if not leaves or len(sizes) != 1 or None in sizes:
            raise ValueError(
                "checkpoints must be a sequence of pytrees, a Mapping step -> pytree, or a "
                "pytree stacked along a leading checkpoint axis (every leaf with the same "
                f"leading length); got leading lengths {sorted(map(str, sizes))}"
            )
        trees = [jax.tree.map(lambda x, i=i: x[i], checkpoints) for i in range(sizes.pop())]
    if not trees:
        raise ValueError("checkpoints is empty; give at least one checkpoint")
    steps = list(range(len(trees))) if steps is None else steps
    steps = validation.check_checkpoint_steps(steps, len(trees))
    structure = jax.tree.structure(trees[0])
    shapes = [np.shape(x) for x in jax.tree.leaves(trees[0])]
    for step, tree in zip(steps, trees, strict=True):
        if (
            jax.tree.structure(tree) != structure
            or [np.shape(x) for x in jax.tree.leaves(tree)] != shapes
        ):
            raise ValueError(
                f"checkpoint at step {step} differs in structure or shapes from the first; "
                "every checkpoint must have the same parameter pytree"
            )
    return steps, trees


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("config", "batch_size"))
def _mapped(loss_fn, stacked, data, key, scalars, *, config, batch_size):
    """Every checkpoint of ``stacked`` through the core, ``batch_size`` of them vmapped at a
    time; ``scalars``: the traced ε, nβ, γ and restriction."""
    return jax.lax.map(
        lambda params: sample_llc(loss_fn, params, data, key, config=config, **scalars),
        stacked,
        batch_size=batch_size,
    )


def llc_trajectory(
    loss_fn: Callable[[PyTree, PyTree], jax.Array],
    checkpoints: Sequence[PyTree] | Mapping[int, PyTree] | PyTree,
    data: PyTree,
    *,
    key: jax.Array,
    step_size: float | str,
    steps: Sequence[int] | None = None,
    checkpoint_batch_size: int | None = 1,
    diagnostics: bool = True,
    progress: bool | None = None,
    **settings: Any,
) -> pd.DataFrame:
    """λ̂(w_t) for every checkpoint w_t, as a table; the same conventions as ``estimate_llc``.

    λ̂(w_t) = nβ·(E[L_B(w)] − L_n(w_t)) under p(w) ∝ exp(−nβ·L_n(w) − γ/2·||w − w_t||²), each
    checkpoint its own w*. Every warning is also raised with the prefix "checkpoint at step
    <step>: ". Chains that diverge are left out as in ``estimate_llc``; a checkpoint whose
    chains all diverge gets NaN and a warning instead of stopping the whole curve.

    Args:
      loss_fn: as for ``estimate_llc``.
      checkpoints: a sequence of parameter pytrees, a Mapping training step → pytree, or one
        pytree stacked along a leading checkpoint axis.
      data: as for ``estimate_llc`` (data-refined curves: pass the slice).
      key: one key for every checkpoint (common random numbers along the curve).
      step_size: ε for every checkpoint, or ``"auto"``: calibrate once at the *last*
        checkpoint (the trained model) and use its settings throughout, so that every point
        of the curve is the same measurement (with ``checkpoint_batch_size=1``, every
        checkpoint runs in the calibration's own compiled program).
      steps: training steps of the checkpoints (default: their keys, else 0, 1, ...).
      checkpoint_batch_size: 1 (default) runs the checkpoints one after another through one
        compiled program; k > 1 runs them in one program, k vmapped at a time (≈ k times the
        memory of one estimate); ``None`` vmaps them all.
      diagnostics: diagnose every checkpoint's run (the ``ok``, ``rhat``, ``ess_bulk``,
        ``llc_se`` columns) and warn for each failed check, as ``estimate_llc`` does.
      progress: show a progress bar; ``None`` shows one on a terminal only.
      **settings: any sampling setting of ``estimate_llc`` (num_chains, num_draws, nbeta,
        localization, sampler, restrict, observables, ...).

    Returns:
      A pandas DataFrame, one row per checkpoint: ``step``, ``llc_mean``, ``llc_std``,
      ``init_loss`` (L_n(w_t)), ``num_diverged``, ``mala_accept``, ``rhat``, ``ess_bulk``,
      ``llc_se`` (λ̂'s Monte-Carlo SE, ``Diagnostics.llc_se``), ``ok`` (the diagnostics, when
      ``diagnostics``), ``warnings`` (every warning of that checkpoint, "; "-joined, "" when
      none), plus the observables' columns when requested.
      ``df.attrs["results"]`` holds the ``LLCResult`` of every row and
      ``df.attrs["calibration"]`` the calibration of ``"auto"``.

    Raises:
      TypeError: an unknown setting.
      ValueError: bad checkpoints or settings, before anything compiles.

    Examples:
      Three checkpoints approaching the minimum w* of a regular model; away from a minimum
      λ̂ is negative:

      >>> import jax
      >>> import jaxslt
      >>> from jaxslt import problems
      >>> p = problems.regular_linear_gaussian(2, key=jax.random.key(0), num_examples=256)
      >>> checkpoints = {100: p.params + 0.5, 200: p.params + 0.1, 300: p.params}
      >>> table = jaxslt.llc_trajectory(p.loss_fn, checkpoints, p.data, key=jax.random.key(1),
      ...                               step_size=1e-3, localization=10.0, num_chains=2,
      ...                               num_draws=200, num_burnin=100, diagnostics=False)
      >>> table["step"].tolist()
      [100, 200, 300]
      >>> bool(table["llc_mean"][0] < 0)
      True
    """
    unknown = sorted(set(settings) - set(_SETTINGS))
    if unknown:
        raise TypeError(
            f"llc_trajectory got unknown setting(s) {unknown}; it takes estimate_llc's "
            f"sampling settings: {sorted(_SETTINGS)}"
        )
    steps, trees = _checkpoint_list(checkpoints, steps)
    validation.check_checkpoints(steps, trees)  # every one, not only the last
    key = validation.check_key(key)  # old-style keys share the typed key's program
    config, traced = split_settings(settings)
    validation.check_diagnostics(
        diagnostics, num_draws=config.num_draws, num_chains=config.num_chains, progress=progress
    )
    if checkpoint_batch_size is not None:
        validation.check_positive_int(
            "checkpoint_batch_size", checkpoint_batch_size, "how many checkpoints to vmap at once"
        )  # fmt: skip
    plan = stages.resolve(
        loss_fn, trees[-1], data, key, step_size, config, progress=progress, **traced
    )
    if checkpoint_batch_size == 1:
        results = [
            stages.run(loss_fn, params, data, key, plan, progress=progress,
                       label=f"LLC at step {step} ({i + 1}/{len(trees)})", measure=diagnostics)
            for i, (step, params) in enumerate(zip(steps, trees, strict=True))
        ]  # fmt: skip
    else:
        # the curvature at each w*: one small program, compiled while the checkpoints' one does
        compiled = plan.compile_measure(loss_fn, trees[-1], data, key) if diagnostics else None
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *trees)  # stays on device
        batched = _mapped(
            loss_fn, stacked, data, key, plan.traced, config=plan.config,
            batch_size=len(trees) if checkpoint_batch_size is None
            else min(checkpoint_batch_size, len(trees)),
        )  # fmt: skip
        results = [jax.tree.map(lambda x, i=i: x[i], batched) for i in range(len(trees))]
        if diagnostics:
            compiled.result()
            results = [
                with_geometry(result, plan.measure(loss_fn, params, data, key))
                for result, params in zip(results, trees, strict=True)
            ]
    rows, finished = [], []
    for step, result in zip(steps, results, strict=True):
        validation.check_init_loss(result.init_loss, f"the checkpoint at step {step}")
        # every warning names the checkpoint it comes from, and stays with its row
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stages.check_divergence(result, plan.step_size, raise_if_all=False)
            if np.asarray(result.diverged).all():
                result = result._replace(calibration=plan.calibration)
            else:
                result = stages.finish(result, plan, diagnostics)
        messages = [str(w.message) for w in caught]
        for w in caught:
            warnings.warn(f"checkpoint at step {step}: {w.message}", w.category, stacklevel=2)
        finished.append(result)
        rows.append(_row(step, result, messages))
    table = pd.DataFrame(rows)
    table.attrs["results"] = finished
    table.attrs["calibration"] = plan.calibration
    return table


def _row(step: int, result: LLCResult, messages: Sequence[str] = ()) -> dict:
    row = {
        "step": step,
        "llc_mean": float(result.llc_mean),
        "llc_std": float(result.llc_std),
        "init_loss": float(result.init_loss),
        "num_diverged": int(np.sum(result.diverged)),
        "mala_accept": float(np.nanmean(result.mala_accept))
        if not np.isnan(result.mala_accept).all()
        else float("nan"),
    }
    report = result.diagnostics
    if report is not None:
        row.update(rhat=report.rhat, ess_bulk=report.ess_bulk, llc_se=report.llc_se, ok=report.ok)
    # this checkpoint's warnings: those raised for it and the diagnostics' (each once)
    every = [*messages, *(report.warnings if report is not None else ())]
    row["warnings"] = "; ".join(dict.fromkeys(every))
    if result.observables is not None:
        obs = result.observables
        row.update(
            {
                name: float(getattr(obs, name))
                for name in (
                    "singular_fluctuation", "functional_variance", "waic", "wbic",
                    "bayes_train_loss", "gibbs_train_loss",
                )
            }
        )  # fmt: skip
    return row
