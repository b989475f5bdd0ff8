"""The report answers its question first, and bolds only what is comparable: the verdict, the floor
line as drawn, costs split by measurement condition, trivially perfect and process-level cells.

Run folders come from the real writer (tiny smoke models on fake data, as in test_report.py): vae
seeds 0-2, gan seeds 0-2, flow seed 0, and a real-data floor for the group; known numbers are
written over the measured ones, never a label or a schema field.
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from conftest import fake_mnist
from test_report import FID, copy_run, md_table, real_run, set_fields, set_values

from genbench.bench import report
from genbench.bench.report import figures, tables
from genbench.bench.report.comparable import TRIVIAL_MARK
from genbench.bench.report.verdict import group_verdicts, render_verdict_markdown, welch_p
from genbench.core.files import read_json
from genbench.metrics import fidelity
from genbench.metrics.performance import PEAK_MEMORY, TRAIN_SPEED
from genbench.metrics.reconstruction import MSE

LATER = "2030-01-01T00:00:00+00:00"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("verdict") / "results"
        data = fake_mnist(n_train=256, n_val=64, n_test=256)
        for model in ("vae", "gan"):
            first = real_run(out, data, model, "a")
            for seed in (1, 2):
                copy_run(first, seed, LATER)
        real_run(out, data, "flow", "a", train={"epochs": 1})
        doc = fidelity.compute_floors(data, "mnist", 32, out / ".cache", "cpu", 0, allow_few_samples=True)
        doc["metrics"][FID.key]["value"] = 1.5
        fidelity.write_floors(out, doc)
    finally:
        torch.set_num_threads(threads)
    return out


def with_fids(results, tmp_path, fids: dict[str, list[float]]):
    """A copy of the results with each model's FID (default sample mode) per seed set."""
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    for model, values in fids.items():
        for seed, run in enumerate(sorted(copy.glob(f"{model}-smoke-s*"))):
            if seed < len(values):
                set_values(run, {FID.key: values[seed]})
            else:
                shutil.rmtree(run)  # fewer seeds
    return copy


def groups_of(path):
    return tables.build_tables(report.load_results(path))


def fid_verdict(path):
    group = groups_of(path)[0]
    return next(v for v in group_verdicts(group) if v.headline == "sample quality")


def test_verdict_names_the_better_mean_and_tests_it_against_seed_noise(results, tmp_path):
    apart = fid_verdict(
        with_fids(results, tmp_path / "a", {"gan": [5.0, 6.0, 7.0], "vae": [20.0, 21.0, 23.0]})
    )
    assert apart.better == "gan"  # FID: lower is better; swapping the direction names the vae
    assert apart.best.startswith("gan: 6.000 ± 1.000 (n=3)") and apart.next.startswith("vae")
    assert apart.margin.startswith("15.33")
    assert apart.noise.startswith("yes (Welch t-test")
    overlap = fid_verdict(
        with_fids(results, tmp_path / "b", {"gan": [5.0, 9.0, 13.0], "vae": [6.0, 10.0, 15.0]})
    )
    assert overlap.better == "gan" and overlap.noise.startswith("no: within seed noise")
    few = fid_verdict(with_fids(results, tmp_path / "c", {"gan": [5.0, 6.0], "vae": [20.0, 21.0, 23.0]}))
    assert few.noise.startswith("n too small")


def test_welch_p_value():
    # t = -3 / sqrt(1/3 + 1/3) = -3.674 on 4 degrees of freedom: two-sided p = 0.02131
    assert math.isclose(welch_p([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]), 0.021311641128756, rel_tol=1e-9)
    # Unequal variances (1 and 13): t = -5 / sqrt(14/3) = -2.3146 on Welch-Satterthwaite
    # df = (14/3)^2 / ((1/3)^2/2 + (13/3)^2/2) = 2.3059; p = I_{df/(df+t^2)}(df/2, 1/2) = 0.12977
    # (a pooled-variance test would give 0.0816)
    assert math.isclose(welch_p([1.0, 2.0, 3.0], [4.0, 6.0, 11.0]), 0.12976650672133122, rel_tol=1e-9)
    assert welch_p([1.0, 1.0, 1.0], [2.0, 2.0, 2.0]) == 0.0  # no spread, different means


