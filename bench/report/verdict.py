"""The verdict at the top of a report: per protocol group and headline metric, the best family, its
margin over the next family, and whether that margin exceeds the seed-to-seed noise.

The rule: Welch's two-sided t-test of the two families' per-seed values (unequal variances),
a difference beyond noise at p < 0.05; it needs at least 3 seeds of each family, else "n too small".
Each family stands by its best row (a sample mode); a cell trivially perfect by construction takes
no part, and a cost is read under one measurement condition only (the group's main condition).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import pandas as pd

from genbench.bench.report.tables import Column, GroupTables, Row, Table, cell_text, format_number

ALPHA = 0.05
MIN_SEEDS = 3
RULE = (
    f"Seed noise: Welch's two-sided t-test of the best and the next family's per-seed values, a "
    f"difference beyond noise at p < {ALPHA:g}; it needs at least {MIN_SEEDS} seeds of each, else "
    f"'n too small'. Each family stands by its best sample mode."
)


# (headline, section, which columns), read from the schema's fields (section, unit, direction), never
# from a key: likelihood is the first bits/dim column, quality the first sample-quality column, speed
# every throughput column (training, sampling), and training compute the training wall time until
# FLOP counts exist.
HEADLINES = (
    ("likelihood", "likelihood", lambda c: c.unit == "bits/dim"),
    ("sample quality", "quality", lambda c: True),
    ("speed", "cost", lambda c: c.unit == "images/s" and c.higher_is_better is True),
    ("training compute (wall time)", "cost", lambda c: c.unit == "s" and c.higher_is_better is False),
)
HEADERS = ("Headline", "Metric", "Best family", "Next family", "Margin", "Beyond seed noise?")


@dataclasses.dataclass(frozen=True)
class Verdict:
    headline: str
    metric: str  # the column's header, with its arrow
    best: str  # "pixelcnn: 1.193 ± 0.007 (n=3)"
    next: str
    margin: str  # "0.144 (11% of the next)"
    noise: str  # "yes (Welch t-test, p = 0.0004)", "no: within seed noise (...)", "n too small (...)"
    better: str | None = None  # the best family's model name (tests read it)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test; 0 when neither sample varies and the means differ."""
    from scipy import stats

    if min(len(a), len(b)) < 2:
        raise ValueError("Welch's t-test needs two values a side")
    if pd.Series(a).std() == 0 and pd.Series(b).std() == 0:
        return 1.0 if math.isclose(sum(a) / len(a), sum(b) / len(b)) else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def noise_text(a: Sequence[float], b: Sequence[float]) -> str:
    if min(len(a), len(b)) < MIN_SEEDS:
        return f"n too small (n = {len(a)} and {len(b)}; the test needs {MIN_SEEDS} seeds each)"
    p = welch_p(a, b)
    if p < ALPHA:
        return f"yes (Welch t-test, p = {p:.2g})"
    return f"no: within seed noise (Welch t-test, p = {p:.2g})"


def _family_best(table: Table, j: int, column: Column, condition: str | None) -> list[Row]:
    """Each family's best model row in column j (trivial cells and other conditions left out), best
    family first."""
    sign = 1 if column.higher_is_better else -1
    best: dict[str, Row] = {}
    for row in table.rows:
        cell = row.cells[j]
        if row.floor or cell.mean is None or cell.trivial or row.condition != condition:
            continue
        held = best.get(row.model)
        if held is None or sign * cell.mean > sign * held.cells[j].mean:
            best[row.model] = row
    return sorted(best.values(), key=lambda r: -sign * r.cells[j].mean)


def _values(table: Table, row: Row, column: Column) -> list[float]:
    points = table.points
    return [float(v) for v in points.value[(points.row == row.label) & (points.column == column.key)]]


def headline_verdict(group: GroupTables, headline: str, table: Table, j: int) -> Verdict | None:
    """The verdict on column j of the table, or None when fewer than two families have a value."""
    column = table.columns[j]
    condition = group.condition if any(r.condition for r in table.rows) else None
    ranked = _family_best(table, j, column, condition)
    if len(ranked) < 2:
        return None
    first, second = ranked[:2]
    a, b = _values(table, first, column), _values(table, second, column)
    gap = abs(first.cells[j].mean - second.cells[j].mean)
    relative = f" ({gap / abs(second.cells[j].mean):.0%} of the next)" if second.cells[j].mean else ""
    metric = column.header() + (f", measured {condition}" if condition else "")

    def described(row: Row) -> str:
        name = row.label.split(" · ")[0]  # the condition stands in the metric
        return f"{name}: {cell_text(row.cells[j], row, {})} (n={row.cells[j].n})"

    return Verdict(
        headline,
        metric,
        described(first),
        described(second),
        format_number(gap) + relative,
        noise_text(a, b),
        first.model,
    )


def group_verdicts(group: GroupTables) -> list[Verdict]:
    found = []
    for headline, section, wanted in HEADLINES:
        table = group.section(section)
        picked = [j for j, c in enumerate(table.columns) if c.comparable and wanted(c)] if table else []
        for j in picked if section == "cost" else picked[:1]:  # every throughput; one quality column
            found.append(headline_verdict(group, headline, table, j))
    return [v for v in found if v is not None]


def verdict_frame(verdicts: Sequence[Verdict]) -> pd.DataFrame:
    return pd.DataFrame(
        [(v.headline, v.metric, v.best, v.next, v.margin, v.noise) for v in verdicts], columns=HEADERS
    )


def render_verdict_markdown(groups: Sequence[GroupTables]) -> str:
    """## Verdict: per group a table of the headline metrics, then the rule."""
    blocks = ["## Verdict: best at what, at what cost"]
    for group in groups:
        verdicts = group_verdicts(group)
        table = (
            verdict_frame(verdicts).to_markdown(index=False, disable_numparse=True)
            if verdicts
            else "Fewer than two families share a headline metric in this group."
        )
        blocks.append(f"### {group.name}\n\n{table}")
    blocks.append(RULE)
    return "\n\n".join(blocks) + "\n"


def verdict_html(group: GroupTables) -> str:
    verdicts = group_verdicts(group)
    if not verdicts:
        return ""
    styler = verdict_frame(verdicts).style.hide(axis="index").set_uuid(f"verdict-{group.name}")
    return styler.format(escape="html").set_table_attributes('class="verdict"').to_html()
