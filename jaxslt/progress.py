"""A progress bar fed from inside compiled code, at no measurable cost.

The chain runner calls ``report(step)`` through ``jax.debug.callback`` once every
``progress_every`` steps (inside a ``lax.cond``, so the other steps pay nothing and nothing but
the step counter leaves the device). The bar is an ordinary tqdm bar that is silent when stderr
is not a terminal.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
from tqdm.auto import tqdm

__all__ = [
    "progress_bar",
    "report",
]

_bars: list[tqdm] = []


def report(step) -> None:
    """Host side of the callback: move the innermost open bar to ``step`` steps done."""
    if _bars:
        bar = _bars[-1]
        bar.update(max(0, int(step) - bar.n))


@contextlib.contextmanager
def progress_bar(total: int, desc: str) -> Iterator[tqdm]:
    """Open a bar that ``report`` advances (tqdm's ``disable=None``: silent off a terminal)."""
    bar = tqdm(total=total, desc=desc, unit="step", disable=None, dynamic_ncols=True, leave=False)
    _bars.append(bar)
    try:
        yield bar
        jax.effects_barrier()  # let in-flight callbacks land before the bar closes
    finally:
        _bars.remove(bar)
        bar.close()
