"""jaxslt.plots: every plot renders headless to png and pdf, survives NaN (diverged chains),
leaves no pyplot figure open and never touches the global backend."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import pkgutil
import sys
from types import SimpleNamespace

import jax
import matplotlib
import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from conftest import dummy_data, quadratic_loss, quadratic_params
from matplotlib.figure import Figure

import jaxslt
from jaxslt import plots
from jaxslt.stages import detect_stages

FORMATS = ("png", "pdf")


@pytest.fixture(scope="module")
def real_result():
    return jaxslt.estimate_llc(
        quadratic_loss,
        quadratic_params(),
        dummy_data(),
        key=jax.random.key(0),
        step_size=1e-3,
        nbeta=100.0,
        localization=1.0,
        num_chains=3,
        num_draws=300,
        num_burnin=100,
        batch_size=16,
    )


def _synthetic_result(num_chains=4, num_draws=400, num_burnin=150, diverge_chain=2, at=350):
    """An LLCResult built by hand: chain ``diverge_chain`` blows up and is NaN from step ``at``
    (a global step: burn-in steps first, then draws), as the runner would report it."""
    rng = np.random.default_rng(0)
    init_loss, nbeta = 0.5, 200.0
    steps = num_burnin + num_draws
    full = init_loss + 0.01 * (1 + rng.standard_normal((num_chains, steps)) ** 2)
    diverged = np.zeros(num_chains, bool)
    divergence_step = np.full(num_chains, -1, np.int32)
    if diverge_chain is not None:
        full[diverge_chain, at - 20 : at] = np.geomspace(1.0, 1e30, 20)
        full[diverge_chain, at] = np.inf
        full[diverge_chain, at + 1 :] = np.nan
        diverged[diverge_chain] = True
        divergence_step[diverge_chain] = at
    burnin, loss = full[:, :num_burnin], full[:, num_burnin:]
    per_chain = nbeta * (loss.mean(axis=1) - init_loss)
    per_chain[diverged] = np.nan
    healthy = per_chain[~diverged]
    return jaxslt.LLCResult(
        llc_mean=np.asarray(healthy.mean()),
        llc_std=np.asarray(healthy.std(ddof=1)),
        llc_per_chain=per_chain,
        loss_trace=loss.astype(np.float32),
        burnin_loss_trace=burnin.astype(np.float32),
        init_loss=np.asarray(init_loss, np.float32),
        nbeta=np.asarray(nbeta, np.float32),
        localization=np.asarray(10.0, np.float32),
        step_size=np.asarray(1e-4, np.float32),
        diverged=diverged,
        divergence_step=divergence_step,
        accept_rate=np.full(num_chains, np.nan, np.float32),
        mala_accept=np.where(diverged, np.nan, 0.9).astype(np.float32),
    )


def _calibration_table(extrapolated=True, nbeta=True):
    rows = []
    for gamma, lam0 in ((1.0, 3.0), (10.0, 2.8)):
        for eps, slope, accept in ((1e-4, 0.1, 0.97), (1e-3, 0.4, 0.9), (1e-2, 2.0, 0.6)):
            rows.append(
                {
                    "step_size": eps,
                    "localization": gamma,
                    "llc_mean": lam0 + slope,
                    "llc_std": 0.1 + slope / 10,
                    "mala_accept": accept,
                    "diverged": 1 if eps == 1e-2 and gamma == 1.0 else 0,
                    "ok": accept >= 0.8,
                    "selected": eps == 1e-3 and gamma == 1.0,
                }
            )
    table = pd.DataFrame(rows)
    if nbeta:
        table["nbeta"] = 1085.7
    if extrapolated:
        table["extrapolated"] = table.localization.map({1.0: 2.95, 10.0: 2.75})
        table["extrapolated_std"] = 0.05
    return table


def _check_file(path, figsize, *, min_bytes=5_000):
    assert path.exists(), path
    assert path.stat().st_size > min_bytes, (path, path.stat().st_size)
    if path.suffix == ".png":
        image = matplotlib.image.imread(path)
        assert image.shape[:2] == (round(figsize[1] * plots.DPI), round(figsize[0] * plots.DPI))
        assert image[..., :3].std() > 0.05  # not a blank page
    else:
        assert path.read_bytes()[:5] == b"%PDF-"


@pytest.fixture(autouse=True)
def _no_global_side_effects():
    backend = matplotlib.get_backend()
    yield
    assert matplotlib.get_backend() == backend
    if "matplotlib.pyplot" in sys.modules:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []


def test_plot_trace(real_result, tmp_path):
    path = tmp_path / "trace.png"
    out = plots.plot_trace(real_result, true_llc=1.5, title="quadratic toy", path=str(path))
    assert isinstance(out, Figure)
    _check_file(path, plots.TRACE_FIGSIZE)


@pytest.mark.parametrize("fmt", FORMATS)
def test_plot_trace_diverged_chain(tmp_path, fmt):
    result = _synthetic_result()
    path = tmp_path / "out" / f"trace_div.{fmt}"
    plots.plot_trace(result, true_llc=4.0, path=path)
    _check_file(path, plots.TRACE_FIGSIZE)


@pytest.mark.parametrize("fmt", FORMATS)
def test_plot_calibration(tmp_path, fmt):
    path = tmp_path / f"cal.{fmt}"
    plots.plot_calibration(_calibration_table(), true_llc=3.0, path=path)
    _check_file(path, plots.CALIBRATION_FIGSIZE)


def test_plot_calibration_degenerate_tables(tmp_path):
    table = _calibration_table(extrapolated=False, nbeta=False)
    # a single cell: one step size, one localization, no acceptance recorded
    one_cell = table.iloc[[1]].assign(mala_accept=np.nan)
    plots.plot_calibration(one_cell, path=tmp_path / "one.png")
    _check_file(tmp_path / "one.png", plots.CALIBRATION_FIGSIZE)
    # one localization, no recommendation, a NaN acceptance and a cell without an estimate,
    # under an nβ grid (one line per (nβ, γ))
    one_gamma = table[table.localization == 10.0].assign(selected=False)
    one_gamma.loc[one_gamma.index[0], "mala_accept"] = np.nan
    one_gamma.loc[one_gamma.index[1], ["llc_mean", "llc_std"]] = np.nan  # all chains diverged
    grid = pd.concat([one_gamma.assign(nbeta=100.0), one_gamma.assign(nbeta=1000.0)])
    path = tmp_path / "grid.png"
    plots.plot_calibration(grid, path=path)
    _check_file(path, plots.CALIBRATION_FIGSIZE)


def test_plot_calibration_rejects_bad_tables(tmp_path):
    with pytest.raises(ValueError, match="lacks column"):
        plots.plot_calibration(_calibration_table().drop(columns="ok"), path=tmp_path / "x.png")
    with pytest.raises(ValueError, match="positive"):
        plots.plot_calibration(_calibration_table().assign(step_size=0.0), path=tmp_path / "x.png")
    with pytest.raises(ValueError, match="empty"):
        plots.plot_calibration(_calibration_table().iloc[:0], path=tmp_path / "x.png")


def test_plot_summary(real_result, tmp_path):
    diagnostics = SimpleNamespace(
        rhat=1.004, ess_bulk=512.0, ok=False, warnings=("bulk ESS 80 < 100: " + "run longer " * 20,)
    )
    path = tmp_path / "summary.png"
    plots.plot_summary(real_result, diagnostics=diagnostics, true_llc=1.5, path=path)
    _check_file(path, plots.SUMMARY_FIGSIZE)


def test_summary_text_of_real_diagnostics(real_result):
    # the text block plot_summary draws for jaxslt.diagnostics.Diagnostics (rendering is
    # covered above with a stand-in object of the same shape): a real Diagnostics, once with
    # its warnings cleared and once with two known ones, so that both branches are checked
    module = pytest.importorskip("jaxslt.diagnostics")
    diagnostics = module.diagnose(real_result)
    lines_of = plots.diagnostics_lines
    clean = dataclasses.replace(diagnostics, issues=())
    header = f"OK  ·  R-hat {clean.rhat:.3f}  ·  bulk ESS {clean.ess_bulk:.0f}"
    assert lines_of(clean, width=105) == [header, "no warnings"]
    long_warning = "trace still rising: " + "run longer " * 20
    issues = (
        module.Issue(module.RHAT, "R-hat 1.2 > 1.01", "run longer"),
        module.Issue(module.TREND_RISING, long_warning, "run longer"),
    )
    warned = dataclasses.replace(diagnostics, issues=issues)
    lines = lines_of(warned, width=105)
    assert lines[0] == header.replace("OK", "NOT OK", 1)
    assert lines[1] == "• R-hat 1.2 > 1.01"
    assert lines[2].startswith("• trace still rising") and len(lines) == 5  # 240 chars: 3 lines
    assert all(line.startswith("  ") for line in lines[3:])
    assert " ".join(line[2:] for line in lines[2:]) == long_warning.strip()
    assert all(len(line) <= 105 for line in lines)


@pytest.mark.parametrize("fmt", FORMATS)
def test_plot_summary_diverged(tmp_path, fmt):
    # pdf: 20 chains (one legend entry for all, a histogram of the per-chain estimates), one
    # diverging during burn-in; diagnostics without .warnings are shown as their str()
    result = _synthetic_result(num_chains=20, at=40) if fmt == "pdf" else _synthetic_result()
    path = tmp_path / f"s.{fmt}"
    plots.plot_summary(result, diagnostics="R-hat fine\nall good", path=path)
    _check_file(path, plots.SUMMARY_FIGSIZE)


def test_bad_suffix_and_batched_result(real_result, tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        plots.plot_trace(real_result, path=tmp_path / "trace.jpg2")
    batched = jax.tree.map(lambda a: np.stack([np.asarray(a)] * 2), real_result)
    with pytest.raises(ValueError, match="batched"):
        plots.plot_summary(batched, path=tmp_path / "s.png")


def test_plots_never_import_pyplot():
    modules = [plots, *(importlib.import_module(f"jaxslt.plots.{m.name}")
                        for m in pkgutil.iter_modules(plots.__path__))]  # fmt: skip
    assert {m.__name__.rsplit(".", 1)[-1] for m in modules} >= {
        "plots", "common", "trace", "calibration", "stages", "trajectory"
    }  # fmt: skip
    for module in modules:
        tree = ast.parse(inspect.getsource(module))
        imported = [
            name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for name in [getattr(node, "module", None) or "", *(a.name for a in node.names)]
        ]
        assert not [name for name in imported if "pyplot" in name], module.__name__


# ---------------------------------------------------------------------------------------------
# one output convention; plot_trajectory; long burn-in


def test_every_plot_returns_a_figure_and_writes_only_when_given_a_path(
    real_result, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    steps = np.geomspace(10.0, 1e4, 12)
    llc = np.linspace(1.0, 5.0, 12)
    table = pd.DataFrame({"step": steps, "llc_mean": llc, "llc_std": 0.1})
    calls = {
        "trace": lambda p: plots.plot_trace(real_result, path=p),
        "calibration": lambda p: plots.plot_calibration(_calibration_table(), path=p),
        "summary": lambda p: plots.plot_summary(real_result, path=p),
        "stages": lambda p: plots.plot_stages(
            steps, llc, detect_stages(steps, llc, llc_std=0.1), path=p
        ),
        "trajectory": lambda p: plots.plot_trajectory(table, path=p),
    }
    for name, call in calls.items():
        assert isinstance(call(None), Figure), name
        assert list(tmp_path.iterdir()) == [], name  # nothing written without a path
        out = tmp_path / f"{name}.png"
        assert isinstance(call(out), Figure), name
        assert out.stat().st_size > 5_000, name
        out.unlink()


def test_path_is_keyword_only_and_the_old_positional_form_warns(real_result, tmp_path):
    """The file is ``path=`` everywhere; ``plot_trace(result, "f.png")`` (the form before the
    convention, still in old scripts) writes it too, with a DeprecationWarning."""
    for plot in (plots.plot_trace, plots.plot_calibration, plots.plot_summary,
                 plots.plot_stages, plots.plot_trajectory):  # fmt: skip
        parameter = inspect.signature(plot).parameters["path"]
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.default is None
    with pytest.warns(DeprecationWarning, match=r"plot_trace\(data, path\) is deprecated"):
        fig = plots.plot_trace(real_result, tmp_path / "old.png", title="old form")
    assert isinstance(fig, Figure) and (tmp_path / "old.png").stat().st_size > 5_000
    with pytest.warns(DeprecationWarning, match="plot_calibration"):
        plots.plot_calibration(_calibration_table(), tmp_path / "cal.pdf")
    assert (tmp_path / "cal.pdf").read_bytes()[:5] == b"%PDF-"
    with pytest.raises(TypeError):  # the file given twice
        plots.plot_summary(real_result, tmp_path / "a.png", path=tmp_path / "b.png")


def test_save_figure_writes_and_keeps_the_figure_usable(real_result, tmp_path):
    fig = plots.plot_trace(real_result)
    written = plots.save_figure(fig, tmp_path / "sub" / "trace.svg")
    assert written == tmp_path / "sub" / "trace.svg"
    assert "<svg" in written.read_text()
    fig.axes[0].set_title("added after writing")  # not closed: add to it and write again
    _check_file(plots.save_figure(fig, tmp_path / "again.png"), plots.TRACE_FIGSIZE)
    with pytest.raises(ValueError, match="suffix"):
        plots.save_figure(fig, tmp_path / "trace.jpg2")


def _trajectory_table():
    """16 checkpoints over 4 decades and a step 0 whose λ̂ = −250 (w* not yet a minimum)."""
    steps = np.r_[0, np.geomspace(10, 1e4, 15).round()]
    rng = np.random.default_rng(0)
    x = np.log10(np.maximum(steps, 1.0))
    llc = np.interp(x, [0, 1, 2.5, 3.2, 4], [-250, 5, 40, 60, 45]) + rng.normal(0, 2, steps.size)
    ok = np.ones(steps.size, bool)
    ok[[0, 13]] = False
    return pd.DataFrame(
        {
            "step": steps,
            "llc_mean": llc,
            "llc_std": 4.0,
            "init_loss": 2.3 * np.exp(-steps / 800) + 0.05,
            "ok": ok,
        }
    )


def test_plot_trajectory(tmp_path):
    table = _trajectory_table()
    stages = detect_stages(table.step, table.llc_mean, llc_std=2.0)
    fig = plots.plot_trajectory(table, stages=stages, path=tmp_path / "t.png")
    _check_file(tmp_path / "t.png", plots.TRAJECTORY_FIGSIZE)
    ax, ax_loss = fig.axes
    assert ax.get_xscale() == "symlog"  # 4 decades and a step 0
    assert ax_loss.get_yscale() == "log"  # the loss spans 1.7 decades
    # robust limits: the −250 outlier is outside, every other point ± std inside
    lo, hi = ax.get_ylim()
    rest = table.iloc[1:]
    assert lo > -250 and lo <= (rest.llc_mean - rest.llc_std).min() and hi >= rest.llc_mean.max()
    texts = [t.get_text() for t in ax.texts]
    assert any(t.startswith("-250") and "failed" in t for t in texts), texts
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("failed diagnostics (2 of 16" in t for t in legend), legend
    # a linear axis when the steps span less than two decades; no loss column, no twin axis
    short = pd.DataFrame({"step": np.arange(1, 11) * 100.0, "llc_mean": np.arange(10.0)})
    fig = plots.plot_trajectory(short)
    assert len(fig.axes) == 1 and fig.axes[0].get_xscale() == "linear"
    with pytest.raises(ValueError, match="llc_mean"):
        plots.plot_trajectory(pd.DataFrame({"step": [1, 2]}))


def test_robust_limits():
    values = np.r_[np.linspace(0.0, 10.0, 20), -250.0]
    lo, hi = plots.robust_limits(values)
    assert -250 < lo <= 0.0 and hi >= 10.0
    # without outliers they are the padded range
    assert plots.robust_limits(np.linspace(0.0, 10.0, 20)) == pytest.approx((-0.8, 10.8))
    assert plots.robust_limits(np.array([np.nan])) is None


def test_trace_long_burnin_gets_its_own_panel():
    """6000 burn-in steps before 400 draws: the kept draws fill the main axes (they used to
    fill the last 6% of a shared axis); the burn-in has a narrow panel of its own."""
    result = _synthetic_result(num_draws=400, num_burnin=6000, diverge_chain=None)
    fig = plots.plot_trace(result)
    ax_burn, ax_loss, ax_llc = (a for a in fig.axes if a.axison)
    assert ax_burn.get_xlim() == pytest.approx((-0.5, 5999.5))
    assert ax_loss.get_xlim() == pytest.approx((5999.5, 6399.5))
    assert ax_llc.get_xlim() == ax_loss.get_xlim()
    # a short burn-in stays on the shared axis, shaded
    fig = plots.plot_trace(_synthetic_result(diverge_chain=None))
    assert len([a for a in fig.axes if a.axison]) == 2


def test_summary_long_burnin_gets_its_own_panel():
    result = _synthetic_result(num_draws=400, num_burnin=6000, diverge_chain=None)
    fig = plots.plot_summary(result)
    titled = [a for a in fig.axes if a.get_title(loc="left") == "burn-in"]
    assert len(titled) == 1 and titled[0].get_xlim() == pytest.approx((-0.5, 5999.5))
