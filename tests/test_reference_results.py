"""results/reference/cpu-quick/ is the committed quick run of the five families, three seeds each
(README: "Reference numbers"). `bench report` must keep reading it with the numbers its metrics.json
files hold, so that a schema change cannot orphan it."""

from __future__ import annotations

import statistics
from pathlib import Path

import pandas as pd
import pytest
from cli_utils import invoke
from test_report import row
from test_report_e2e import _rows

from genbench.core.files import read_json

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference" / "cpu-quick"
FAMILIES = {"vae", "gan", "pixelcnn", "flow", "diffusion"}


def _runs() -> list[dict]:
    return [read_json(p) for p in sorted((REFERENCE / "runs").glob("*/metrics.json"))]


def test_the_reference_holds_three_seeds_of_five_families_without_checkpoints():
    docs = _runs()
    assert {d["model"] for d in docs} == FAMILIES
    assert sorted(d["seed"] for d in docs) == sorted([0, 1, 2] * len(FAMILIES))
    assert all(d["protocol"]["profile"] == "quick" and d["protocol"]["device"] == "cpu" for d in docs)
    for folder in (REFERENCE / "runs").iterdir():
        assert (folder / "config.json").is_file() and (folder / "history.csv").is_file(), folder
        assert (folder / "samples.png").is_file(), folder
        assert not (folder / "checkpoints").exists() and not (folder / "samples.pt").exists(), folder
    assert (REFERENCE / "report" / "summary.md").is_file() and (REFERENCE / "report" / "index.html").is_file()


def test_bench_report_reads_the_reference_with_its_numbers(tmp_path):
    reported = invoke(
        "report", "--results", REFERENCE / "runs", "--out", tmp_path, "--format", "md,csv", "--no-figures"
    )
    assert reported.exit_code == 0, reported.output
    docs = _runs()
    assert f": {len(docs)} runs." in (tmp_path / "summary.md").read_text()  # none left out with a note
    csv = pd.read_csv(tmp_path / "summary.csv")
    group = "quick-cpu"
    checked = 0
    for model in FAMILIES:
        seeds = [d for d in docs if d["model"] == model]
        for key, entry in seeds[0]["metrics"].items():
            values = [d["metrics"][key]["value"] for d in seeds]
            if any(v is None for v in values):
                continue
            labels = (
                [f"{model} [{entry['variant']}]"] if entry["variant"] else _rows(seeds[0], entry["section"])
            )
            for label in labels:
                if entry["section"] == "cost":
                    checked += _check_cost_rows(csv, group, label, entry["column"], seeds, key)
                    continue
                reported_mean = row(csv, group, entry["section"], label)[f"{entry['column']}_mean"]
                assert reported_mean == pytest.approx(statistics.fmean(values), rel=1e-9), (label, key)
                checked += 1
    assert checked >= 40


def _check_cost_rows(csv: pd.DataFrame, group: str, label: str, column: str, docs: list, key: str) -> int:
    """A cost is the mean of the seeds measured under one condition (README: the reference's seeds
    ran one after the other on the idle machine, one row per model); seeds measured under different
    conditions (" · idle at start", say) stand in rows of their own, never averaged together."""
    section = csv[(csv.group == group) & (csv.section == "cost")]
    rows = section[(section.row == label) | section.row.str.startswith(f"{label} · ")]
    seeds = [[int(s) for s in str(r.seeds).replace(",", " ").split()] for r in rows.itertuples()]
    assert sorted(s for row in seeds for s in row) == [0, 1, 2], (label, key)
    for found, its_seeds in zip(rows.itertuples(), seeds, strict=True):
        values = [d["metrics"][key]["value"] for d in docs if d["seed"] in its_seeds]
        assert getattr(found, f"{column}_mean") == pytest.approx(statistics.fmean(values), rel=1e-9), (
            found.row
        )
    return len(rows)
