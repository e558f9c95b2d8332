"""``jaxslt study status`` counts the cells of a spec whose checkpoints come from an entry
point with declared steps without calling the entry point (it may train a model)."""

from __future__ import annotations

import textwrap

import pytest

from jaxslt import study

# study.run points JAX's persistent compilation cache at the store's folder: undo it
pytestmark = pytest.mark.usefixtures("restore_compilation_cache")

ENTRY = """
import pathlib
from jaxslt.study import examples

def checkpoints(steps, log):
    pathlib.Path(log).open("a").write("called\\n")
    return examples.dln_checkpoints([3, 2, 3], 1, steps=steps, num_examples=64)
"""

SPEC = """
[study]
name = "lazy"
problem = "jaxslt.study.examples:dln_problem"
problem_kwargs = {{ widths = [3, 2, 3], rank = 1, num_examples = 64 }}

[checkpoints]
entry_point = "entry:checkpoints"
kwargs = {{ steps = [0, 200], log = "{log}" }}

[settings]
num_chains = 2
num_draws = 30
num_burnin = 10
batch_size = 16
localization = 10.0

[grid]
step_size = [1e-4, 3e-4]
seed = [0, 1]
"""


def test_status_counts_declared_steps_without_calling_the_entry_point(tmp_path):
    log = tmp_path / "calls.log"
    (tmp_path / "entry.py").write_text(textwrap.dedent(ENTRY))
    spec = tmp_path / "lazy.toml"
    spec.write_text(SPEC.format(log=log))
    state = study.status(spec)
    assert (state.total, state.done, state.pending) == (8, 0, 8)
    assert not log.exists(), "status called the checkpoint entry point"
    assert study.run(spec, max_cells=3, progress=False).ran == 3
    calls = log.read_text().count("called")
    state = study.status(spec)
    assert (state.total, state.done, state.pending, state.failed) == (8, 3, 5, 0)
    assert log.read_text().count("called") == calls, "status called the checkpoint entry point"
    study.run(spec, progress=False)
    assert study.status(spec).done == 8
