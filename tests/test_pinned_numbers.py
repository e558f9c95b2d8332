"""Changes that are only about speed (compile time, tracing, memory, validation) must not move
a number: the same key gives the same result, bit for bit, before and after. This file pins a
digest of every field of the compiled programs' results (``sample_llc_jit`` in several
configurations, and the step check's ``geometry_at``) as computed on the machine named below.

The bits depend on what XLA compiles, which depends on the JAX version and on the CPU's
instruction set (XLA targets the host's vector units), so the digests are compared only on that
stack: elsewhere the test skips and says why. A failure means a change moved a number: find
which (the message names the configuration and shows λ̂ per chain) and undo it, or, for a change
that is meant to move numbers, re-pin with ``python tests/test_pinned_numbers.py``.
"""

from __future__ import annotations

import hashlib
import platform

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import pytest

from jaxslt import SamplingConfig, sample_llc_jit
from jaxslt.core import geometry_at

pytestmark = pytest.mark.xla_internals

# the stack the digests were computed on: the 2-core x86_64 VM of the project (2026-12-04)
PINNED_ON = {
    "jax": "0.10.2",
    "jaxlib": "0.10.2",
    "machine": "x86_64",
    "cpu": "amx_bf16 amx_int8 amx_tile avx avx2 avx512_bf16 avx512_bitalg avx512_fp16 "
    "avx512_vbmi2 avx512_vnni avx512_vpopcntdq avx512bw avx512cd avx512dq avx512f avx512ifma "
    "avx512vbmi avx512vl avx_vnni fma sse4_1 sse4_2",
}

BASE = dict(num_chains=4, num_draws=60, num_burnin=20, batch_size=32, acceptance_checks=10)
CONFIGS = {
    "defaults": {},
    "checks off": dict(acceptance_checks=0, step_check=False),
    "one chain": dict(num_chains=1),
    "chain groups of 2": dict(chain_batch_size=2),
    "thinning 3": dict(thinning=3),
    "observables": dict(observables=True),
    "sghmc": dict(sampler="sghmc"),
    "rmsprop_sgld": dict(sampler="rmsprop_sgld"),
    "full batch": dict(batch_size=256),
}

PINNED = {  # by ``python tests/test_pinned_numbers.py``, at commit a26de7e and after
    "defaults": "12608f8e29e82a9a",
    "checks off": "89fc1188f883a72e",
    "one chain": "00b931314ae9e6db",
    "chain groups of 2": "77d958acf1811428",
    "thinning 3": "d453a8557b659d7c",
    "observables": "ce0aa92e00bd9df0",
    "sghmc": "ad8caf55f55456e7",
    "rmsprop_sgld": "7708e8285f1145b6",
    "full batch": "c4907b3462cf15ed",
    "geometry_at": "542ba401e04d2428",
}


def _stack() -> dict:
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            line = next(x for x in f if x.startswith("flags"))
        wanted = ("avx", "fma", "sse4", "amx")
        flags = " ".join(sorted(x for x in line.split(":")[1].split() if x.startswith(wanted)))
    except (OSError, StopIteration):
        pass
    return {
        "jax": jax.__version__, "jaxlib": jaxlib.__version__,
        "machine": platform.machine(), "cpu": flags,
    }  # fmt: skip


def _problem():
    """A two-layer tanh network of 3 leaves at a trained-looking point, n = 256."""
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], (256, 3))
    params = {
        "w1": jax.random.normal(keys[1], (3, 8)) / jnp.sqrt(3.0),
        "b1": jnp.zeros(8),
        "w2": jax.random.normal(keys[2], (8,)) / jnp.sqrt(8.0),
    }

    def loss(p, batch):
        x, y = batch
        return jnp.mean((jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] - y) ** 2)

    y = jnp.tanh(x @ params["w1"]) @ params["w2"] + 0.1 * jax.random.normal(keys[3], (256,))
    return loss, params, (x, y)


def _digest(tree) -> str:
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        x = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}:{x.dtype}:{x.shape}:".encode())
        h.update(x.tobytes())
    return h.hexdigest()[:16]


def _run(name: str):
    loss, params, data = _problem()
    if name == "geometry_at":
        return geometry_at(loss, params, data, jax.random.key(5), batch_size=32)
    config = SamplingConfig(**{**BASE, **CONFIGS[name]})
    return sample_llc_jit(
        loss, params, data, jax.random.key(5), step_size=1e-3, localization=10.0, config=config
    )


NAMES = [*CONFIGS, "geometry_at"]


@pytest.mark.parametrize("name", NAMES)
def test_same_key_same_bits(name):
    stack = _stack()
    if stack != PINNED_ON:
        pytest.skip(f"digests pinned on {PINNED_ON}, this is {stack}")
    result = _run(name)
    shown = getattr(result, "llc_per_chain", None)
    assert _digest(result) == PINNED[name], (
        f"{name}: a number moved (λ̂ per chain now {shown}); a change about speed must not move any"
    )


if __name__ == "__main__":  # re-pin: prints the PINNED dict to paste above
    print({name: _digest(_run(name)) for name in NAMES})
