"""End to end on real MNIST: `bench run --profile smoke` of every registered family, `bench floors`,
then `bench report`; every number the run wrote must stand in the printed Markdown and in
summary.csv under its own row and header."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from cli_utils import invoke
from test_report import md_table, row

from genbench.bench.report.comparable import TRIVIAL_MARK
from genbench.bench.report.tables import FLOOR_LABEL, format_number, spread_text
from genbench.core.files import read_json
from genbench.core.schema import KIND_MARKS, SECTIONS
from genbench.metrics.base import EVAL_PROFILES
from genbench.metrics.likelihood import BPD, IWAE_BPD, IWAE_NLL, NLL
from genbench.metrics.reconstruction import BCE, MSE
from genbench.models import MODELS


@pytest.fixture(scope="module")
def reported(tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("e2e")
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        ran = invoke(
            "run",
            "--models",
            ",".join(MODELS),
            "--profile",
            "smoke",
            "--out",
            out,
            "--data-dir",
            mnist_dir,
            "--no-progress",
            "--threads",
            1,
            "--name",
            "e2e",
        )
        assert ran.exit_code == 0, ran.output
        n = EVAL_PROFILES["smoke"].n_samples
        floors = invoke(
            "floors", "--network", "mnist", "--n-samples", n, "--results", out, "--data-dir", mnist_dir
        )
        assert floors.exit_code == 0, floors.output
        reported = invoke("report", "--results", out, "--no-figures")  # the numbers: figures are tested apart
        assert reported.exit_code == 0, reported.output
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
    docs = [read_json(p) for p in sorted(out.glob("*/metrics.json"))]
    return docs, reported.stdout, pd.read_csv(out / "report" / "summary.csv")


def _rows(doc: dict, section: str) -> list[str]:
    """The table rows a model's numbers of a section stand in: one per sample mode it names there."""
    variants = dict.fromkeys(
        e["variant"] for e in doc["metrics"].values() if e["section"] == section and e["variant"]
    )
    return [f"{doc['model']} [{v}]" for v in variants] or [doc["model"]]


def _measured(table: pd.DataFrame, label: str) -> str:
    """A cost row's label: the row's own, or with the condition its run was measured under appended
    when the runs of the group were measured under different ones (" · idle at start", say; a run
    that finds other processes busy at its start is not compared with one that found the machine idle)."""
    found = [r for r in table.index if r == label or r.startswith(label + " · ")]
    assert len(found) == 1, (label, list(table.index))
    return found[0]


@pytest.mark.slow
def test_report_shows_every_number_the_run_wrote(reported):
    docs, markdown, csv = reported
    assert sorted(d["model"] for d in docs) == sorted(MODELS)
    group = "smoke-cpu"
    checked, valued = 0, 0
    for doc in docs:
        for entry in doc["metrics"].values():
            if entry["value"] is None:
                continue
            valued += 1
            title = SECTIONS[entry["section"]]
            table = md_table(markdown, group, title)
            header = next(
                h for h in table.columns if h == entry["label"] or h.startswith(entry["label"] + " ")
            )
            variant_rows = _rows(doc, entry["section"])
            for label in [f"{doc['model']} [{entry['variant']}]"] if entry["variant"] else variant_rows:
                label = _measured(table, label) if entry["section"] == "cost" else label
                text = table.loc[label, header].strip("*")
                se = "" if entry["stderr"] is None else f" ± {spread_text(entry['value'], entry['stderr'])}"
                invertible = doc["model_protocol"].get("invertible")
                trivial = f" {TRIVIAL_MARK}" if invertible and entry["column"] in (MSE.key, BCE.key) else ""
                expected = KIND_MARKS.get(entry["kind"], "") + format_number(entry["value"]) + se + trivial
                assert text == expected, (label, header)
                assert row(csv, group, entry["section"], label)[f"{entry['column']}_mean"] == entry["value"]
                checked += 1
    assert checked >= valued >= 10 * len(docs)


@pytest.mark.slow
def test_every_family_in_every_section_and_the_floor_row(reported):
    docs, markdown, _ = reported
    for title in SECTIONS.values():
        rows = md_table(markdown, "smoke-cpu", title).index
        assert {r.split(" · ")[0].split(" [")[0] for r in rows if not r.startswith("*")} == set(MODELS), title
    assert f"*{FLOOR_LABEL}*" in md_table(markdown, "smoke-cpu", SECTIONS["quality"]).index


@pytest.mark.slow
def test_bits_per_dim_is_nats_over_d_ln2_in_the_csv(reported):
    docs, _, csv = reported
    dims = math.prod(docs[0]["protocol"]["image_shape"])
    likelihood = csv[(csv.section == "likelihood") & csv[f"{NLL.key}_mean"].notna()]
    assert set(likelihood.model) == {d["model"] for d in docs if d["model_protocol"]["likelihood"]}
    for nats, bits in ((NLL, BPD), (IWAE_NLL, IWAE_BPD)):
        valued = likelihood[likelihood[f"{nats.key}_mean"].notna()]
        expected = valued[f"{nats.key}_mean"] / (dims * math.log(2))
        assert (valued[f"{bits.key}_mean"] - expected).abs().max() <= 1e-9 * expected.max()
