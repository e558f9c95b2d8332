"""The settings of one LLC estimate, declared once: ``SamplingConfig`` and its defaults.

A sampling run is shaped by two kinds of setting:

- **static** ones, which shape the compiled program (array shapes, loop lengths, which sampler,
  which checks, where arrays live): the fields of ``SamplingConfig``, a frozen, hashable
  dataclass passed to the compiled core as *one* static argument;
- **traced** ones, the scalars ``TRACED_SETTINGS`` = (ε, nβ, γ): arguments of the compiled
  core that may be traced, so changing them (a calibration grid, a sweep) never recompiles.

Every default lives here. ``estimate_llc``'s keyword defaults read ``DEFAULTS``;
``llc_trajectory`` and studies take their list of settings from ``ESTIMATE_SETTINGS``. Adding a
sampling setting means: a field here, its keyword in ``estimate_llc`` (forwarded into the
config), and its use in ``jaxslt.core`` (see ``docs/architecture.md``).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax

__all__ = [
    "DEFAULTS",
    "DEFAULT_LOCALIZATION",
    "ESTIMATE_SETTINGS",
    "REQUIRED",
    "TRACED_SETTINGS",
    "SamplingConfig",
    "split_settings",
]

DEFAULT_LOCALIZATION = 100.0
"""γ when none is given (and ``step_size`` is not ``"auto"``)."""

TRACED_SETTINGS = ("step_size", "nbeta", "localization")
"""The settings that stay traced in the compiled core (scalars: ε, nβ, γ)."""


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """The static settings of one LLC estimate (hashable: one static argument under ``jit``).

    Everything that shapes the compiled program: the schedule (``num_chains`` chains, each
    ``num_burnin`` burn-in steps then ``num_draws`` kept draws, one every ``thinning`` steps),
    the batching, the sampler, the checks, the observables and the placement. The traced
    settings (ε, nβ, γ) are arguments of ``sample_llc`` instead. Build one with keywords,
    change one with ``dataclasses.replace``.

    Attributes:
      num_chains: independent chains, all started at w*.
      num_draws: kept draws per chain.
      num_burnin: burn-in steps per chain before the first kept draw.
      thinning: steps per kept draw after burn-in.
      batch_size: minibatch size, i.i.d. with replacement; ``None`` = min(n, 256), n = full
        batch.
      eval_batch_size: chunk size of the full-data L_n(w*); ``None`` = ``batch_size``.
      sampler: a registered name or a factory (see ``jaxslt.kernels``).
      sampler_options: the sampler's keyword arguments; a Mapping, stored as a sorted tuple of
        pairs.
      acceptance_checks: the MALA acceptance of SGLD transitions is measured at that many
        steps after burn-in.
      step_check: record the chains' part of the ``LocalGeometry`` from which the diagnostics
        judge ε (``jaxslt.core.geometry_at`` measures the rest, at w*), and the lowest
        full-data loss at a few kept draws (``LLCResult.lowest_excess``), by which they judge
        whether w* is a local minimum.
      progress_every: a host callback every that many steps; 0 = none.
      observables: accumulate per-example losses for the singular fluctuation, WAIC, WBIC.
      observable_draws: at that many kept draws per chain.
      chain_batch_size: chains run in groups of this size; ``None`` = all at once; ``"auto"`` =
        from free memory, resolved by ``estimate_llc`` (the compiled core cannot query memory
        and runs all chains at once).
      mesh: a ``jax.sharding.Mesh`` with a ``"chain"`` and/or a ``"model"`` axis.
      param_specs: how each parameter leaf splits over ``mesh``'s ``"model"`` axis (a flat
        tuple in leaf order under ``jit``).
      compute_dtype: e.g. ``jnp.bfloat16`` for the forward/backward pass; ``None`` = the
        params' dtype.

    Examples:
      >>> import dataclasses
      >>> from jaxslt import SamplingConfig
      >>> config = SamplingConfig(num_chains=2, num_draws=100, num_burnin=50)
      >>> config.total_steps  # burn-in + draws × thinning
      150
      >>> dataclasses.replace(config, thinning=2).total_steps
      250
      >>> config == SamplingConfig(num_chains=2, num_draws=100, num_burnin=50)  # hashable
      True
      >>> SamplingConfig(sampler_options={"friction": 0.1}).sampler_options
      (('friction', 0.1),)
    """

    # schedule
    num_chains: int = 4
    num_draws: int = 1000
    num_burnin: int = 500
    thinning: int = 1
    # batching
    batch_size: int | None = None
    eval_batch_size: int | None = None
    # sampler
    sampler: str | Callable = "sgld"
    sampler_options: tuple[tuple[str, Any], ...] | None = None  # stored as a tuple, () if none
    # checks
    acceptance_checks: int = 50
    step_check: bool = True
    progress_every: int = 0
    # observables
    observables: bool = False
    observable_draws: int = 100
    # placement
    chain_batch_size: int | Literal["auto"] | None = "auto"
    mesh: jax.sharding.Mesh | None = None
    param_specs: Any = None
    compute_dtype: Any = None

    def __post_init__(self) -> None:
        # hashable forms: options as sorted pairs, per-leaf specs as a tuple (anything else is
        # left as given, for jaxslt.validation to name)
        options = self.sampler_options
        if options is None:
            object.__setattr__(self, "sampler_options", ())
        elif isinstance(options, Mapping):
            object.__setattr__(self, "sampler_options", tuple(sorted(options.items())))
        if isinstance(self.param_specs, list):
            object.__setattr__(self, "param_specs", tuple(self.param_specs))

    @property
    def options(self) -> dict[str, Any]:
        """``sampler_options`` as a dict."""
        return dict(self.sampler_options)

    @property
    def total_steps(self) -> int:
        """Sampler steps per chain: burn-in plus kept draws times thinning."""
        return self.num_burnin + self.num_draws * self.thinning

    @property
    def chain_groups(self) -> int:
        """Chain groups run one after another (``chain_batch_size`` resolved; 1 without)."""
        size = self.chain_batch_size
        if not size or size == "auto":
            return 1
        return self.num_chains // min(size, self.num_chains)


DEFAULTS = SamplingConfig()
"""The default ``SamplingConfig``: ``estimate_llc``'s keyword defaults are read from it."""

