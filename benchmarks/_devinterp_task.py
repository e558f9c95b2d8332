"""The devinterp half of benchmarks/vs_devinterp.py; run by it with the devinterp venv's python.

    python _devinterp_task.py DATA.npz SETTINGS_JSON   # prints one JSON object on stdout

DATA.npz holds x (n, H_0), y (n, H_L) and the layers w_0 … w_{L−1} of w* in jaxslt's layout
(H_{l−1}, H_l), f(x) = x·W_1⋯W_L. The torch model is bias-free ``nn.Linear`` layers with
``weight = W_lᵀ`` (the same function); the loss is mean_batch ½·||y − f(x)||², as in jaxslt.

The run is ``devinterp.slt.sampler.estimate_learning_coeff_with_summary`` with
``devinterp.optim.sgld.SGLD`` (its default sampler), whose update is
w ← w − (lr/2)·(nbeta·∇L_B(w) + localization·(w − w*)) + √lr·N(0, I): lr is the noise
variance ε, the same convention as jaxslt's ``step_size``. Minibatches are ``batch_size``
indices drawn i.i.d. with replacement (``RandomSampler(replacement=True)``), as in jaxslt, and
the loader is either torch's default per-example collation (``"per-example"``, as devinterp's
examples build it) or one tensor index per batch (``"batched"``, cheaper).
Only ``estimate_learning_coeff_with_summary`` is timed (wall and process CPU time); importing
torch and devinterp is timed separately. This file imports neither jax nor jaxslt: it runs in
devinterp's own venv.
"""

from __future__ import annotations

import json
import platform
import sys
import time
import warnings

import numpy as np


def main() -> None:
    data_path, settings = sys.argv[1], json.loads(sys.argv[2])
    start = time.perf_counter()
    import devinterp
    import torch
    from devinterp.optim.sgld import SGLD
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

    import_s = time.perf_counter() - start

    threads = int(settings["threads"])
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)

    with np.load(data_path) as f:
        x, y = torch.from_numpy(f["x"]), torch.from_numpy(f["y"])
        weights = [f[f"w_{i}"] for i in range(int(f["num_layers"]))]
    model = torch.nn.Sequential(
        *(torch.nn.Linear(w.shape[0], w.shape[1], bias=False) for w in weights)
    )
    with torch.no_grad():
        for layer, w in zip(model, weights, strict=True):
            layer.weight.copy_(torch.from_numpy(w.T.copy()))

    def evaluate(model: torch.nn.Module, batch: tuple) -> torch.Tensor:
        xb, yb = batch
        return 0.5 * torch.mean(torch.sum((yb - model(xb)) ** 2, dim=-1))

    n, batch_size = x.shape[0], settings["batch_size"]
    dataset = TensorDataset(x, y)
    indices = RandomSampler(dataset, replacement=True, num_samples=n)  # i.i.d., as in jaxslt
    if settings["loader"] == "per-example":  # what devinterp's examples do: collate examples
        loader = DataLoader(dataset, batch_size=batch_size, sampler=indices)
    elif settings["loader"] == "batched":  # one tensor index per batch: no per-example collate
        # each "key" the sampler yields is a list of indices, fetched as one tensor index;
        # batch_size must stay an int because devinterp reads it (for a default nbeta).
        batches = BatchSampler(indices, batch_size, drop_last=False)
        loader = DataLoader(dataset, sampler=batches, batch_size=1, collate_fn=_only)
    else:
        raise ValueError(f"loader must be 'per-example' or 'batched', got {settings['loader']!r}")
    with torch.no_grad():
        init_loss = float(evaluate(model, (x, y)))  # L_n(w*) on the full data, as jaxslt does

    # devinterp warns about its deprecated SGLD class, seeded runs and nbeta; the settings are
    # deliberate, and stdout must stay one JSON line.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start, cpu_start = time.perf_counter(), time.process_time()
        out = estimate_learning_coeff_with_summary(
            model,
            loader,
            evaluate=evaluate,
            sampling_method=SGLD,
            optimizer_kwargs=dict(
                lr=settings["step_size"],
                nbeta=settings["nbeta"],
                localization=settings["localization"],
            ),
            num_chains=settings["num_chains"],
            num_draws=settings["num_draws"],
            num_burnin_steps=settings["num_burnin"],
            num_steps_bw_draws=1,
            init_loss=init_loss,
            seed=settings["seed"],
            device="cpu",
            verbose=False,
        )
        wall_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start

    trace = np.asarray(out["loss/trace"], np.float64)  # (chains, draws), burn-in excluded
    # devinterp replaces a falsy init_loss (exactly 0.0 here) by the mean of a few minibatch
    # losses; recomputing from the trace with the full-data L_n(w*) shows whether that mattered.
    per_chain_full = settings["nbeta"] * (trace.mean(axis=1) - init_loss)
    print(
        json.dumps(
            dict(
                llc_mean=out["llc/mean"],
                llc_std=out["llc/std"],
                llc_per_chain=[out[f"llc-chain/{c}"] for c in range(settings["num_chains"])],
                llc_mean_full_init_loss=float(per_chain_full.mean()),
                draws_per_chain=int(trace.shape[1]),
                init_loss=init_loss,
                wall_s=wall_s,
                cpu_s=cpu_s,
                import_s=import_s,
                threads=torch.get_num_threads(),
                loader=settings["loader"],
                torch=torch.__version__,
                torch_cuda_build=torch.version.cuda,
                devinterp=getattr(devinterp, "__version__", None) or _dist_version("devinterp"),
                python=platform.python_version(),
            )
        )
    )


def _only(items: list):
    (item,) = items
    return item


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
