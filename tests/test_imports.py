"""What ``import jaxslt`` loads: nothing heavy until it is used (issue 14: start-up took 8 s)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import jaxslt

HEAVY = ("jax", "blackjax", "optax", "flax", "pandas", "scipy", "arviz", "matplotlib", "orbax",
         "ray", "tqdm")  # fmt: skip


def _loaded_after(code: str) -> list[str]:
    """The HEAVY packages in sys.modules after running ``code`` in a fresh interpreter."""
    script = textwrap.dedent(code) + textwrap.dedent(
        f"""
        import json, sys
        print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
        """
    )
    root = Path(jaxslt.__file__).resolve().parents[1]  # this checkout's jaxslt
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=root)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_jaxslt_loads_no_heavy_package():
    assert _loaded_after("import jaxslt") == []


def test_estimate_llc_loads_jax_but_not_plotting_tables_checkpoints_or_ray():
    loaded = _loaded_after("from jaxslt import estimate_llc")
    assert "jax" in loaded
    assert not {"pandas", "scipy", "arviz", "matplotlib", "orbax", "ray", "blackjax"} & set(loaded)


def test_study_status_path_loads_no_plotting_or_checkpoint_library():
    loaded = _loaded_after("import jaxslt.study")
    assert not {"matplotlib", "arviz", "orbax", "ray"} & set(loaded)


@pytest.mark.parametrize("name", jaxslt.__all__)
def test_every_public_name_is_reachable(name):
    assert getattr(jaxslt, name) is not None
    assert name in dir(jaxslt)


def test_submodules_are_attributes_and_unknown_names_raise():
    for module in ("plots", "study", "checkpoints", "stages", "gibbs", "problems", "truth"):
        assert getattr(jaxslt, module).__name__ == f"jaxslt.{module}"
    assert jaxslt.estimate_llc is jaxslt.estimator.estimate_llc
    with pytest.raises(AttributeError, match="no attribute 'estimate'"):
        jaxslt.estimate  # noqa: B018
