"""The method is documented inside the project: citations point to docs/method.md by section;
and the documentation site (docs/ pages and the API reference generated from the docstrings)
builds with `mkdocs build --strict`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import jaxslt

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "method.md"
SUFFIXES = {".py", ".md", ".toml", ".txt"}
# citations of documents outside the repository (an old, unpublished reference file)
FORBIDDEN = re.compile(r"reference\s*(§|section\s*\d)|slt-estimation|shared/", re.IGNORECASE)
CITATION = re.compile(r"method\.md\s*§\s*(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{2,4}\s+§(\d+(?:\.\d+)*)\s", re.MULTILINE)


def _files(*roots: str) -> list[Path]:
    out = []
    for name in roots:
        path = ROOT / name
        if path.is_file():
            out.append(path)
        elif path.is_dir():
            out += [p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix in SUFFIXES]
    return out


SHIPPED = _files("jaxslt", "README.md", "docs", "benchmarks", "examples")
CITING = SHIPPED + [p for p in _files("tests") if p.name != Path(__file__).name]


def _sections() -> set[str]:
    return set(HEADING.findall(METHOD.read_text(encoding="utf-8")))


def test_method_document_has_numbered_sections():
    sections = _sections()
    assert {str(i) for i in range(1, 13)} <= sections, sorted(sections)
    assert {"3.1", "3.2", "3.3", "3.4", "3.5", "5.2", "5.3", "7.1", "7.2", "7.3"} <= sections


def test_the_scan_sees_the_package_the_readme_and_the_docs():
    names = {p.relative_to(ROOT).as_posix() for p in SHIPPED}
    assert {"README.md", "docs/trust.md", "jaxslt/kernels.py", "jaxslt/diagnostics.py"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_citation_of_files_outside_the_repository(path):
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        assert not FORBIDDEN.search(line), (
            f"{path.relative_to(ROOT)}:{number} cites a document outside the repository; cite "
            f"docs/method.md §N (or a paper) instead: {line.strip()}"
        )


def test_every_method_citation_names_an_existing_section():
    sections = _sections()
    cited = 0
    for path in CITING:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for section in CITATION.findall(line):
                cited += 1
                assert section in sections, (
                    f"{path.relative_to(ROOT)}:{number} cites docs/method.md §{section}, which "
                    f"does not exist (sections: {sorted(sections, key=_key)})"
                )
    assert cited >= 10  # the package and the docs cite it; a scan that finds nothing is broken


def _key(section: str) -> tuple[int, ...]:
    return tuple(int(x) for x in section.split("."))


def test_api_reference_builds(tmp_path):
    """`mkdocs build --strict` (mkdocs.yml: every docs/ page, and docs/api.md's mkdocstrings
    reference): no broken link, no docstring griffe cannot parse, every public name rendered."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    site = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    pages = {p.stem for p in (ROOT / "docs").glob("*.md")} - {"index"}
    assert (site / "index.html").is_file()
    for page in pages:  # every page is in the nav and was built
        assert (site / page / "index.html").is_file(), f"docs/{page}.md was not built"
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    names = jaxslt.__all__
    missing = [name for name in names if f'id="jaxslt.{name}"' not in api]
    assert not missing, f"docs/api.md does not render {missing}"
    # the Google-style Args: sections are parsed into parameter tables, not left as prose
    section = api[api.index('id="jaxslt.estimate_llc"') : api.index('id="jaxslt.LLCResult"')]
    assert "Parameters:" in section and "<code>step_size</code>" in section
