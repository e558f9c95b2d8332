"""The README's Python quickstart runs as written, and so does each "Any JAX model" block."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import jaxslt

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"```python\n(.*?)```", flags=re.S)


def _sections() -> tuple[str, str]:
    """The README without its "Any JAX model" section, and that section."""
    text = README.read_text()
    start = text.index("\n## Any JAX model\n")
    end = text.index("\n## ", start + 1)
    return text[:start] + text[end:], text[start:end]


def test_python_blocks_run_in_order(tmp_path, monkeypatch):
    blocks = BLOCK.findall(_sections()[0])
    assert len(blocks) >= 2, "README lost its quickstart or its diagnostics example"
    monkeypatch.chdir(tmp_path)  # the examples write plot files
    namespace: dict = {}
    with warnings.catch_warnings():  # the Quickstart must run clean, as a newcomer runs it
        warnings.simplefilter("error", jaxslt.LLCWarning)
        exec(compile(blocks[0], str(README), "exec"), namespace)
    assert namespace["result"].diagnostics.ok
    for block in blocks[1:]:
        exec(compile(block, str(README), "exec"), namespace)
    result = namespace["result"]
    assert float(result.llc_mean) > 0 and not result.diverged.any()
    assert (tmp_path / "llc.pdf").stat().st_size > 0 and (tmp_path / "calibration.png").exists()


MODEL_BLOCKS = BLOCK.findall(_sections()[1])
LIBRARIES = ["equinox", "haiku", "flax.linen", "nnx", "NamedTuple"]


def test_every_library_has_a_block():
    assert len(MODEL_BLOCKS) == 1 + len(LIBRARIES)
    for block, library in zip(MODEL_BLOCKS[1:], LIBRARIES, strict=True):
        assert library in block


@pytest.mark.filterwarnings("ignore::jaxslt.LLCWarning")  # the blocks measure untrained models
@pytest.mark.parametrize("index", range(1, len(MODEL_BLOCKS)), ids=LIBRARIES)
def test_any_jax_model_block_runs(index):
    pytest.importorskip({"equinox": "equinox", "haiku": "haiku"}.get(LIBRARIES[index - 1], "jax"))
    namespace: dict = {}
    exec(compile(MODEL_BLOCKS[0], str(README), "exec"), namespace)
    exec(compile(MODEL_BLOCKS[index], str(README), "exec"), namespace)
    result = namespace["result"]
    assert np.isfinite(float(result.llc_mean)) and not result.diverged.any()