def test_verdict_comes_first_in_summary_md_and_states_its_rule(results, tmp_path):
    report.make_report(results, tmp_path / "out", formats=("md",), figures=False)
    text = (tmp_path / "out" / "summary.md").read_text()
    assert text.index("## Verdict") < text.index("## Tables") < text.index("**Sample quality**")
    assert "Welch's two-sided t-test" in text and render_verdict_markdown(groups_of(results)) in text


def test_floor_line_is_the_real_data_floor_never_a_published_row(results):
    """The likelihood panel has published rows but no real-data floor: no dashed line. The FID panel
    draws its floor at the floor's value, read from the drawn figure."""
    group = groups_of(results)[0]
    colours = figures.palette(["flow", "gan", "vae"])
    likelihood = figures.plot_metric_bars(group.name, group.section("likelihood"), colours)
    assert any(r.published for r in group.section("likelihood").rows)  # the published rows exist
    assert all(lines == () for lines in likelihood.dashed.values())
    assert "dashed" not in likelihood.caption
    quality = figures.plot_metric_bars(group.name, group.section("quality"), colours)
    assert quality.dashed[FID.label] == (1.5,) and "dashed line is the real-data floor" in quality.caption
    speed = figures.plot_quality_speed(group, colours)
    assert set(speed.dashed.values()) == {(1.5,)}


def test_invertible_reconstruction_and_process_memory_are_never_bold(results):
    markdown = report.render_markdown(groups_of(results))
    likelihood = md_table(markdown, groups_of(results)[0].name, "Likelihood and reconstruction")
    mse = next(h for h in likelihood.columns if h.startswith(MSE.label))
    assert likelihood.loc["flow", mse].endswith(TRIVIAL_MARK) and "**" not in likelihood.loc["flow", mse]
    assert read_json(next(results.glob("flow-*/metrics.json")))["metrics"][MSE.key]["value"] < 1e-4
    cost = md_table(markdown, groups_of(results)[0].name, "Cost")
    memory = next(h for h in cost.columns if h.startswith(PEAK_MEMORY.label))
    assert memory == f"{PEAK_MEMORY.label} (process RSS, MiB)"  # the CPU's RSS: labelled, no arrow
    assert not any("**" in v for v in cost[memory])


def test_costs_measured_under_different_conditions_are_not_averaged(results, tmp_path):
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    for run in copy.glob("*-smoke-s1-*"):
        # as bench.engine.threads records it
        busy = {"threads": 1, "usable": 2, "busy": 0.99, "reason": "load"}
        set_fields(run / "config.json", threads=busy)
    group = groups_of(copy)[0]
    cost = group.section("cost")
    speed = cost.columns.index(next(c for c in cost.columns if c.key == TRAIN_SPEED.key))
    vae = [r for r in cost.rows if r.model == "vae" and r.variant in (None, "decoder mean")]
    assert sorted(r.n for r in vae) == [1, 2] and all(r.condition for r in vae)
    busy = next(r for r in vae if "others busy at start" in r.condition)
    assert busy.seeds == (1,) and busy.cells[speed].std is None  # one run: nothing averaged across
    assert group.section("quality").row("vae", "decoder mean").n == 3  # quality still averages
    for condition in {r.condition for r in cost.rows}:  # bold compares the rows of one condition
        rows = [r for r in cost.rows if r.condition == condition]
        fastest = max(r.cells[speed].mean for r in rows)
        assert {r.label for r in rows if r.cells[speed].best} == {
            r.label for r in rows if r.cells[speed].mean == fastest
        }
