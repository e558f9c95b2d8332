"""Per-device compiled memory of the chain/model mesh strategies (8 emulated CPU devices).

XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
    .venv/bin/python benchmarks/sharding_memory.py
"""

import jax
import jax.numpy as jnp
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from jaxslt import SamplingConfig, problems, sample_llc_jit
from jaxslt.sharding import place_params

W = 512
p = problems.deep_linear_network([W] * 5, W // 4, key=jax.random.key(0), num_examples=1024)
P_BYTES = 4 * sum(int(w.size) for w in p.params)
kw = dict(step_size=jnp.float32(1e-7), nbeta=jnp.float32(1000.0), localization=jnp.float32(1.0))


def mesh(shape, names):
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names))


def mem(m, chains, specs=None):
    statics = dict(
        num_chains=chains,
        num_draws=10,
        num_burnin=0,
        batch_size=256,
        acceptance_checks=0,
        mesh=m,
        param_specs=specs,
        step_check=False,
    )
    params = p.params if m is None else place_params(p.params, m, specs)
    c = sample_llc_jit.lower(
        p.loss_fn, params, p.data, jax.random.key(1), **kw, config=SamplingConfig(**statics)
    ).compile()
    a = c.memory_analysis()
    return (a.argument_size_in_bytes + a.temp_size_in_bytes + a.output_size_in_bytes) / P_BYTES


alternating = (P(None, "model"), P("model", None)) * 2
cases = [
    (None, None),
    (mesh((8,), ("chain",)), None),
    (mesh((2, 4), ("chain", "model")), None),
    (mesh((1, 8), ("chain", "model")), None),
    (mesh((1, 8), ("chain", "model")), alternating),
]
for m, specs in cases:
    a, b = mem(m, 8, specs), mem(m, 16, specs)
    per_device = 8 // (1 if m is None else dict(m.shape).get("chain", 1))
    marginal = (b - a) / per_device
    print(
        None if m is None else dict(m.shape),
        "explicit specs" if specs else "auto",
        f"per chain per device {marginal:.3f}, fixed {a - per_device * marginal:.2f}"
        " (x float32 param bytes)",
        flush=True,
    )
