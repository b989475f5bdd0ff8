"""bench report on small synthetic run folders (tests/fake_results.py): grouping, marking, outputs.

One report is rendered per module (plotting is the cost); the other tests read its outputs or call
the pure functions directly.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from genbench.bench import report
from genbench.core.errors import UserError

try:  # run as the package "tests" (python -m pytest from the root) or with tests/ on sys.path (pytest)
    from tests import fake_results as fake
except ImportError:
    import fake_results as fake

# Group "quick-cpu": vae x 3 seeds, gan x 2 seeds. FID: gan lower (better); IS: vae higher (better).
VAE = [
    {
        "nll_nats": 90.0 + s,
        "bpd": 0.17,
        "fid_mnist": fid,
        "is_mnist": 9.0,
        "train_images_per_s": 2000.0,
        "sample_images_per_s": 9e4,
        "parameters": 4e5,
    }
    for s, fid in enumerate((10.0, 12.0, 14.0))
]
GAN = [
    {
        "fid_mnist": fid,
        "is_mnist": 8.0,
        "train_images_per_s": 700.0,
        "sample_images_per_s": 6e4,
        "parameters": 1e6,
    }
    for fid in (5.0, 7.0)
]


def _write_fixture(results: Path, digits: np.ndarray) -> None:
    for seed, values in enumerate(VAE):
        fake.write_run(
            results,
            "vae",
            seed,
            values,
            history=True,
            samples=digits[:64] if seed == 0 else None,
            interpolation=fake.grid(digits[:20], ncols=10) if seed == 0 else None,
        )
    for seed, values in enumerate(GAN):
        fake.write_run(
            results,
            "gan",
            seed,
            values,
            history=seed == 0,
            samples=digits[64:128] if seed == 0 else None,
            samples_png=True,
        )
    # Another protocol (500 generated samples): its FID of 100 must not enter the 1000-sample mean.
    fake.write_run(
        results, "vae", 7, {"fid_mnist": 100.0}, evaluation={"n_samples": 500}, name="vae-quick-s7-n500"
    )
    fake.write_run(results, "gan", 3, {}, status="running")
    fake.write_floor(results, "mnist", 1000, {"fid_mnist": 1.5, "is_mnist": 9.8})
    fake.write_floor(results, "mnist", 500, {"fid_mnist": 3.0, "is_mnist": 9.7})


class _FakeMNIST:
    def __init__(self, train):
        self.train = train


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("report")
    results, out = root / "results", root / "out"
    digits = fake.blobs(160, seed=0)
    _write_fixture(results, digits)
    train = torch.from_numpy(np.concatenate([digits[64:72], fake.blobs(200, seed=1)]))[
        :, None
    ]  # (N, 1, 28, 28)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("DISPLAY", raising=False)
        mp.delenv("WAYLAND_DISPLAY", raising=False)
        mp.setattr("genbench.bench.data.load_mnist", lambda *a, **k: _FakeMNIST(train))
        result = report.make_report(results, out, data_dir=root / "mnist")
    return result, results, out


def _csv(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "summary.csv")


def test_mean_and_std_over_seeds(rendered):
    _, _, out = rendered
    csv = _csv(out)
    vae = csv[(csv.model == "vae") & (csv.n_samples == 1000)].iloc[0]
    assert vae.fid_mnist_mean == pytest.approx(12.0)
    assert vae.fid_mnist_std == pytest.approx(2.0)  # sample std of 10, 12, 14
    assert vae.fid_mnist_n == 3 and vae.n_runs == 3 and vae.seeds == "0 1 2"
    assert vae.nll_nats_mean == pytest.approx(91.0) and vae.nll_nats_kind == "bound"
    gan = csv[(csv.model == "gan") & (csv.n_samples == 1000)].iloc[0]
    assert gan.fid_mnist_mean == pytest.approx(6.0) and gan.fid_mnist_std == pytest.approx(2**0.5)


def test_groups_with_different_protocols_stay_apart(rendered):
    result, _, out = rendered
    csv = _csv(out)
    assert sorted(csv.group.unique()) == ["quick-cpu", "quick-cpu-n500"]
    other = csv[csv.n_samples == 500]
    assert list(other.model) == ["vae", report.FLOOR_LABEL]
    assert other.fid_mnist_mean.tolist() == [100.0, 3.0]  # its own floor, matched by sample count
    main_floor = csv[(csv.n_samples == 1000) & (csv.model == report.FLOOR_LABEL)].iloc[0]
    assert main_floor.fid_mnist_mean == 1.5
    # Every table states its protocol, with the seeds.
    assert "generated samples 1000" in result.markdown and "generated samples 500" in result.markdown
    assert "seeds 0, 1, 2" in result.markdown


def _md_row(markdown: str, group: str, section: str, model: str) -> list[str]:
    block = markdown.split(f"### {group}\n")[1].split("### ")[0]
    table = block.split(f"**{section}**")[1].split("\n\n")[1]
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == model:
            return cells
    raise AssertionError(f"no row {model} in {section}")


def _md_header(markdown: str, group: str, section: str) -> list[str]:
    block = markdown.split(f"### {group}\n")[1].split("### ")[0]
    table = block.split(f"**{section}**")[1].split("\n\n")[1]
    return [c.strip() for c in table.splitlines()[0].strip("|").split("|")]


def test_best_value_follows_each_metrics_direction(rendered):
    result, _, _ = rendered
    md = result.markdown
    header = _md_header(md, "quick-cpu", "Sample quality")
    fid, is_ = header.index("FID (mnist) ↓"), header.index("IS (mnist) ↑")
    gan, vae = (_md_row(md, "quick-cpu", "Sample quality", m) for m in ("gan", "vae"))
    assert gan[fid].startswith("**6.000") and not vae[fid].startswith("**")  # lower FID is best
    assert vae[is_].startswith("**9.000") and not gan[is_].startswith("**")  # higher IS is best
    cost = _md_header(md, "quick-cpu", "Cost")
    params = cost.index("Parameters")  # no direction, no arrow, never bold
    assert all("**" not in _md_row(md, "quick-cpu", "Cost", m)[params] for m in ("gan", "vae"))
    floor = _md_row(md, "quick-cpu", "Sample quality", f"*{report.FLOOR_LABEL}*")
    assert floor[fid] == "1.500"  # the floor is a reference, not a competitor


def test_na_and_bound_markers(rendered):
    result, _, out = rendered
    md = result.markdown
    header = _md_header(md, "quick-cpu", "Likelihood and reconstruction")
    nll = header.index("NLL (nats/image) ↓")
    gan, vae = (_md_row(md, "quick-cpu", "Likelihood and reconstruction", m) for m in ("gan", "vae"))
    assert gan[nll].startswith("n/a [")
    number = gan[nll].split("[")[1].rstrip("]")
    assert f"[{number}] gan has no likelihood" in md
    assert vae[nll].startswith("≤ 91.00 ± 1.00")
    page = (out / "index.html").read_text()
    assert 'class="na" title="gan has no likelihood"' in page
    assert "$\\leq$ 91.00 $\\pm$ 1.00" in (out / "summary.tex").read_text()


def test_every_output_written_and_nothing_half_written(rendered):
    result, _, out = rendered
    names = {p.relative_to(out).as_posix() for p in result.written}
    assert {"index.html", "summary.md", "summary.csv", "runs.csv", "summary.tex"} <= names
    stems = {n[len("figures/") : -4] for n in names if n.endswith(".png")}
    assert {n[len("figures/") : -4] for n in names if n.endswith(".svg")} == stems
    expected = {
        "bars_likelihood_quick-cpu",
        "bars_sample_quick-cpu",
        "bars_cost_quick-cpu",
        "quality_speed_quick-cpu",
        "training_quick-cpu",
        "val_bpd_quick-cpu",
        "samples_quick-cpu",
        "interpolation_quick-cpu",
        "nearest_quick-cpu",
    }
    assert expected <= stems
    for path in result.written:
        assert path.stat().st_size > 0, path
    for png in out.glob("figures/*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    latex = (out / "summary.tex").read_text()
    assert latex.count("\\begin{table}") == latex.count("\\end{table}") == 4  # 3 sections + 1 section
    assert "\\bfseries" in latex


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.tags = 0

    def handle_starttag(self, tag, attrs):
        self.tags += 1
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag in ("link", "script"):
            self.links.append(tag)


def test_html_parses_and_embeds_its_images(rendered):
    result, _, out = rendered
    page = (out / "index.html").read_text()
    parser = _Collector()
    parser.feed(page)
    parser.close()
    assert parser.tags > 50 and parser.links == []  # self-contained: no external CSS or scripts
    figures = [p for p in result.written if p.suffix == ".png"]
    assert len(parser.images) == len(figures)
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:4] == b"\x89PNG"
    # Provenance before tables before figures.
    assert page.index("Protocol and provenance") < page.index("<h2>Tables") < page.index("<h2>Figures")
    assert "ab12cd34ef56" in page and "2.14.1" in page  # feature-network checksum, torch version
    # Plots without data are skipped with a note, not dropped silently.
    assert "Skipped: no training or sampling throughput in this group" in page
    assert "1 unfinished run(s) left out" in page


def test_plots_need_no_display_and_leave_no_pyplot_figures(rendered):
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # figures are built with the object API, rendered by Agg


def test_unfinished_runs_skipped_and_counted(rendered):
    result, results, out = rendered
    assert result.n_skipped == 1 and result.skipped_runs[0].startswith("gan-quick-s3-")
    assert "gan-quick-s3" not in (out / "runs.csv").read_text()
    assert result.n_runs == 6
    included = report.load_results(results, include_unfinished=True)
    assert len(included.runs) == 7 and included.skipped == ()


def test_filters(rendered):
    _, results, _ = rendered
    assert {r.model for r in report.load_results(results, models=("GAN",)).runs} == {"gan"}
    with pytest.raises(UserError, match="no finished runs of flow .*models found: gan, vae"):
        report.load_results(results, models=("flow",))
    with pytest.raises(UserError, match="profile 'full'"):
        report.load_results(results, profile="full")
    since = dt.datetime(2026, 1, 1, 12, 1, tzinfo=dt.timezone.utc)  # runs are created at 12:00 + seed minutes
    late = report.load_results(results, since=since)
    assert {r.seed for r in late.runs} == {1, 2, 7}
    assert [r.run_id for r in report.load_results(results, runs=("vae-quick-s7-n500",)).runs] == [
        "vae-quick-s7-n500"
    ]
    with pytest.raises(UserError, match="no run folder nope"):
        report.load_results(results, runs=("nope",))


def test_empty_results_raise_and_write_nothing(tmp_path):
    (tmp_path / "results").mkdir()
    with pytest.raises(UserError, match=r"no finished runs under .*results/: run `bench run` first"):
        report.make_report(tmp_path / "results")
    assert not (tmp_path / "results" / "report").exists()
    fake.write_run(tmp_path / "results", "gan", 0, {}, status="running")
    with pytest.raises(UserError, match="1 unfinished skipped"):
        report.make_report(tmp_path / "results")
    assert not (tmp_path / "results" / "report").exists()


def test_malformed_json_raises_with_line_and_writes_nothing(tmp_path):
    results = tmp_path / "results"
    fake.write_run(results, "vae", 0, VAE[0])
    bad = fake.write_run(results, "gan", 0, GAN[0])
    (bad / "metrics.json").write_text('{\n  "metrics": {\n    "fid_mnist": oops\n}')
    with pytest.raises(
        UserError, match=r"gan-quick-s0-\S+/metrics.json is not valid JSON \(line 3\): delete or fix"
    ):
        report.make_report(results, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_format_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="unknown report format pdf"):
        report.make_report(tmp_path, formats=("pdf",))


def test_pareto_front():
    # (throughput, FID): c is dominated by b (faster and better); d is fastest; a is best.
    points = [(10.0, 5.0), (100.0, 20.0), (50.0, 30.0), (1000.0, 40.0)]
    assert report.pareto_front(points) == [0, 1, 3]
    assert report.pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]  # ties dominate neither


def test_nearest_training_images_finds_exact_copies_and_distances():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (300, 28, 28), dtype=np.uint8)
    samples = train[[17, 250]].copy()
    samples[1, 0, 0] = 255 - samples[1, 0, 0] // 1  # change one pixel of the second copy
    index, distance = report.nearest_training_images(samples, train, chunk=64)  # chunks cross the hits
    assert index.tolist() == [17, 250]
    assert distance[0] == pytest.approx(0.0, abs=1e-6)
    assert distance[1] == pytest.approx(abs(int(samples[1, 0, 0]) - int(train[250, 0, 0])) / 255.0)


def test_format_number():
    assert report.format_number(12.3456) == "12.35"
    assert report.format_number(0.012345) == "0.01235"
    assert report.format_number(1234567.0, "parameters") == "1.23M"
    assert report.format_number(95000.0) == "95,000"
    assert report.format_number(0.0004) == "4.00e-04"


def test_quality_plot_skipped_without_fid():
    table = report.Table(
        "g", {"profile": "quick"}, (report.Column("bpd", "Bits/dim", "bits/dim", False),), (), ()
    )
    skipped = report.plot_quality_speed(table, pd.DataFrame(columns=list(report.COLUMNS)), {})
    assert isinstance(skipped, report.Skipped) and "no FID" in skipped.reason


def test_json_written_by_fake_results_matches_schema(rendered):
    _, results, _ = rendered
    doc = json.loads(next(results.glob("vae-*/metrics.json")).read_text())
    entry = doc["metrics"]["nll_nats"]
    assert set(entry) >= {"value", "label", "unit", "higher_is_better", "protocol"}
    assert (
        io.StringIO((next(results.glob("vae-*/history.csv"))).read_text())
        .readline()
        .startswith("step,epoch,split")
    )


def test_best_marking_needs_a_difference():
    column = report.Column("recall_mnist", "Recall (mnist)", "-", True)
    rows = [report.Row(m, (0,), 1, (report.Cell(0.0, None, 1),)) for m in ("a", "b")]
    assert not any(r.cells[0].best for r in report._mark_best(rows, [column]))  # all tied: none stands out
    rows.append(report.Row("c", (0,), 1, (report.Cell(0.5, None, 1),)))
    assert [r.cells[0].best for r in report._mark_best(rows, [column])] == [False, False, True]
