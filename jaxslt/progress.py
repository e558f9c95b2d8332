"""A progress bar fed from inside compiled code, at no measurable cost.

The chain runner calls ``report(step)`` through ``jax.debug.callback`` once every
``progress_every`` steps (inside a ``lax.cond``, so the other steps pay nothing and nothing but
the step counter leaves the device). The bar is an ordinary tqdm bar that is silent when stderr
is not a terminal.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import jax
from tqdm.auto import tqdm

__all__ = [
    "progress_bar",
    "progress_steps",
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


@contextlib.contextmanager
def progress_steps(progress: bool | None, total: int, label: str) -> Iterator[int]:
    """Yield ``progress_every`` for the compiled core: 0 (no callback compiled) unless a bar is
    shown; ``None`` shows one on a terminal for runs of 2000 steps or more."""
    show = progress if progress is not None else (total >= 2000 and sys.stderr.isatty())
    if not show:
        yield 0
        return
    with progress_bar(total, label):
        yield max(1, total // 100)
