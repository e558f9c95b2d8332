"""The README's Python quickstart runs as written, and so does every `python` block of the docs
pages it links to: the "Any JAX model" blocks of docs/models.md each on its own, the others in
order after the quickstart (they use its names)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import jaxslt

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MODELS = DOCS / "models.md"
# the pages whose blocks run after the quickstart, in this order, with how many blocks each has
# at least (trust: the plots of the quickstart's result; devinterp: curves and stages; studies:
# an entry point and a study from Python)
IN_ORDER = {"trust.md": 1, "devinterp.md": 2, "studies.md": 2}
BLOCK = re.compile(r"```python\n(.*?)```", flags=re.S)
MAX_README_BYTES = 10_240  # a landing page; everything else lives under docs/


def _blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text(encoding="utf-8"))


def test_python_blocks_run_in_order(tmp_path, monkeypatch):
    quickstart = _blocks(README)
    assert len(quickstart) == 1, "the README's only Python block is its quickstart"
    monkeypatch.chdir(tmp_path)  # the examples write plot files and a study store
    namespace: dict = {}
    with warnings.catch_warnings():  # the Quickstart must run clean, as a newcomer runs it
        warnings.simplefilter("error", jaxslt.LLCWarning)
        exec(compile(quickstart[0], str(README), "exec"), namespace)
    assert namespace["result"].diagnostics.ok
    for name, least in IN_ORDER.items():
        blocks = _blocks(DOCS / name)
        assert len(blocks) >= least, f"docs/{name} lost its examples"
        for block in blocks:
            exec(compile(block, str(DOCS / name), "exec"), namespace)
        if name == "trust.md":  # the plots of the quickstart's estimate and its calibration
            assert (tmp_path / "llc.pdf").stat().st_size > 0
            assert (tmp_path / "calibration.png").exists()
    result = namespace["result"]  # the devinterp block's estimate with observables
    assert float(result.llc_mean) > 0 and not result.diverged.any()
    assert (tmp_path / "stages.png").exists()
    assert (tmp_path / "dln-memory.sqlite").exists()
    # the study example runs clean too: every cell passes its diagnostics
    table = namespace["table"]
    assert table["diagnostics_ok"].all(), table[["step", "step_size", "seed", "warnings"]]


def test_every_python_block_of_the_docs_is_run():
    """A page with `python` blocks that no test runs would rot silently (blocks that cannot run
    here, e.g. on many devices, use `py` fences: docs/scale.md)."""
    with_blocks = {p.name for p in DOCS.glob("*.md") if _blocks(p)}
    assert with_blocks == {*IN_ORDER, MODELS.name}


def test_readme_is_a_landing_page():
    size = len(README.read_bytes())
    assert size <= MAX_README_BYTES, f"README.md is {size} bytes; move detail to a docs/ page"


LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE = re.compile(r"```.*?```|`[^`\n]*`", flags=re.S)  # links inside code are not links


@pytest.mark.parametrize(
    "page", [README, *sorted(DOCS.glob("*.md"))], ids=lambda p: p.relative_to(ROOT).as_posix()
)
def test_relative_links_resolve(page):
    """Every relative link and image of the README and the docs pages names an existing file."""
    text = CODE.sub("", page.read_text(encoding="utf-8"))
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.is_file(), f"{page.relative_to(ROOT)} links to {target}, which is missing"


MODEL_BLOCKS = _blocks(MODELS)
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
    exec(compile(MODEL_BLOCKS[0], str(MODELS), "exec"), namespace)
    exec(compile(MODEL_BLOCKS[index], str(MODELS), "exec"), namespace)
    result = namespace["result"]
    assert np.isfinite(float(result.llc_mean)) and not result.diverged.any()
