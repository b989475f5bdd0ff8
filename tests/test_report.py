"""bench report on run folders written by the real writer (bench.execute.run -> evaluate -> metrics_document)
on tiny smoke models and fake data. Where a test needs known numbers (seed means, a floor), it edits
the written values in place, never a label or a schema field, so these tests cannot drift from what
`bench run` writes.

Group "smoke-cpu" (32 samples): vae seeds 0-2, gan seeds 0-1 (plus an older repeat of seed 0),
flow seed 0 (its numbers as computed), and an unfinished gan. Group "...-n-samples-16": one gan.
"""

from __future__ import annotations

import ast
import base64
import datetime as dt
import io
import math
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cli_utils import invoke, one_line_error
from conftest import fake_mnist

from genbench.bench import report
from genbench.bench.engine.train import RunOptions
from genbench.bench.execute import run as runs
from genbench.bench.planning import plan as plans
from genbench.bench.report import images, tables
from genbench.bench.report.comparable import TRIVIAL_MARK
from genbench.core.errors import UserError
from genbench.core.files import read_json, write_json
from genbench.core.schema import KINDS, old_schema_message
from genbench.metrics import fidelity
from genbench.metrics.likelihood import BPD, IWAE_BPD, IWAE_NLL, NLL
from genbench.metrics.performance import PARAMETERS
from genbench.metrics.reconstruction import BCE, MSE

FID, KID, IS = (o for o in fidelity.outputs_for("mnist")[:3])
OPTIONS = RunOptions(device=torch.device("cpu"), progress=False)
TRAIN = {"epochs": 4}  # the smoke profile's 30 steps on 256 fake images
EVAL = {"n_samples": 32, "n_test": 64, "iwae_images": 16, "allow_few_samples": True}
MAIN, OTHER = "smoke-cpu", "smoke-cpu-n-samples-16"
LATER = "2030-01-01T00:00:00+00:00"


# --------------------------------------------------------------------------------------------------
# Run folders through the real writer


def real_run(
    out: Path,
    data,
    model: str,
    name: str,
    evaluation: dict | None = None,
    train: dict | None = None,
    execute=True,
) -> Path:
    plan = plans.plan(model, "smoke", 0, {**TRAIN, **(train or {})}, {**EVAL, **(evaluation or {})})
    run_dir = runs.start(plan, OPTIONS, out, name=name)
    if execute:
        runs.execute(run_dir, data, OPTIONS, cache_dir=out / ".cache")
    return run_dir


def set_fields(path: Path, **values) -> None:
    """Change values of fields the writer wrote (never add one)."""
    doc = read_json(path)
    for field, value in values.items():
        assert field in doc, f"{path} has no {field!r}"
        doc[field] = value
    write_json(path, doc)


def key_of(run_dir: Path, column: str, variant: str) -> str:
    """The metrics.json key of a column's value of one sample mode."""
    doc = read_json(run_dir / "metrics.json")
    return next(k for k, e in doc["metrics"].items() if e["column"] == column and e["variant"] == variant)


def set_values(run_dir: Path, values: dict[str, float]) -> None:
    """Set metric values by metrics.json key."""
    doc = read_json(run_dir / "metrics.json")
    for key, value in values.items():
        assert doc["metrics"][key]["value"] is not None, f"{key} was not measured"
        doc["metrics"][key]["value"] = value
    write_json(run_dir / "metrics.json", doc)


def copy_run(src: Path, seed: int, created: str, name: str | None = None) -> Path:
    """Another seed (or a repeat) of a run: the same files, with seed, run id and creation time set."""
    dst = src.parent / (name or src.name.replace("-s0-", f"-s{seed}-"))
    shutil.copytree(src, dst)
    set_fields(dst / "metrics.json", seed=seed, run_id=dst.name)
    set_fields(dst / "config.json", seed=seed, run_id=dst.name, created=created)
    return dst


