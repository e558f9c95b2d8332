"""A spec → its cells: one ``estimate_llc`` call per checkpoint × grid point, each named by its
identity (``jaxslt.study.identity``)."""

from __future__ import annotations

from typing import Any, NamedTuple

from jaxslt.study.calibrations import StudyCalibration
from jaxslt.study.checkpoints import EntryPointCheckpoints, MemoryCheckpoints, OrbaxCheckpoints
from jaxslt.study.identity import cell_id, cell_identity
from jaxslt.study.settings import EXTRA_SETTINGS, FLOAT_SETTINGS, canonical, hashable
from jaxslt.study.spec import Spec

__all__ = ["Cell", "expand", "resolve_checkpoints"]


class Cell(NamedTuple):
    """One estimate_llc call of a study.

    Attributes:
      cell_id: the hash of ``identity``, the cell's name in the store.
      step: the checkpoint's training step.
      data: the data slice (``FULL_DATA`` for the problem's own data set).
      seed: the seed of the cell's PRNG key.
      settings: estimate_llc's keyword arguments (all of them but key, mesh and progress,
        defaults filled in).
      identity: the canonical JSON that ``cell_id`` hashes.
      calibration: for ``step_size="auto"``, its group's ``StudyCalibration`` once the driver
        has it (``jaxslt.study.calibrations``); it does not change the cell's identity.
    """

    cell_id: str
    step: int
    data: str
    seed: int
    settings: dict[str, Any]
    identity: str
    calibration: StudyCalibration | None = None

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for estimate_llc (lists as tuples: some settings are static and
        must be hashable); an auto cell's calibrated settings replace its ``"auto"``."""
        settings = dict(self.settings)
        if self.calibration is not None:
            settings.update(self.calibration.settings)
        return {k: hashable(v) for k, v in settings.items()}

    @property
    def shape_key(self) -> str:
        """Cells with equal shape keys run the same compiled program (on the same data
        slice): the settings that are traced (step_size, nbeta, localization) and the seed
        are left out."""
        static = {k: v for k, v in self.settings.items() if k not in FLOAT_SETTINGS}
        return canonical({"data": self.data, **static})


def expand(
    spec: Spec, checkpoints: OrbaxCheckpoints | MemoryCheckpoints | None = None
) -> list[Cell]:
    """Every cell of the study, checkpoint-major (each checkpoint's cells together; within it,
    the grid's order).

    Args:
      spec: the study's ``Spec``.
      checkpoints: the resolved checkpoints (entry point already called); None resolves the
        spec's.

    Returns:
      The ``Cell`` s, one per checkpoint × grid point.
    """
    if checkpoints is None:
        checkpoints = resolve_checkpoints(spec)
    points = spec.grid_points()
    cells = []
    for step in checkpoints.step_list():
        identity = checkpoints.identity(step)
        for point in points:
            text = cell_identity(spec, identity, point)
            settings = {k: v for k, v in point.items() if k not in EXTRA_SETTINGS}
            cells.append(
                Cell(
                    cell_id(text),
                    int(step),
                    point["data"],
                    point["seed"],
                    settings,
                    text,
                )
            )
    return cells


def resolve_checkpoints(spec: Spec) -> OrbaxCheckpoints | MemoryCheckpoints:
    """The spec's checkpoints, with an entry point called (once) into ``MemoryCheckpoints``."""
    if isinstance(spec.checkpoints, EntryPointCheckpoints):
        return spec.checkpoints.resolve()
    return spec.checkpoints
