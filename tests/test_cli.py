"""The ``jaxslt demo`` command line: a real (small) run, argument errors, ``python -m``."""

import re
import subprocess
import sys

import pytest

from jaxslt import cli


def test_demo_runs_and_reports_estimate_and_truth(capsys):
    rc = cli.main(["demo", "--draws", "300", "--burnin", "200", "--num-examples", "2000"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "6→4→4→6 (64 parameters), teacher rank 2" in out
    match = re.search(r"^estimated LLC: (\S+) ± (\S+)$", out, re.MULTILINE)
    assert match, out
    estimate, spread = float(match.group(1)), float(match.group(2))
    assert 0 < estimate < 100 and spread >= 0  # finite and sane; accuracy is tested elsewhere
    # Default widths 6,4,4,6 with teacher rank 2: Aoyagi's λ = 12.
    assert re.search(r"^true LLC \(Aoyagi 2024\): 12 = 12\.000, multiplicity 1;", out, re.M), out
    assert "draws: 300 kept per chain after 200 burn-in steps" in out


@pytest.mark.filterwarnings("error::jaxslt.LLCWarning")
def test_the_demo_as_a_newcomer_runs_it_is_clean(capsys):
    """`jaxslt demo` with its defaults, as the README says: no warning a user would act on."""
    assert cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "diagnostics: ok" in out, out


def test_bad_widths_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", "--widths", "6,x"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--widths" in err and "6,x" in err


def test_negative_step_size_exit_2_naming_step_size(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", "--step-size", "-1", "--num-examples", "10", "--batch-size", "5"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "jaxslt demo: error: step_size must be > 0" in err


def test_missing_command_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2


def test_python_m_help():
    proc = subprocess.run(
        [sys.executable, "-m", "jaxslt.cli", "demo", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: jaxslt demo" in proc.stdout
    for option in ("--widths", "--step-size", "--draws", "--burnin", "--num-examples"):
        assert option in proc.stdout
