"""Multi-host: two processes joined by ``jax.distributed`` give the single-process result.

Two local CPU processes with 2 devices each (gloo collectives) build one global mesh whose
"chain" axis spans all 4 devices, 2 per process, and run ``estimate_llc`` with the same key,
data and w*. Every process must get the whole result as host-local numpy-convertible arrays,
equal on both, and equal to a single-process run here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np

import jaxslt
from jaxslt import problems

PROBLEM = dict(widths=[4, 3, 4], rank=1, num_examples=500, noise=1.0)
SETTINGS = dict(step_size=1e-4, localization=10.0, num_chains=4, num_draws=50, num_burnin=5,
                batch_size=32, acceptance_checks=0, diagnostics=False)  # fmt: skip
FIELDS = ("loss_trace", "burnin_loss_trace", "llc_per_chain", "llc_mean", "llc_std", "init_loss")

WORKER = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_num_cpu_devices", 2)
    port, rank, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    problem, settings, fields = (json.loads(a) for a in sys.argv[4:7])
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                               process_id=rank, initialization_timeout=60)
    import numpy as np
    import jaxslt
    from jaxslt import problems
    assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 4, 2)
    p = problems.deep_linear_network(problem.pop("widths"), problem.pop("rank"),
                                     key=jax.random.key(0), **problem)
    mesh = jax.make_mesh((4,), ("chain",), axis_types=(jax.sharding.AxisType.Auto,))
    assert {d.process_index for d in mesh.devices.flat} == {0, 1}
    r = jaxslt.estimate_llc(p.loss_fn, p.params, p.data, key=jax.random.key(1), mesh=mesh,
                            **settings)
    np.savez(out, **{f: np.asarray(getattr(r, f)) for f in fields})
    print("OK")
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
    port = _free_port()
    specs = [json.dumps(PROBLEM), json.dumps(SETTINGS), json.dumps(FIELDS)]

    def start(rank: int) -> subprocess.Popen:
        out = str(tmp_path / f"{rank}.npz")
        command = [sys.executable, "-c", WORKER, str(port), str(rank), out, *specs]
        pipe = subprocess.PIPE
        return subprocess.Popen(command, env=env, stdout=pipe, stderr=pipe, text=True)

    procs = [start(0), start(1)]
    outputs = []
    try:
        for proc in procs:  # a hang (e.g. a lost peer) fails the test instead of blocking CI
            outputs.append(proc.communicate(timeout=120))
    finally:
        for proc in procs:
            proc.kill()
    for proc, (stdout, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0 and "OK" in stdout, stderr[-3000:]

    problem = dict(PROBLEM)
    p = problems.deep_linear_network(problem.pop("widths"), problem.pop("rank"),
                                     key=jax.random.key(0), **problem)  # fmt: skip
    one = jaxslt.estimate_llc(p.loss_fn, p.params, p.data, key=jax.random.key(1), **SETTINGS)
    first, second = (np.load(tmp_path / f"{rank}.npz") for rank in (0, 1))
    for field in FIELDS:
        # the same replicated output on both processes
        np.testing.assert_array_equal(first[field], second[field], err_msg=field)
    # Each device steps 1 chain here instead of 4 at once; XLA:CPU's kernels for the two batch
    # shapes may round differently (observed: a few float32 ulps), so not bit-equal.
    np.testing.assert_allclose(first["init_loss"], one.init_loss, rtol=1e-6)
    for field in ("loss_trace", "burnin_loss_trace"):
        np.testing.assert_allclose(first[field], getattr(one, field), rtol=1e-5, err_msg=field)
    np.testing.assert_allclose(first["llc_per_chain"], one.llc_per_chain, rtol=1e-4)
