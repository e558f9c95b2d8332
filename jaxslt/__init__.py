"""jaxslt: local learning coefficient (LLC) estimation for JAX models.

The public API is deliberately small:

- ``estimate_llc``: validate, sample (vmapped chains, scanned steps, one compiled program) and
  return an ``LLCResult``; ``sample_llc`` is its traceable core (jit/vmap it).
- ``localized_posterior``: the posterior p(w) ∝ exp(−nβ·L_n(w) − γ/2·||w − w*||²) as pure
  functions; ``sgld`` and ``run_chains``: the kernel and chain runner beneath the estimator.
- ``truth``: exact learning coefficients (Aoyagi's deep-linear-network formula and friends).
"""

from jaxslt import truth
from jaxslt.chains import ChainTrace, run_chains
from jaxslt.estimator import LLCResult, estimate_llc, sample_llc
from jaxslt.kernels import SAMPLERS, SamplingKernel, StepInfo, from_blackjax, sgld
from jaxslt.posterior import LocalizedPosterior, default_nbeta, localized_posterior

__version__ = "0.1.0"

__all__ = [
    "SAMPLERS",
    "ChainTrace",
    "LLCResult",
    "LocalizedPosterior",
    "SamplingKernel",
    "StepInfo",
    "default_nbeta",
    "estimate_llc",
    "from_blackjax",
    "localized_posterior",
    "run_chains",
    "sample_llc",
    "sgld",
    "truth",
]