def likelihood_values(nats: float, dims: int) -> dict[str, float]:
    return {NLL.key: nats, BPD.key: nats / (dims * math.log(2))}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield write_results(tmp_path_factory.mktemp("report") / "results")
    finally:
        torch.set_num_threads(threads)


def write_results(out: Path) -> Path:
    """The module's run folders and floors (see the module docstring)."""
    data = fake_mnist(n_train=256, n_val=64, n_test=256)
    dims = math.prod(data.image_shape)
    vae = real_run(out, data, "vae", "a")
    vaes = [vae, copy_run(vae, 1, LATER), copy_run(vae, 2, "2030-01-02T00:00:00+00:00")]
    sampled = key_of(vae, FID.key, "sampled pixels")
    for i, run_dir in enumerate(vaes):
        set_values(
            run_dir,
            {FID.key: 10.0 + 2 * i, sampled: 20.0 + i, IS.key: 9.0, **likelihood_values(90.0 + i, dims)},
        )
    gan = real_run(out, data, "gan", "a")
    set_values(gan, {FID.key: 5.0, IS.key: 8.0})
    set_values(copy_run(gan, 1, LATER), {FID.key: 7.0, IS.key: 8.0})
    set_values(copy_run(gan, 0, "2000-01-01T00:00:00+00:00", name="gan-smoke-s0-old"), {FID.key: 1000.0})
    real_run(out, data, "flow", "a", train={"epochs": 1})  # 8 steps: its samples are never one image
    real_run(out, data, "gan", "running", execute=False)
    set_values(real_run(out, data, "gan", "n16", {"n_samples": 16}), {FID.key: 100.0})
    for n, fid in ((32, 1.5), (16, 3.0)):
        doc = fidelity.compute_floors(data, "mnist", n, out / ".cache", "cpu", 0, allow_few_samples=True)
        doc["metrics"][FID.key]["value"] = fid
        fidelity.write_floors(out, doc)
    return out


@pytest.fixture(scope="module")
def built(results):
    loaded = report.load_results(results)
    groups = tables.build_tables(loaded)
    return loaded, groups, report.render_markdown(groups), pd.read_csv(io.StringIO(report.render_csv(groups)))


class _FakeData:
    def __init__(self, train):
        self.train = train


