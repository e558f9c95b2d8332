"""jaxslt: local learning coefficient (LLC) estimation for JAX models.

The public API is deliberately small:

- ``estimate_llc``: validate, sample (vmapped chains, scanned steps, one compiled program),
  diagnose, and return an ``LLCResult``; ``sample_llc`` is its traceable core (jit/vmap it;
  ``sample_llc_jit`` compiled), its static settings one ``SamplingConfig``.
- ``calibrate``: choose step size, localization (and nβ) on a grid, by a documented rule.
- ``diagnose`` / ``to_inference_data``: R-hat, ESS, MALA acceptance, drift; ArviZ export.
- ``llc_trajectory``: λ̂ over a sequence of training checkpoints, one compile, as a DataFrame.
- ``estimate_llc(restrict=...)``: weight-refined LLC (``tree_paths`` lists what patterns match);
  ``estimate_llc(observables=True)``: singular fluctuation, WAIC, WBIC (``Observables``).
- ``detect_stages``: developmental stages (peaks, troughs, plateaus) of an LLC curve.
- ``localized_posterior``: p(w) ∝ exp(−nβ·L_n(w) − γ/2·||w − w*||²) as pure functions;
  ``sgld`` … ``mala`` and ``run_chains``: the kernels and chain runner beneath the estimator;
  ``register_sampler``: a sampler of one's own by name, with its ``SamplerCapabilities``.
- Modules: ``checkpoints`` (orbax checkpoint directories in and out), ``truth`` (exact
  learning coefficients), ``problems`` (reference problems), ``gibbs`` (exact block-Gibbs
  sampler for deep linear networks), ``plots`` (matplotlib figures; files when given
  ``path=``), ``stages``, ``study``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Everything is imported on first use (PEP 562 module __getattr__), so ``import jaxslt`` costs
# milliseconds, and ``jaxslt.estimate_llc`` loads JAX and optax but not blackjax, pandas, SciPy,
# ArviZ, matplotlib, orbax or Ray (each comes in with the module or function that uses it).
# tests/test_imports.py pins this.
_SUBMODULES = frozenset(
    {"checkpoints", "gibbs", "plots", "problems", "stages", "study", "truth"}
    # and every other module, reachable as an attribute as when they were imported eagerly
    | {"calibration", "chains", "cli", "diagnostics", "estimator", "kernels", "noise"}
    | {"observables", "posterior", "progress", "restriction", "trajectory", "validation"}
    | {"config", "core", "curvature", "memory", "plan", "sharding", "types"}
)
_ATTRIBUTES = {
    "Calibration": "calibration",
    "calibrate": "calibration",
    "ChainTrace": "chains",
    "run_chains": "chains",
    "Diagnostics": "diagnostics",
    "diagnose": "diagnostics",
    "to_inference_data": "diagnostics",
    "LLCResult": "core",
    "LLCWarning": "plan",
    "SamplingConfig": "config",
    "estimate_llc": "estimator",
    "sample_llc": "core",
    "sample_llc_jit": "core",
    "SAMPLERS": "kernels",
    "SamplerCapabilities": "kernels",
    "SamplingKernel": "kernels",
    "StepInfo": "kernels",
    "from_blackjax": "kernels",
    "mala": "kernels",
    "register_sampler": "kernels",
    "rmsprop_sgld": "kernels",
    "sghmc": "kernels",
    "sgld": "kernels",
    "sgnht": "kernels",
    "Observables": "observables",
    "LocalizedPosterior": "posterior",
    "default_nbeta": "posterior",
    "localized_posterior": "posterior",
    "Restriction": "restriction",
    "attention_head": "restriction",
    "make_restriction": "restriction",
    "tree_paths": "restriction",
    "Stages": "stages",
    "detect_stages": "stages",
    "llc_trajectory": "trajectory",
}


def __getattr__(name: str):
    if name in _ATTRIBUTES:
        value = getattr(importlib.import_module(f"jaxslt.{_ATTRIBUTES[name]}"), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"jaxslt.{name}")
    else:
        raise AttributeError(f"module 'jaxslt' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:
    from jaxslt import checkpoints, gibbs, plots, problems, stages, study, truth
    from jaxslt.calibration import Calibration, calibrate
    from jaxslt.chains import ChainTrace, run_chains
    from jaxslt.config import SamplingConfig
    from jaxslt.core import LLCResult, sample_llc, sample_llc_jit
    from jaxslt.diagnostics import Diagnostics, diagnose, to_inference_data
    from jaxslt.estimator import estimate_llc
    from jaxslt.kernels import (
        SAMPLERS,
        SamplerCapabilities,
        SamplingKernel,
        StepInfo,
        from_blackjax,
        mala,
        register_sampler,
        rmsprop_sgld,
        sghmc,
        sgld,
        sgnht,
    )
    from jaxslt.observables import Observables
    from jaxslt.plan import LLCWarning
    from jaxslt.posterior import LocalizedPosterior, default_nbeta, localized_posterior
    from jaxslt.restriction import Restriction, attention_head, make_restriction, tree_paths
    from jaxslt.stages import Stages, detect_stages
    from jaxslt.trajectory import llc_trajectory

__version__ = "0.1.0"

__all__ = [
    "SAMPLERS",
    "Calibration",
    "ChainTrace",
    "Diagnostics",
    "LLCResult",
    "LLCWarning",
    "LocalizedPosterior",
    "Observables",
    "Restriction",
    "SamplerCapabilities",
    "SamplingConfig",
    "SamplingKernel",
    "Stages",
    "StepInfo",
    "attention_head",
    "calibrate",
    "checkpoints",
    "default_nbeta",
    "detect_stages",
    "diagnose",
    "estimate_llc",
    "from_blackjax",
    "gibbs",
    "llc_trajectory",
    "localized_posterior",
    "make_restriction",
    "mala",
    "plots",
    "problems",
    "register_sampler",
    "rmsprop_sgld",
    "run_chains",
    "sample_llc",
    "sample_llc_jit",
    "sghmc",
    "sgld",
    "sgnht",
    "stages",
    "study",
    "to_inference_data",
    "tree_paths",
    "truth",
]