REQUIRED = object()
"""Marks a setting without a default (``step_size``) in ``ESTIMATE_SETTINGS``."""

_INTERNAL = frozenset({"step_check", "progress_every"})  # set by the shell, not by users

ESTIMATE_SETTINGS: Mapping[str, Any] = types.MappingProxyType(
    {
        "step_size": REQUIRED,
        "nbeta": None,
        "localization": None,
        **{
            f.name: f.default for f in dataclasses.fields(SamplingConfig) if f.name not in _INTERNAL
        },
        "restrict": None,
        "diagnostics": True,
        "progress": None,
    }
)
"""Every keyword setting of ``estimate_llc`` (all but ``key``) and its default (``REQUIRED``
for ``step_size``): ``nbeta``/``localization`` ``None`` mean n/log n and
``DEFAULT_LOCALIZATION`` (or the calibrated values with ``step_size="auto"``)."""


def split_settings(settings: Mapping[str, Any]) -> tuple[SamplingConfig, dict[str, Any]]:
    """``settings`` (names of ``ESTIMATE_SETTINGS``) as a ``SamplingConfig`` of its static
    ones (the rest at their defaults) and a dict of the others (``nbeta``, ``localization``,
    ``restrict``, ...)."""
    static = {f.name for f in dataclasses.fields(SamplingConfig)} - _INTERNAL
    config = SamplingConfig(**{k: v for k, v in settings.items() if k in static})
    return config, {k: v for k, v in settings.items() if k not in static}