@pytest.fixture(scope="module")
def rendered(results, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    train = fake_mnist(n_train=256, seed=1).train
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("DISPLAY", raising=False)
        mp.setattr("genbench.bench.engine.data.load_dataset", lambda *a, **k: _FakeData(train))
        result = report.make_report(results, out, data_dir=out / "mnist")
    return result, out


def row(csv: pd.DataFrame, group: str, section: str, label: str) -> pd.Series:
    found = csv[(csv.group == group) & (csv.section == section) & (csv.row == label)]
    assert len(found) == 1, f"{len(found)} rows {label} in {group}/{section}"
    return found.iloc[0]


def md_table(markdown: str, group: str, title: str) -> pd.DataFrame:
    block = markdown.split(f"### {group}\n")[1].split("\n### ")[0]
    lines = block.split(f"**{title}**\n\n")[1].split("\n\n")[0].splitlines()
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    return pd.DataFrame(cells[2:], columns=cells[0]).set_index("Model")


# --------------------------------------------------------------------------------------------------
# Headline numbers


def test_seed_means_and_sample_std(built):
    _, _, markdown, csv = built
    vae = row(csv, MAIN, "quality", "vae [decoder mean]")
    assert vae[f"{FID.key}_mean"] == pytest.approx(12.0) and vae[f"{FID.key}_std"] == pytest.approx(2.0)
    assert vae[f"{FID.key}_n"] == 3 and vae.n_runs == 3 and vae.seeds == "0 1 2"
    assert row(csv, MAIN, "quality", "vae [sampled pixels]")[f"{FID.key}_mean"] == pytest.approx(21.0)
    gan = row(csv, MAIN, "quality", "gan")  # the older repeat of seed 0 (FID 1000) is not averaged in
    assert gan[f"{FID.key}_mean"] == pytest.approx(6.0) and gan[f"{FID.key}_std"] == pytest.approx(2**0.5)
    assert gan.n_runs == 2 and gan.seeds == "0 1"
    quality = md_table(markdown, MAIN, "Sample quality")
    assert quality.loc["vae [decoder mean]", "FID (mnist) ↓"] == "12.00 ± 2.00"
    assert quality.loc["gan", "FID (mnist) ↓"] == "**6.000 ± 1.414**"


def test_groups_with_other_protocols_are_never_averaged_together(built):
    loaded, _, markdown, csv = built
    assert [g.name for g in loaded.groups] == [MAIN, OTHER]
    assert row(csv, OTHER, "quality", "gan")[f"{FID.key}_mean"] == 100.0
    assert row(csv, MAIN, "quality", tables.FLOOR_LABEL)[f"{FID.key}_mean"] == 1.5  # each its own floor
    assert row(csv, OTHER, "quality", tables.FLOOR_LABEL)[f"{FID.key}_mean"] == 3.0
    # The heading lists every protocol field by its label.
    assert "generated samples 32;" in markdown and "generated samples 16;" in markdown
    assert "feature networks mnist " in markdown and "IWAE k 8" in markdown and "seeds 0, 1, 2" in markdown


def test_every_number_is_its_metrics_json_value_under_its_own_header(results, built):
    """flow (one seed, values as computed): each valued entry stands in the cell of its own column
    header and row, in the CSV exactly and in Markdown as rounded."""
    _, groups, markdown, csv = built
    doc = read_json(next(results.glob("flow-*/metrics.json")))
    group = groups[0]
    checked = 0
    for entry in doc["metrics"].values():
        if entry["value"] is None:
            continue
        table = group.section(entry["section"])
        column = next(c for c in table.columns if c.key == entry["column"])
        assert (column.label, column.unit, column.higher_is_better) == (
            entry["label"],
            entry["unit"],
            entry["higher_is_better"],
        )
        assert row(csv, MAIN, entry["section"], "flow")[f"{entry['column']}_mean"] == entry["value"]
        text = md_table(markdown, MAIN, table.title).loc["flow", column.header()].strip("*")
        mark = {"exact": ""}.get(entry["kind"], "≤ " if entry["kind"] else "")
        # one run: the value ± its standard error, where it states one
        se = (
            f" ± {tables.spread_text(entry['value'], entry['stderr'])}" if entry["stderr"] is not None else ""
        )
        trivial = (
            f" {TRIVIAL_MARK}" if entry["column"] in (MSE.key, BCE.key) else ""
        )  # invertible: by construction
        assert text == mark + tables.format_number(entry["value"]) + se + trivial, entry["column"]
        csv_se = row(csv, MAIN, entry["section"], "flow")[f"{entry['column']}_stderr"]
        assert pd.isna(csv_se) if entry["stderr"] is None else csv_se == pytest.approx(entry["stderr"])
        checked += 1
    assert checked >= 10
    # the flow's likelihood is a one-draw dequantization estimate: "≤ value ± stderr", never exact
    bpd = doc["metrics"][BPD.key]
    assert bpd["kind"] == "estimate" and bpd["stderr"] > 0
    assert doc["metrics"][IWAE_BPD.key]["estimator"].startswith("importance-weighted dequantization")


def test_bits_per_dim_is_nats_over_d_ln2(results, built):
    _, _, _, csv = built
    dims = math.prod(read_json(next(results.glob("flow-*/metrics.json")))["protocol"]["image_shape"])
    lik = csv[csv.section == "likelihood"]
    for nats, bits in ((NLL, BPD), (IWAE_NLL, IWAE_BPD)):
        valued = lik[lik[f"{nats.key}_mean"].notna()]
        assert len(valued) >= {NLL: 2, IWAE_NLL: 1}[nats]
        ratio = valued[f"{bits.key}_mean"] / (valued[f"{nats.key}_mean"] / (dims * math.log(2)))
        assert np.allclose(ratio, 1.0, rtol=1e-9), valued[["row", f"{nats.key}_mean", f"{bits.key}_mean"]]


def test_columns_follow_the_entries_order_with_label_unit_and_arrow(built):
    _, groups, markdown, _ = built
    quality = md_table(markdown, MAIN, "Sample quality")
    assert list(quality.columns[:2]) == ["n", "Seeds"]
    assert list(quality.columns[2:5]) == ["FID (mnist) ↓", "KID (mnist) ↓", "IS (mnist) ↑"]
    cost = groups[0].section("cost")
    assert [c.order for c in cost.columns] == sorted(c.order for c in cost.columns)
    assert PARAMETERS.label in md_table(markdown, MAIN, "Cost").columns  # no direction, no arrow
    likelihood = md_table(markdown, MAIN, "Likelihood and reconstruction")
    assert "NLL (nats/image) ↓" in likelihood.columns and "Bits/dim ↓" in likelihood.columns


def test_best_value_follows_each_columns_direction(built):
    _, _, markdown, _ = built
    quality = md_table(markdown, MAIN, "Sample quality")
    assert quality.loc["gan", "FID (mnist) ↓"].startswith("**")  # lower is better
    assert not quality.loc["vae [decoder mean]", "FID (mnist) ↓"].startswith("**")
    assert quality.loc["vae [decoder mean]", "IS (mnist) ↑"].startswith("**9.000")  # higher is better
    assert not quality.loc["gan", "IS (mnist) ↑"].startswith("**")
    assert not quality.loc[f"*{tables.FLOOR_LABEL}*", "FID (mnist) ↓"].startswith("**")  # a reference
    cost = md_table(markdown, MAIN, "Cost")
    assert not cost[PARAMETERS.label].str.contains(r"\*\*").any()


def test_floor_rows_show_their_spread_over_draws(results, built):
    _, _, markdown, csv = built
    floor = read_json(next((results / "floors").glob("*_mnist_n32.json")))["metrics"][FID.key]
    assert floor["protocol"]["draws"] == 5 and floor["protocol"]["sd"] > 0
    assert row(csv, MAIN, "quality", tables.FLOOR_LABEL)[f"{FID.key}_std"] == floor["protocol"]["sd"]
    text = md_table(markdown, MAIN, "Sample quality").loc[f"*{tables.FLOOR_LABEL}*", "FID (mnist) ↓"]
    assert text == f"1.500 ± {tables.spread_text(1.5, floor['protocol']['sd'])}"


def test_na_footnotes_kind_marks_and_estimator_notes(built):
    _, _, markdown, _ = built
    likelihood = md_table(markdown, MAIN, "Likelihood and reconstruction")
    gan = likelihood.loc["gan", "NLL (nats/image) ↓"]
    assert gan.startswith("n/a [")
    assert f"- [{gan.split('[')[1].rstrip(']')}] gan has no likelihood" in markdown
    assert likelihood.loc["vae", "NLL (nats/image) ↓"].strip("*") == "≤ 91.00 ± 1.00"
    assert likelihood.loc["vae", "IWAE bits/dim ↓"].strip("*").startswith("≤ ")
    # the flow's one dequantization draw: an estimate of a bound with its standard error, not exact
    assert likelihood.loc["flow", "Bits/dim ↓"].strip("*").startswith("≤ ")
    assert " ± " in likelihood.loc["flow", "Bits/dim ↓"]
    assert f"- ≤ estimate: {KINDS['estimate']}" in markdown
    assert f"- exact: {KINDS['exact']}" not in markdown  # no run here has an exact likelihood
    assert "IWAE, k=8 (vae)" in markdown
    assert "importance-weighted dequantization bound, k=8 uniform draws per image (flow)" in markdown
    assert "not measured in this protocol: FID (inception)" in markdown  # no model has it: not a column
    assert "vae: likelihood estimate (negative ELBO" in markdown  # from model_protocol


def test_floor_needs_the_same_network_checksum_and_reference(results, tmp_path):
    copy = tmp_path / "results"
    shutil.copytree(results, copy, ignore=shutil.ignore_patterns(".cache"))
    for path in (copy / "floors").glob("*.json"):
        set_fields(path, sha256="0" * 64)  # other weights than the runs' feature network
    quality = tables.build_tables(report.load_results(copy))[0].section("quality")
    assert not any(r.floor for r in quality.rows)


def test_repeated_seed_keeps_the_newest_and_names_the_ignored_folder(built):
    loaded, _, _, _ = built
    note = next(n for n in loaded.notes if "repeats seed" in n)
    assert note.startswith("gan-smoke-s0-old: ignored") and "gan-smoke-s0-a" in note
    assert "gan-smoke-s0-old" not in {r.run_id for r in loaded.runs}


def test_unfinished_runs_skipped_and_counted(results, rendered):
    result, out = rendered
    assert result.n_skipped == 1 and result.skipped_runs[0].startswith("gan-smoke-s0-running (running")
    assert "gan-smoke-s0-running" not in (out / "runs.csv").read_text()
    included = report.load_results(results, include_unfinished=True)
    assert included.skipped == () and any(
        "gan-smoke-s0-running has no metrics.json" in n for n in included.notes
    )


def test_filters(results):
    assert {r.model for r in report.load_results(results, models=("GAN",)).runs} == {"gan"}
    with pytest.raises(UserError, match="no finished runs of pixelcnn .*models found: flow, gan, vae"):
        report.load_results(results, models=("pixelcnn",))
    with pytest.raises(UserError, match="profile 'full'"):
        report.load_results(results, profile="full")
    late = report.load_results(results, since=dt.datetime(2029, 1, 1, tzinfo=dt.timezone.utc))
    assert sorted((r.model, r.seed) for r in late.runs) == [("gan", 1), ("vae", 1), ("vae", 2)]
    assert [r.run_id for r in report.load_results(results, runs=("gan-smoke-s0-n16",)).runs] == [
        "gan-smoke-s0-n16"
    ]
    with pytest.raises(UserError, match="no run folder nope"):
        report.load_results(results, runs=("nope",))


def test_report_models_takes_aliases_and_names_without_a_family(results, tmp_path):
    """--models names rows: an alias is its family, and a name no family has (external samples
    scored by `bench eval --samples`) is looked for among the results, not refused as unknown."""
    args = ("report", "--results", results, "--out", tmp_path / "r", "--format", "md", "--no-figures")
    result = invoke(*args, "--models", "realnvp")
    assert result.exit_code == 0, result.output
    assert "| flow " in result.stdout and "| vae " not in result.stdout
    error = one_line_error(invoke(*args, "--models", "their-gan"), 1)
    assert "no finished runs of their-gan" in error and "models found: flow, gan, vae" in error


# --------------------------------------------------------------------------------------------------
# Robustness


@pytest.fixture
def broken(results, tmp_path) -> Path:
    """One good run and four unreadable ones: bad JSON, not an object, no "metrics", schema 1."""
    out = tmp_path / "results"
    good = next(results.glob("gan-smoke-s0-a"))
    shutil.copytree(good, out / good.name)
    for name, text in (
        ("bad", '{\n  "metrics": {\n    "fid": oops\n}'),
        ("list", "[1, 2]"),
        ("nometrics", '{"schema": 2}'),
    ):
        shutil.copytree(good, out / name)
        (out / name / "metrics.json").write_text(text)
    shutil.copytree(good, out / "old")
    doc = read_json(out / "old" / "metrics.json")
    del doc["schema"]  # how schema 1 looks
    write_json(out / "old" / "metrics.json", doc)
    return out


def test_unreadable_runs_are_skipped_with_a_named_note(broken):
    loaded = report.load_results(broken)
    assert [r.run_id for r in loaded.runs] == ["gan-smoke-s0-a"]
    assert "| gan " in report.render_markdown(tables.build_tables(loaded))
    notes = [n for n in loaded.notes if n.startswith("skipped ")]
    assert len(notes) == 4 and all("\n" not in n for n in notes)
    assert any(n.startswith("skipped bad: ") and "is not valid JSON (line 3)" in n for n in notes)
    assert any(n.startswith("skipped list: ") and "not a JSON object" in n for n in notes)
    assert any(n.startswith("skipped nometrics: ") and "no 'metrics'" in n for n in notes)
    assert f"skipped old: {old_schema_message(broken / 'old' / 'metrics.json')}" in notes


def test_bench_report_prints_the_notes_to_stderr(broken):
    result = invoke("report", "--results", broken, "--format", "md", "--no-figures")
    assert result.exit_code == 0, result.output
    assert "note: skipped bad:" in result.stderr and "note: skipped old:" in result.stderr
    assert (broken / "report" / "summary.md").is_file() and not (broken / "report" / "figures").exists()
    assert "| gan " in result.stdout


def test_nothing_reportable_is_one_error_and_writes_nothing(broken, tmp_path):
    shutil.rmtree(broken / "gan-smoke-s0-a")
    with pytest.raises(UserError, match=r"no finished runs under .*: run `bench run` first"):
        report.make_report(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert "4 unreadable" in one_line_error(
        invoke("report", "--results", broken, "--out", tmp_path / "out"), 1
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no finished runs under" in one_line_error(invoke("report", "--results", empty), 1)


def test_unknown_format_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="unknown report format pdf"):
        report.make_report(tmp_path, formats=("pdf",))
    assert "unknown format pdf" in one_line_error(
        invoke("report", "--results", tmp_path, "--format", "pdf"), 2
    )


# --------------------------------------------------------------------------------------------------
# Outputs


def test_every_output_written_and_nothing_half_written(rendered):
    result, out = rendered
    names = {p.relative_to(out).as_posix() for p in result.written}
    assert {"index.html", "summary.md", "summary.csv", "runs.csv", "summary.tex"} <= names
    stems = {n[len("figures/") : -4] for n in names if n.endswith(".png")}
    assert {n[len("figures/") : -4] for n in names if n.endswith(".svg")} == stems
    kinds = ("bars_likelihood", "bars_quality", "bars_cost", "quality_speed", "training", "val_bpd",
             "samples", "interpolation", "nearest")  # fmt: skip
    assert {f"{k}_{MAIN}" for k in kinds} <= stems
    for path in result.written:
        assert path.stat().st_size > 0, path
    for png in out.glob("figures/*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    latex = (out / "summary.tex").read_text()
    assert latex.count("\\begin{table}") == latex.count("\\end{table}") == 6  # 3 + 3 (GAN-only group: AIS)
    assert "\\bfseries" in latex and "$\\leq$ 91.00 $\\pm$ 1.00" in latex
    runs_csv = pd.read_csv(out / "runs.csv")
    assert len(runs_csv) == runs_csv[["run_id", "key"]].drop_duplicates().shape[0]
    assert runs_csv.run_id.nunique() == result.n_runs and "gan-smoke-s0-old" not in set(runs_csv.run_id)


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.external: list[str] = []
        self.tags = 0

    def handle_starttag(self, tag, attrs):
        self.tags += 1
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag in ("link", "script"):
            self.external.append(tag)


def test_html_parses_and_embeds_its_images(rendered):
    result, out = rendered
    page = (out / "index.html").read_text()
    parser = _Collector()
    parser.feed(page)
    parser.close()
    assert parser.tags > 50 and parser.external == []  # self-contained
    assert len(parser.images) == len([p for p in result.written if p.suffix == ".png"])
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:4] == b"\x89PNG"
    # The verdict and the Pareto figure first, provenance last.
    order = [
        "<h2>Verdict",
        "Sample quality versus speed",
        "<h2>Tables",
        "<h2>Figures",
        "Protocol and provenance",
    ]
    assert [page.index(h) for h in order] == sorted(page.index(h) for h in order)
    assert 'class="results"' in page and "best" in page and "gan has no likelihood" in page
    assert "1 unfinished run(s) left out" in page and "spherical interpolation (slerp)" in page
    assert "Skipped: fewer than two models" in page  # the one-gan group has nothing to compare


def test_plots_leave_no_pyplot_figures(rendered):
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []


def test_nearest_neighbour_panel_skipped_without_training_images(results, tmp_path):
    train, why_not = images.load_training_images(tmp_path / "nothing", "mnist")
    assert train is None and "does not exist" in why_not
    skipped = images.plot_nearest_neighbours(MAIN, report.load_results(results).runs, train, why_not, 256)
    assert skipped.reason == f"training images not available ({why_not})"


def test_report_reads_the_schema_not_key_names():
    """The report's modules import from core.schema only its public names and from metrics only the
    literature table (data matched on the protocol block; it says nothing of what a metric means),
    the reconstruction outputs, whose keys mark an invertible model's trivially exact cells, and the
    likelihood bounds that must order."""
    allowed = {
        "SECTIONS",
        "PROTOCOL_LABELS",
        "KINDS",
        "KIND_MARKS",
        "SCHEMA_VERSION",
        "schema_of",
        "old_schema_message",
    }
    for path in Path(report.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module.startswith("genbench.metrics"):
                    expected = {"genbench.metrics.published": {"published_for"},
                                "genbench.metrics.reconstruction": {"MSE", "BCE"},
                                "genbench.metrics.ais": {"NESTED_BOUNDS"}}  # fmt: skip
                    assert {a.name for a in node.names} <= expected.get(node.module, set()), path
                if node.module == "genbench.core.schema":
                    assert {a.name for a in node.names} <= allowed, path


# --------------------------------------------------------------------------------------------------
# Pure functions


def test_pareto_front():
    # (throughput, FID): c is dominated by b (faster and better); d is fastest; a is best.
    points = [(10.0, 5.0), (100.0, 20.0), (50.0, 30.0), (1000.0, 40.0)]
    assert report.pareto_front(points) == [0, 1, 3]
    assert report.pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]  # ties dominate neither
    assert report.pareto_front([(10.0, 50.0), (100.0, 20.0), (1000.0, 40.0)], lower_is_better=False) == [0, 2]


def test_nearest_training_images_finds_exact_copies_and_distances():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (300, 1, 28, 28), dtype=np.uint8)
    samples = train[[17, 250]].copy()
    samples[1, 0, 0, 0] = 255 - samples[1, 0, 0, 0]  # change one pixel of the second copy
    index, distance = report.nearest_training_images(samples, train, chunk=64)  # chunks cross the hits
    assert index.tolist() == [17, 250]
    assert distance[0] == pytest.approx(0.0, abs=1e-6)
    assert distance[1] == pytest.approx(abs(int(samples[1, 0, 0, 0]) - int(train[250, 0, 0, 0])) / 255.0)


def test_format_number():
    assert report.format_number(12.3456) == "12.35"
    assert report.format_number(0.012345) == "0.01235"
    assert report.format_number(1234567.0) == "1,234,567"
    assert report.format_number(95000.0) == "95,000"
    assert report.format_number(0.0004) == "4.00e-04"
    assert report.format_number(776.0) == "776" and report.format_number(776.5) == "776.5"


def test_best_marking_needs_a_difference():
    column = tables.Column("recall", "Recall", "-", True, 1)
    rows = [tables.Row(m, m, None, (0,), 1, (tables.Cell(0.0, n=1),)) for m in ("a", "b")]
    assert not any(r.cells[0].best for r in tables.mark_best(rows, [column]))  # all tied: none stands out
    rows.append(tables.Row("c", "c", None, (0,), 1, (tables.Cell(0.5, n=1),)))
    assert [r.cells[0].best for r in tables.mark_best(rows, [column])] == [False, False, True]


# --------------------------------------------------------------------------------------------------
# Published results


def test_published_results_are_reference_rows_beside_the_protocol_they_match(results, built, tmp_path):
    """8-bit MNIST runs get the literature's bits/dim as reference rows in the printed table and the
    CSV, each with its source and how its protocol differs; never a best mark, never in a mean."""
    _, groups, markdown, csv = built
    published = row(csv, MAIN, "likelihood", "published: RealNVP (source 1)")
    assert published[f"{BPD.key}_mean"] == 1.06 and bool(published["floor"])
    assert math.isnan(published[f"{NLL.key}_mean"])  # the source gives bits/dim only
    header = tables.Column(BPD.key, BPD.label, BPD.unit, BPD.higher_is_better, 0).header()
    table = md_table(markdown, MAIN, "Likelihood and reconstruction")
    assert table.loc["*published: Residual Flow (source 1)*", header] == "0.9700"
    assert "**" not in table.loc["*published: Residual Flow (source 1)*", header]  # below ours, not best
    # One numbered list of sources: the four rows from one paper share one entry (Katharopoulos et al.'s
    # transformer is the second source of 8-bit MNIST bits/dim).
    notes = [n for n in groups[0].section("likelihood").notes if n.startswith("published source")]
    assert len(notes) == 2 and notes[0].startswith("published source 1: Chen, Behrmann")
    assert notes[1].startswith("published source 2: Katharopoulos")
    assert "protocol match: approximate" in notes[0]
    # the same run on binarized MNIST: the binarized literature (nats per image) instead
    copy = tmp_path / "results"
    shutil.copytree(results / "vae-smoke-s0-a", copy / "vae-smoke-s0-a")
    doc = read_json(copy / "vae-smoke-s0-a" / "metrics.json")
    doc["protocol"] |= {"dataset": "binarized-mnist", "levels": 2}
    write_json(copy / "vae-smoke-s0-a" / "metrics.json", doc)
    binarized = report.render_csv(tables.build_tables(report.load_results(copy)))
    binarized = pd.read_csv(io.StringIO(binarized))
    rows = binarized[binarized.section == "likelihood"].set_index("row")
    assert rows.loc["published: PixelCNN (source 1)", f"{NLL.key}_mean"] == 81.30
    assert not any(label.startswith("published: RealNVP") for label in rows.index)


def test_nested_bounds_say_whether_they_order_up_to_noise():
    """ELBO ≥ IWAE ≥ AIS (NLL, nats): the note says it holds within the noise, and names a reversal
    beyond it (an AIS NLL above the ELBO's); swapping the order's direction fails this."""
    from genbench.bench.report.orders import order_notes
    from genbench.metrics.ais import AIS_NLL

    def part(elbo, iwae, ais, stderr=0.5):
        keys = (NLL.key, IWAE_NLL.key, AIS_NLL.key)
        return pd.DataFrame(
            {"model": "vae", "key": keys, "value": (elbo, iwae, ais), "stderr": (stderr,) * 3}
        )

    holds = order_notes(part(100.0, 98.0, 97.5))
    assert holds == ["vae: NLL ≥ IWAE NLL ≥ AIS NLL holds up to noise (2 standard errors)"]
    assert order_notes(part(100.0, 100.5, 100.9)) == holds  # reversals within 2 standard errors: noise
    broken = order_notes(part(100.0, 98.0, 104.0))
    assert len(broken) == 1 and "AIS NLL 104.00 is above IWAE NLL 98.00 by 6.00 nats" in broken[0]
    assert order_notes(part(100.0, math.nan, math.nan)) == []  # one bound: nothing to order
