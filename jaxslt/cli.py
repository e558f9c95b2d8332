"""The ``jaxslt`` command line: ``jaxslt demo`` estimates a deep linear network's LLC;
``jaxslt study run|status|report SPEC`` runs and reads resumable studies (``jaxslt.study``)."""

from __future__ import annotations

import argparse
import itertools
import os
import sqlite3
import time
from collections.abc import Sequence

__all__ = [
    "demo",
    "main",
    "study",
]


def _widths(text: str) -> list[int]:
    try:
        return [int(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"widths must look like 6,4,4,6; got {text!r}") from None


def demo(args: argparse.Namespace) -> int:
    import jax

    from jaxslt import estimate_llc, problems

    problem = problems.deep_linear_network(
        args.widths, args.rank, key=jax.random.key(args.seed + 1), num_examples=args.num_examples
    )
    num_params = sum(a * b for a, b in itertools.pairwise(args.widths))
    print(
        f"Deep linear network {'→'.join(map(str, args.widths))} ({num_params} parameters), "
        f"teacher rank {args.rank}, w* = identity blocks (a most-singular point), "
        f"n = {args.num_examples} noise-free examples"
    )
    start = time.perf_counter()
    result = estimate_llc(
        problem.loss_fn,
        problem.params,
        problem.data,
        key=jax.random.key(args.seed),
        step_size=args.step_size,
        localization=args.localization,
        num_chains=args.chains,
        num_draws=args.draws,
        num_burnin=args.burnin,
        batch_size=args.batch_size,
        progress=True,
    )
    elapsed = time.perf_counter() - start
    llc, multiplicity = problem.truth
    target = _gibbs_target(problem, args, float(result.nbeta))
    print(result.summary())
    print(f"estimated LLC: {float(result.llc_mean):.3f} ± {float(result.llc_std):.3f}")
    print(
        f"true LLC (Aoyagi 2024): {llc} = {float(llc):.3f}, multiplicity {multiplicity}; "
        f"relative error {float(result.llc_mean) / float(llc) - 1:+.1%}"
    )
    print(
        f"exact target at this nβ and γ (block-Gibbs sampling of the same posterior): "
        f"{target:.3f}; SGLD vs target {float(result.llc_mean) / target - 1:+.1%}"
    )
    print(f"wall time {elapsed:.1f} s including compilation, on {jax.devices()[0].platform}")
    return 0


def _gibbs_target(problem, args, nbeta: float) -> float:
    """E_p[λ̂] under the exact posterior at the demo's nβ and γ, by jaxslt.gibbs in float64."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxslt import gibbs

    with jax.enable_x64(True):
        exact = gibbs.gibbs_llc(
            tuple(jnp.asarray(np.asarray(w), jnp.float64) for w in problem.params),
            *(jnp.asarray(np.asarray(a), jnp.float64) for a in problem.data),
            key=jax.random.key(args.seed + 2), nbeta=nbeta, localization=args.localization,
            num_chains=4, num_sweeps=2000, num_burnin=200,
        )  # fmt: skip
    return float(exact.llc_mean)


def study(args: argparse.Namespace) -> int:
    from jaxslt import study as st

    if args.study_command == "run":
        summary = st.run(
            args.spec, address=args.address, max_cells=args.max_cells,
            retry_failed=args.retry_failed,
        )  # fmt: skip
        print(summary)
        return 1 if summary.failed else 0
    if args.study_command == "status":
        print(st.status(args.spec))
        return 0
    result = st.report(args.spec, out=args.out)
    print(result.summary)
    for path in result.files:
        print(f"wrote {path}")
    return 0


def _study_parser(sub) -> None:
    s = sub.add_parser("study", help="resumable grids of LLC estimates (run, status, report)")
    commands = s.add_subparsers(dest="study_command", required=True)
    r = commands.add_parser("run", help="run the cells of SPEC not finished yet")
    r.add_argument("spec", help="the study's TOML file")
    r.add_argument("--address", default=None, help="Ray address (auto, ray://host:port, local)")
    r.add_argument("--max-cells", type=int, default=None, help="stop after this many cells")
    r.add_argument("--retry-failed", action="store_true", help="rerun cells stored as failed")
    t = commands.add_parser("status", help="done / running / failed / pending cells and ETA")
    t.add_argument("spec", help="the study's TOML file")
    p = commands.add_parser("report", help="results table and plots of LLC vs checkpoint")
    p.add_argument("spec", help="the study's TOML file")
    p.add_argument("--out", default=None, help="folder for results.csv, plots and summary.txt")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jaxslt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="estimate a small deep linear network's LLC vs its true value")
    d.add_argument("--widths", type=_widths, default=[6, 4, 4, 6], help="input,...,output")
    d.add_argument("--rank", type=int, default=2, help="rank of the teacher")
    d.add_argument("--num-examples", type=int, default=10_000)
    d.add_argument("--step-size", type=float, default=1e-4, help="ε, the SGLD noise variance")
    d.add_argument("--localization", type=float, default=10.0, help="γ")
    d.add_argument("--chains", type=int, default=4)
    d.add_argument("--draws", type=int, default=10_000)
    d.add_argument("--burnin", type=int, default=5_000)
    d.add_argument("--batch-size", type=int, default=256)
    d.add_argument("--seed", type=int, default=0)
    _study_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "demo":
        try:
            return demo(args)
        except (ValueError, TypeError) as err:
            parser.exit(2, f"jaxslt {args.command}: error: {err}\n")
    try:
        return study(args)
    except (ValueError, TypeError, OSError, ImportError, RuntimeError, sqlite3.Error) as err:
        # OSError: a missing spec or store, a Ray address with no cluster behind it; a store
        # that is corrupted, not SQLite or read-only is a one-line StoreError (RuntimeError)
        parser.exit(2, f"jaxslt study {args.study_command}: error: {err}\n")
    except KeyboardInterrupt:  # finished cells are stored; the one in flight reruns next time
        parser.exit(130, f"jaxslt study {args.study_command}: interrupted; run again to resume\n")
    except Exception as err:  # unforeseen: still one readable line, the traceback on request
        if os.environ.get("JAXSLT_DEBUG"):
            raise
        parser.exit(
            2,
            f"jaxslt study {args.study_command}: error: {type(err).__name__}: {err} "
            "(unexpected; set JAXSLT_DEBUG=1 to see the traceback)\n",
        )


if __name__ == "__main__":
    raise SystemExit(main())
