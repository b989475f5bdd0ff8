"""Quality against training compute, from the "ladder" of the runs of a compute ladder
(``genbench.bench.engine.ladder``): a figure (bits/dim and FID against the counted training FLOPs, log x,
one line per family, the seeds' range as a band), its points as CSV beside it, and a table of the
best family at each rung with its margin and the verdict's seed-noise rule.

A protocol group holds runs of one ladder only (its rungs are the protocol's compute budget), so
nothing here averages runs of different ladders or budgets. Each family is read at its default
sample mode; its bits/dim is the one likelihood it states (exact, bound or estimate).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pandas as pd

from genbench.bench.report.figures import Rendered, Skipped, figure, render, style
from genbench.bench.report.load import Run
from genbench.bench.report.tables import GroupTables, format_number
from genbench.bench.report.verdict import RULE, noise_text
from genbench.core.schema import KIND_MARKS

BPD = "bits/dim"
COLUMNS = ("model", "seed", "run_id", "compute", "steps", "train_flops", "metric", "value", "stderr", "kind")
HEADERS = ("Rung (FLOPs)", "Metric", "Best family", "Next family", "Margin", "Beyond seed noise?")
CAPTION = (
    "Quality of one training run per family and seed, evaluated at each rung of its compute ladder "
    "(the step where its counted training FLOPs first reach the rung): the line is the mean over "
    "seeds, the band their range (where a family has more than one). Bits/dim is the family's own "
    "likelihood (≤: a bound, or an estimate of one); FID on the ladder's sample count."
)


def _rung_values(rung: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(metric label, entry) of the rung's bits/dim (the first the family states) and of its first
    sample-quality column (FID with the profile's first feature network: the verdict's choice),
    read from the entries' fields (unit, section, order), at the default sample mode."""
    entries = rung.get("metrics") or {}
    # the default sample mode's keys are their columns (core.schema: KEY[mode] for the others)
    stated = [e for k, e in entries.items() if e.get("value") is not None and k == e.get("column")]
    found = []
    for wanted in (lambda e: e.get("unit") == BPD, lambda e: e.get("section") == "quality"):
        picked = sorted((e for e in stated if wanted(e)), key=lambda e: e.get("order", 0))
        if picked:
            found.append((BPD if picked[0].get("unit") == BPD else picked[0]["label"], picked[0]))
    return found


def ladder_points(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run, rung and metric (bits/dim, FID) of the runs that have a ladder."""
    rows = []
    for run in runs:
        for rung in run.doc.get("ladder") or ():
            for metric, entry in _rung_values(rung):
                rows.append(
                    (run.model, run.seed, run.run_id, rung["compute"], rung["steps"], rung["train_flops"],
                     metric, entry["value"], entry.get("stderr"), entry.get("kind"))
                )  # fmt: skip
    return pd.DataFrame(rows, columns=list(COLUMNS))


def plot_ladder(group: GroupTables, colours: dict[str, Any]) -> Rendered | Skipped:
    """Bits/dim and FID against training FLOPs (log x), one line per family, a band over seeds."""
    title = f"Quality against training compute ({group.name})"
    points = ladder_points(group.group.runs)
    if points.empty:
        return Skipped(title, "no compute ladder in these runs (bench run --compute 2e13,6e13,2e14)")
    metrics = list(dict.fromkeys(points.metric))
    with style():
        fig = figure(5.2 * len(metrics), 4.2)
        for ax, metric in zip(fig.subplots(1, len(metrics), squeeze=False)[0], metrics, strict=True):
            part = points[points.metric == metric]
            for model, rows in part.groupby("model", sort=True):
                by_rung = rows.groupby("compute").agg(
                    x=("train_flops", "mean"), mean=("value", "mean"), lo=("value", "min"),
                    hi=("value", "max"), n=("value", "size"),
                )  # fmt: skip
                kind = rows.kind.dropna().iloc[0] if rows.kind.notna().any() else None
                mark = " (≤)" if kind in ("bound", "estimate") else ""
                ax.plot(by_rung.x, by_rung["mean"], marker="o", color=colours[model], label=f"{model}{mark}")
                if (by_rung.n > 1).any():
                    ax.fill_between(by_rung.x, by_rung.lo, by_rung.hi, color=colours[model], alpha=0.2)
            ax.set_xscale("log")
            ax.set_xlabel("training FLOPs (counted)")
            ax.set_ylabel(f"{metric} (↓ better)")
            ax.set_title(f"{metric} vs training compute")
            ax.legend(fontsize=9)
        heading = f"{group.name}: quality against training compute (one run per seed, evaluated at each rung)"
        rendered = render(fig, f"ladder_{group.name}", title, heading, CAPTION)
    return dataclasses.replace(rendered, data=points.to_csv(index=False).encode())


def best_per_rung(group: GroupTables) -> pd.DataFrame:
    """Per rung and metric: the best family (lower is better for both; ≤ marks a bound or an
    estimate of one), the next, the margin and whether it exceeds seed noise (the verdict's rule)."""
    points = ladder_points(group.group.runs)
    rows = []
    for (compute, metric), part in points.groupby(["compute", "metric"], sort=True):
        values = {m: list(v.value) for m, v in part.groupby("model")}
        marks = {
            m: KIND_MARKS.get(v.kind.dropna().iloc[0], "") if v.kind.notna().any() else ""
            for m, v in part.groupby("model")
        }
        ranked = sorted(values, key=lambda m: sum(values[m]) / len(values[m]))
        if len(ranked) < 2:
            continue
        first, second = ranked[:2]
        a, b = values[first], values[second]
        mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
        rows.append(
            (f"{compute:.3g}", metric, f"{first}: {marks[first]}{format_number(mean_a)} (n={len(a)})",
             f"{second}: {marks[second]}{format_number(mean_b)} (n={len(b)})", format_number(mean_b - mean_a),
             noise_text(a, b))
        )  # fmt: skip
    return pd.DataFrame(rows, columns=list(HEADERS))


def render_ladder_markdown(groups: Sequence[GroupTables]) -> str:
    """## Best family at each rung, for the groups that have a compute ladder ("" for none)."""
    blocks = []
    for group in groups:
        frame = best_per_rung(group)
        if not frame.empty:
            blocks.append(f"### {group.name}\n\n{frame.to_markdown(index=False, disable_numparse=True)}")
    if not blocks:
        return ""
    return "\n\n".join(["## Best family at each rung of the compute ladder", *blocks, RULE]) + "\n"


def ladder_html(group: GroupTables) -> str:
    frame = best_per_rung(group)
    if frame.empty:
        return ""
    styler = frame.style.hide(axis="index").set_uuid(f"ladder-{group.name}")
    return styler.format(escape="html").set_table_attributes('class="verdict"').to_html()
