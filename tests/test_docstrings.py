"""The docstrings are part of the API (issue 17): their examples run and print what they show;
the public functions and classes document their arguments (``Args:``) or fields
(``Attributes:``) in Google style, one entry per parameter; every module declares ``__all__``.

The examples run here, under the ordinary ``pytest`` command (one test per module, so
``-n 2`` spreads them), with every warning recorded: an example that warns (an ``LLCWarning``
on a tiny run, a ``StagesWarning``) fails, since its warning would clutter what it shows.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import inspect
import re
import warnings
from pathlib import Path

import pytest

import jaxslt

# Found from the source files, so that collecting this file imports no submodule (matplotlib,
# Ray, ... come in only with the tests that use them).
PACKAGE = Path(jaxslt.__file__).resolve().parent
FILES = {
    ".".join(("jaxslt", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(
        ".__init__"
    ): path
    for path in sorted(PACKAGE.rglob("*.py"))
}
MODULES = sorted(FILES)


def _source(name: str) -> str:
    return FILES[name].read_text(encoding="utf-8")


def _all(name: str) -> list[str]:
    """The module's ``__all__``, read from its source."""
    for node in ast.parse(_source(name)).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    return []


WITH_EXAMPLES = [name for name in MODULES if re.search(r"^\s*>>> ", _source(name), re.M)]

# the main entry points, each with an ``Examples:`` section that runs
ENTRY_POINTS = (
    "estimate_llc", "sample_llc", "SamplingConfig", "calibrate", "llc_trajectory",
    "detect_stages", "diagnose", "localized_posterior", "make_restriction", "tree_paths",
    "run_chains", "register_sampler", "default_nbeta",
)  # fmt: skip

# the modules whose public names (their ``__all__``) are held to the same docstring standard
# as ``jaxslt.__all__``
DOCUMENTED_MODULES = ("plots", "stages", "truth", "problems", "checkpoints", "gibbs", "study")

# classes without an ``Args:``/``Attributes:`` section, and why
NO_ARGUMENTS = {
    "jaxslt.LLCWarning": "a warning category: raised with a message, no fields of its own",
    "jaxslt.stages.StagesWarning": "a warning category: raised with a message",
    "jaxslt.study.EntryPointError": "an exception raised with a message (the traceback in it)",
    "jaxslt.study.StoreError": "an exception raised with a one-line message",
}


def _examples(module) -> list[doctest.DocTest]:
    """The module's doctests, each docstring once (``sample_llc_jit`` shares
    ``sample_llc``'s)."""
    tests, seen = [], set()
    for test in sorted(doctest.DocTestFinder().find(module), key=lambda t: t.name):
        if test.examples and test.docstring not in seen:
            seen.add(test.docstring)
            tests.append(test)
    return tests


def test_the_modules_with_examples_include_the_entry_points():
    assert {"jaxslt.core", "jaxslt.estimator", "jaxslt.calibration", "jaxslt.truth"} <= set(
        WITH_EXAMPLES
    )


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    tests = _examples(module)
    assert tests, f"{name} has '>>>' lines but no doctest was found"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for test in tests:
            runner.run(test, out=report.append)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, "".join(report)
    shown = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught]
    assert not shown, "examples must not warn (use settings that pass, or diagnostics=False):\n" + (
        "\n".join(shown)
    )


# ---------------------------------------------------------------------------------------------
# Google-style sections


def _section(doc: str, title: str) -> list[str] | None:
    """The entry names of section ``title`` (``Args``, ``Attributes``) of a docstring: the
    lines at the first entry's indentation, up to the first line indented less."""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == f"{title}:":
            indent, names = None, []
            for entry in lines[i + 1 :]:
                if not entry.strip():
                    continue
                depth = len(entry) - len(entry.lstrip())
                if indent is None:
                    indent = depth
                if depth < indent or depth <= len(line) - len(line.lstrip()):
                    break
                if depth == indent:
                    match = re.match(r"(\*{0,2}\w+)(?: \([^)]*\))?:", entry.strip())
                    assert match, f"section {title}: cannot read the entry {entry.strip()!r}"
                    names.append(match.group(1))
            return names
    return None


# every public name: (module, name); constants and submodules are skipped in the test
PUBLIC = [("jaxslt", n) for n in jaxslt.__all__] + [
    (f"jaxslt.{module}", n) for module in DOCUMENTED_MODULES for n in _all(f"jaxslt.{module}")
]


def _parameters(obj) -> list[str]:
    out = []
    for p in inspect.signature(obj).parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            out.append(f"*{p.name}")
        elif p.kind is p.VAR_KEYWORD:
            out.append(f"**{p.name}")
        else:
            out.append(p.name)
    return out


def _fields(cls) -> list[str]:
    if hasattr(cls, "_fields"):  # NamedTuple
        return list(cls._fields)
    if hasattr(cls, "__dataclass_fields__"):
        return list(cls.__dataclass_fields__)
    return []


@pytest.mark.parametrize("module, attr", PUBLIC, ids=[f"{m}.{n}" for m, n in PUBLIC])
def test_public_docstrings_have_google_sections(module, attr):
    name, obj = f"{module}.{attr}", getattr(importlib.import_module(module), attr)
    if inspect.ismodule(obj) or not (inspect.isclass(obj) or callable(obj)):
        return  # a submodule or a constant: documented where it is defined
    doc = inspect.getdoc(obj) or ""
    assert doc.strip(), f"{name} has no docstring"
    if name in NO_ARGUMENTS:
        return
    first = doc.split("\n\n", 1)[0]
    assert not re.match(r"(Args|Attributes|Returns|Examples?):", first), (
        f"{name}: the docstring must open with what it is (the math), not a section"
    )
    args, attributes = _section(doc, "Args"), _section(doc, "Attributes")
    assert args is not None or attributes is not None, f"{name}: no Args: or Attributes: section"
    if inspect.isclass(obj) and attributes is not None:
        missing = [f for f in _fields(obj) if f not in attributes]
        assert not missing, f"{name}: fields without an Attributes entry: {missing}"
        known = {*_fields(obj), *_parameters(obj)}  # instance attributes set from __init__
        unknown = [a for a in attributes if not hasattr(obj, a) and a not in known]
        assert not unknown, f"{name}: Attributes entries that are not attributes: {unknown}"
    if args is not None:
        params = [p for p in _parameters(obj) if p != "self"]
        assert len(args) == len(set(args)), f"{name}: an Args entry appears twice: {args}"
        assert sorted(args) == sorted(params), (
            f"{name}: Args entries {args} must be the parameters {params}, one entry each"
        )
    if not inspect.isclass(obj):
        returns = inspect.signature(obj).return_annotation
        if returns not in (None, "None", inspect.Signature.empty):
            assert re.search(r"^(Returns|Yields):$", doc, re.M), f"{name}: no Returns: section"


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_entry_points_have_runnable_examples(name):
    doc = inspect.getdoc(getattr(jaxslt, name))
    assert re.search(r"^Examples:\n(\s+.*\n)*?\s+>>> ", doc, re.M), (
        f"jaxslt.{name} needs an Examples: section with '>>>' lines"
    )


@pytest.mark.parametrize("name", MODULES)
def test_every_module_declares_all(name):
    module = importlib.import_module(name)
    assert isinstance(getattr(module, "__all__", None), list), f"{name} has no __all__ list"
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what the module does not define: {missing}"
    private = [n for n in module.__all__ if n.startswith("_")]
    assert not private, f"{name}.__all__ lists private names: {private}"
