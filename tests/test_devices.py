"""Chains spread over a device mesh give the same result as on one device.

Runs in a subprocess with 8 emulated CPU devices (XLA_FLAGS must be set before JAX starts).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    import jaxslt
    from jaxslt import problems
    assert jax.device_count() == 8, jax.devices()
    p = problems.deep_linear_network([4, 3, 4], 1, key=jax.random.key(0), num_examples=2000)
    kw = dict(key=jax.random.key(1), step_size=1e-4, localization=10.0, num_chains=8,
              num_draws=200, num_burnin=50, diagnostics=False)
    auto = (jax.sharding.AxisType.Auto,)
    mesh8 = jax.make_mesh((8,), ("chain",), axis_types=auto)
    mesh4 = jax.make_mesh((4, 2), ("chain", "model"), axis_types=auto * 2)
    one = jaxslt.estimate_llc(p.loss_fn, p.params, p.data, **kw)
    spread = jaxslt.estimate_llc(p.loss_fn, p.params, p.data, mesh=mesh8, **kw)
    grouped = jaxslt.estimate_llc(p.loss_fn, p.params, p.data, mesh=mesh4, chain_batch_size=4,
                                  **kw)
    for other in (spread, grouped):
        np.testing.assert_allclose(other.loss_trace, one.loss_trace, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(other.llc_per_chain, one.llc_per_chain, rtol=1e-4)
    hlo = jaxslt.estimator._sample_llc_jit.lower(
        p.loss_fn, p.params, p.data, kw["key"], step_size=1e-4, nbeta=1.0, localization=1.0,
        num_chains=8, num_draws=5, num_burnin=0, mesh=mesh8,
    ).compile().as_text()
    # after SPMD partitioning each device holds one chain's (4, 3) first layer, not all eight
    assert "f32[1,4,3]" in hlo and "f32[8,4,3]" not in hlo, "chain states are not sharded"
    try:
        jaxslt.estimate_llc(p.loss_fn, p.params, p.data, mesh=mesh8, **(kw | {"num_chains": 6}))
    except ValueError as err:
        assert "multiple of 8" in str(err)
    else:
        raise AssertionError("6 chains on an 8-device chain axis must be refused")
    print("OK")
    """
)


def test_chains_over_a_mesh_match_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
