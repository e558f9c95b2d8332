"""``step_size="auto"`` in a study: one calibration per group of cells, stored and reused.

The auto cells of a study that differ only in seed and checkpoint form a *calibration group*.
The group is calibrated once, at the study's last checkpoint (the trained model, as
``llc_trajectory`` does), on a key derived from the group's settings, and every cell of the
group then runs at the ε, γ, nβ, burn-in and draws it recommends. So the cells along the
checkpoints are the same measurement, and C checkpoints × S seeds pay for one calibration
instead of C·S. The calibration is written to the store's ``calibrations`` table as soon as it
is made; a rerun, a resumed run or a grid extended with more seeds or checkpoints reuses it, so
a cell's numbers do not depend on which run computed it. Its cautions (how far γ pulls λ̂) join
every cell's warnings. Calibrations run in the driver's process, before any cell is dispatched
(locally or to Ray).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

from jaxslt.study.settings import canonical, hashable
from jaxslt.types import PyTree

__all__ = ["CALIBRATED_SETTINGS", "StudyCalibration", "calibrate_group", "group_of"]

CALIBRATED_SETTINGS = ("step_size", "localization", "nbeta", "num_burnin", "num_draws")
"""The settings a group's calibration fixes for its cells."""

_NOT_CALIBRATED = ("step_size", "diagnostics", "progress")  # estimate_llc's, not the sampler's


class StudyCalibration(NamedTuple):
    """One calibration group's calibration.

    Attributes:
      group: the group's id (``group_of``).
      step: the checkpoint it was calibrated at.
      settings: the resolved ``CALIBRATED_SETTINGS`` every cell of the group runs with (burn-in
        and draws at least the spec's).
      cautions: the warnings the calibration raised (its cautions: how far γ pulls λ̂),
        prefixed to every cell's warnings.
      explanation: ``Calibration.explanation``: what was measured and why this setting.
    """

    group: str
    step: int
    settings: Mapping[str, Any]
    cautions: tuple[str, ...] = ()
    explanation: str = ""

    def warnings(self) -> list[str]:
        """The cautions as a cell's warnings name them."""
        return [f"the study's calibration at step {self.step}: {c}" for c in self.cautions]


def group_of(data: str, settings: Mapping[str, Any]) -> str | None:
    """The calibration group of a cell with these data slice and settings (seed and checkpoint
    left out): the sha256 of their canonical JSON; None unless ``step_size == "auto"``."""
    if settings.get("step_size") != "auto":
        return None
    text = canonical({"data": data, "settings": dict(settings)})
    return hashlib.sha256(text.encode()).hexdigest()


def calibrate_group(
    loss_fn: Any, params: PyTree, data: PyTree, group: str, step: int, settings: Mapping[str, Any]
) -> StudyCalibration:
    """Calibrate ``group`` at the checkpoint ``params`` (training step ``step``) as
    ``estimate_llc(..., step_size="auto", **settings)`` would, on the key
    ``jax.random.key(first 31 bits of the group id)``; ``settings`` are one of its cells'
    (JSON forms). Raises what ``estimate_llc`` raises (e.g. RuntimeError when no setting is
    usable)."""
    import jax

    from jaxslt import validation
    from jaxslt.config import split_settings
    from jaxslt.plan import resolve

    kwargs = {k: hashable(v) for k, v in settings.items() if k not in _NOT_CALIBRATED}
    config, traced = split_settings(kwargs)
    key = validation.check_key(jax.random.key(int(group[:8], 16) >> 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = resolve(loss_fn, params, data, key, "auto", config, **traced)
    resolved = {
        "step_size": float(plan.step_size),
        "localization": float(plan.localization),
        "nbeta": float(plan.nbeta),
        "num_burnin": int(plan.config.num_burnin),
        "num_draws": int(plan.config.num_draws),
    }
    cautions = tuple(dict.fromkeys(str(w.message) for w in caught))
    return StudyCalibration(group, int(step), resolved, cautions, plan.calibration.explanation)
