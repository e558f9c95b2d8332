"""The README's Python quickstart runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_blocks_run_in_order(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2, "README lost its quickstart or its diagnostics example"
    monkeypatch.chdir(tmp_path)  # the examples write plot files
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    result = namespace["result"]
    assert float(result.llc_mean) > 0 and not result.diverged.any()
    assert (tmp_path / "llc.pdf").stat().st_size > 0 and (tmp_path / "calibration.png").exists()
