"""The table model: one table per (protocol group, section), built from the entries' own fields.

Columns are the entries' "column" values in their "order"; rows are (model, variant): one per
model, and one per sample mode where its entries name one ("vae [decoder mean]"). A cell is the
mean ± sample std over the group's seeds (one run: its value ± its "stderr", where it states one),
marked by the entries' "kind"; a null value is "n/a"
with a numbered footnote from its "na". The real-data floor and the published results whose
protocol lines up with the group's (``metrics.published``) are reference rows, never averaged.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from genbench.bench.report.comparable import (
    cost_conditions,
    main_condition,
    measures_process,
    trivial_reason,
)
from genbench.bench.report.load import Group, Results
from genbench.bench.report.orders import order_notes
from genbench.core.schema import KIND_MARKS, KINDS, PROTOCOL_LABELS, SECTIONS
from genbench.metrics.published import published_for

NA = "n/a"
FLOOR_LABEL = "real-data floor"
PUBLISHED_LABEL = "published"
ARROWS = {True: "↑", False: "↓"}
STATS_NOTE = (
    "mean ± sample std (ddof=1) over seeds; a single run: value ± its standard error (over test "
    "images for a likelihood, over resampled sample sets for FID/KID); real-data floor: mean ± sd "
    "over disjoint draws; n: runs; (n=k): a value some runs lack; "
    "bold: best mean per column by its arrow (not a significance test)"
)
ENTRY_COLUMNS = ("value", "label", "unit", "higher_is_better", "section", "order", "kind", "stderr",
                 "estimator", "k", "variant", "column", "floor", "na")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Column:
    key: str  # the entries' "column"
    label: str
    unit: str
    higher_is_better: bool | None
    order: int
    process: bool = False  # measures the whole process (CPU RSS), not the model: never bold, no arrow

    @property
    def arrow(self) -> str:
        return "" if self.process else ARROWS.get(self.higher_is_better, "")  # type: ignore[arg-type]

    @property
    def comparable(self) -> bool:
        """Whether a best value in this column means something: a direction, and the model's cost."""
        return self.higher_is_better is not None and not self.process

    def header(self) -> str:
        """Label, unit where it adds something ("Peak memory (MiB) ↓", not "Bits/dim (bits/dim)"), arrow."""
        unit = (
            "" if self.unit in ("", "-", "count") or _normal(self.unit) in _normal(self.label) else self.unit
        )
        unit = f"process RSS, {unit}" if self.process else unit
        return f"{self.label}{f' ({unit})' if unit else ''} {self.arrow}".strip()


def _normal(text: str) -> str:
    return "".join(c for c in text.lower().replace("images", "img") if c.isalnum())


@dataclasses.dataclass(frozen=True)
class Cell:
    mean: float | None
    std: float | None = None
    n: int = 0
    na: str | None = None  # the reason, when mean is None
    kind: str | None = None  # the values' "kind" (KINDS), joined if they differ
    mark: str = ""  # its KIND_MARKS
    best: bool = False
    # The standard error of the mean from the runs' own "stderr" (sqrt(sum se_i^2) / n); None where
    # a run states none (older results folders, deterministic numbers).
    stderr: float | None = None
    trivial: str | None = None  # why the value is perfect by construction (never bold), or None


@dataclasses.dataclass(frozen=True)
class Row:
    label: str  # "vae", "vae [decoder mean]", FLOOR_LABEL, or "published: <model>"
    model: str | None  # None for a reference row
    variant: str | None
    seeds: tuple[Any, ...]
    n: int  # runs behind the row
    cells: tuple[Cell, ...]
    floor: bool = False  # a reference row (the real-data floor, a published result): never averaged
    published: bool = False  # a published result (a reference row, but not the real-data floor)
    condition: str | None = None  # the cost condition of the runs behind a cost row (comparable.py)

    @property
    def real_floor(self) -> bool:
        """The real-data floor row: the only reference a figure draws as the floor line."""
        return self.floor and not self.published


@dataclasses.dataclass(frozen=True)
class Table:
    """One section of one group."""

    group: str
    section: str  # a SECTIONS key
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    notes: tuple[str, ...]
    footnotes: tuple[tuple[int, str], ...]  # (number, n/a reason) used in this table
    points: pd.DataFrame  # per run: row, model, variant, column, run_id, seed, value

    @property
    def title(self) -> str:
        return SECTIONS[self.section]

    def row(self, model: str, variant: str | None, condition: str | None = None) -> Row | None:
        """The row of (model, variant) measured under ``condition``, else the model's row without a
        variant."""
        rows = {(r.model, r.variant): r for r in self.rows if not r.floor and r.condition == condition}
        return rows.get((model, variant)) or rows.get((model, None))


@dataclasses.dataclass(frozen=True)
class GroupTables:
    group: Group
    tables: tuple[Table, ...]
    notes: tuple[str, ...]
    condition: str | None = None  # the cost condition the verdict and the speed figure read

    @property
    def name(self) -> str:
        return self.group.name

    def caption(self) -> str:
        return protocol_line(self.group.protocol, seed_order(r.seed for r in self.group.runs))

    def section(self, name: str) -> Table | None:
        return next((t for t in self.tables if t.section == name), None)


def format_value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {format_value(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list):
        return "(" + ", ".join(format_value(v) for v in value) + ")"
    if isinstance(value, float):
        return f"{value:g}"  # a compute budget of 1e+12 FLOPs, not 1000000000000.0
    return str(value)


def protocol_fields(protocol: dict[str, Any]) -> list[tuple[str, Any]]:
    """(label, value) of every protocol field: labelled ones in PROTOCOL_LABELS order, then the rest
    by their raw names."""
    known = [(label, protocol[f]) for f, label in PROTOCOL_LABELS.items() if f in protocol]
    return known + [(f, v) for f, v in protocol.items() if f not in PROTOCOL_LABELS]


def protocol_line(protocol: dict[str, Any], seeds: Iterable[Any]) -> str:
    parts = [f"{label} {format_value(value)}" for label, value in protocol_fields(protocol)]
    return "Protocol: " + "; ".join([*parts, f"seeds {', '.join(map(str, seeds)) or '?'}"])


def entries_frame(group: Group) -> pd.DataFrame:
    """One row per (run, metrics.json key) of the group, with every entry field."""
    records = []
    for run in group.runs:
        for key, entry in run.metrics.items():
            value = entry.get("value")
            records.append(
                {
                    "group": group.name,
                    "run_id": run.run_id,
                    "model": run.model,
                    "seed": run.seed,
                    "created": run.config.get("created"),
                    "key": key,
                    **{f: entry.get(f) for f in ENTRY_COLUMNS},
                    "value": float(value) if isinstance(value, (int, float)) else math.nan,
                    "protocol": json.dumps(entry.get("protocol") or {}, sort_keys=True),
                }
            )
    return pd.DataFrame(
        records, columns=["group", "run_id", "model", "seed", "created", "key", *ENTRY_COLUMNS, "protocol"]
    )


def runs_frame(results: Results) -> pd.DataFrame:
    """runs.csv: one row per (run, key) over every group."""
    return pd.concat([entries_frame(g) for g in results.groups], ignore_index=True)


def seed_order(seeds: Iterable[Any]) -> tuple[Any, ...]:
    """Distinct seeds, integers in numeric order (2 before 10), then anything else."""
    return tuple(
        sorted(
            set(_distinct(seeds)), key=lambda s: (0, s) if isinstance(s, numbers.Integral) else (1, str(s))
        )
    )


def _distinct(values: Iterable[Any]) -> list[Any]:
    return list(
        dict.fromkeys(v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v)))
    )


def _variants(group: Group, model: str, part: pd.DataFrame) -> list[str | None]:
    """The model's variants in this section in its sample-mode order, or [None] when it has none."""
    found = _distinct(part.variant[part.model == model])
    if not found:
        return [None]
    modes = [
        m
        for r in group.runs
        if r.model == model
        for m in (r.model_protocol.get("sample_modes") or {}).values()
    ]
    rank = {m: i for i, m in enumerate(dict.fromkeys(modes))}
    return sorted(found, key=lambda v: rank.get(v, len(rank)))


def _direction(value: Any) -> bool | None:
    return None if value is None or pd.isna(value) else bool(value)


def _cell(entries: pd.DataFrame) -> Cell:
    values = entries.value.dropna()
    if values.empty:
        return Cell(None, na="; ".join(map(str, _distinct(entries.na))) or "not measured")
    kinds = _distinct(entries.kind[entries.value.notna()])
    mark = next((KIND_MARKS[k] for k in kinds if KIND_MARKS.get(k)), "")
    std = float(values.std(ddof=1)) if len(values) > 1 else None
    errors = pd.to_numeric(entries.stderr[entries.value.notna()], errors="coerce")
    stderr = None if errors.isna().any() else float(math.sqrt((errors**2).sum()) / len(values))
    kind = ", ".join(kinds) or None
    return Cell(float(values.mean()), std, len(values), kind=kind, mark=mark, stderr=stderr)


def mark_best(rows: Sequence[Row], columns: Sequence[Column]) -> list[Row]:
    """Bold the best mean of each comparable column by its direction among the model rows measured
    under one condition; ties are all bold; nothing when fewer than two values or all tie. A trivial
    cell (perfect by construction) takes no part."""
    cells = [list(r.cells) for r in rows]
    for j, column in enumerate(columns):
        if not column.comparable:
            continue
        for condition in _distinct(r.condition for r in rows) or [None]:
            values = [
                (i, r.cells[j].mean)
                for i, r in enumerate(rows)
                if not r.floor
                and r.condition == condition
                and r.cells[j].mean is not None
                and r.cells[j].trivial is None
            ]
            if len(values) < 2:
                continue
            best = (max if column.higher_is_better else min)(v for _, v in values)
            if all(math.isclose(v, best, rel_tol=1e-12) for _, v in values):
                continue
            for i, v in values:
                if math.isclose(v, best, rel_tol=1e-12):
                    cells[i][j] = dataclasses.replace(cells[i][j], best=True)
    return [dataclasses.replace(r, cells=tuple(c)) for r, c in zip(rows, cells, strict=True)]


def _floor_row(group: Group, part: pd.DataFrame, columns: Sequence[Column]) -> tuple[Row | None, list[str]]:
    """The real-data values of the columns whose entries name a floor key, from the group's floors."""
    cells, used = [], []
    for column in columns:
        keys = _distinct(part.floor[part.column == column.key])
        found = next(
            (
                (f, f.doc["metrics"][k])
                for k in keys
                for f in group.floors
                if isinstance((f.doc["metrics"].get(k) or {}).get("value"), (int, float))
            ),
            None,
        )
        # The spread of one draw over disjoint draws (metrics.noise.pool_draws); older floors: none.
        sd = (found[1].get("protocol") or {}).get("sd") if found else None
        cells.append(Cell(float(found[1]["value"]), sd, n=1) if found else Cell(None))
        if found and found[0] not in used:
            used.append(found[0])
    if not used:
        return None, []
    notes = [
        f"{FLOOR_LABEL}: {f.doc.get('compared', 'real')} images against {f.doc.get('reference')} through "
        f"{f.doc.get('feature_network')} ({f.path.name}); a reference, not a model"
        for f in used
    ]
    return Row(FLOOR_LABEL, None, None, (), 0, tuple(cells), floor=True), notes


def _published_rows(group: Group, columns: Sequence[Column]) -> tuple[list[Row], list[str]]:
    """One reference row per published result in these columns whose dataset and levels (and
    feature network) are the group's. Rows that share a source, protocol and match share one entry of
    a numbered list of sources ("source 1: ..."), which the row names."""
    keys = [c.key for c in columns]
    rows, sources = [], {}
    for entry in published_for(group.protocol):
        if entry["metric"] not in keys:
            continue
        why = f" ({'; '.join(entry['differences'])})" if entry["differences"] else ""
        made = f"; {'; '.join(entry['notes'])}" if entry["notes"] else ""
        source = (
            f"{entry['source']} ({entry['url']}); {entry['protocol']}{made}; "
            f"protocol match: {entry['match']}{why}"
        )
        number = sources.setdefault(source, len(sources) + 1)
        label = f"{PUBLISHED_LABEL}: {entry['model']} (source {number})"
        cell = Cell(entry["value"], entry["spread"], n=1)
        cells = tuple(cell if k == entry["metric"] else Cell(None) for k in keys)
        rows.append(Row(label, None, None, (), 0, cells, floor=True, published=True))
    return rows, [f"{PUBLISHED_LABEL} source {n}: {text}" for text, n in sources.items()]


def _estimator_notes(part: pd.DataFrame, columns: Sequence[Column]) -> list[str]:
    """Columns with the same estimators share a note: "IWAE NLL, IWAE bits/dim: IWAE, k=8"."""
    by_text: dict[str, list[str]] = {}
    for column in columns:
        rows = part[(part.column == column.key) & part.value.notna() & part.estimator.notna()]
        texts = {e: _distinct(rows.model[rows.estimator == e]) for e in _distinct(rows.estimator)}
        if not texts:
            continue
        text = (
            next(iter(texts))
            if len(texts) == 1
            else "; ".join(f"{e} ({', '.join(m)})" for e, m in texts.items())
        )
        by_text.setdefault(text, []).append(column.label)
    return [f"{', '.join(labels)}: {text}" for text, labels in by_text.items()]


def _kind_notes(part: pd.DataFrame) -> list[str]:
    kinds = _distinct(part.kind[part.value.notna()])
    return [
        f"{KIND_MARKS.get(k, '').strip() + ' ' if KIND_MARKS.get(k) else ''}{k}: {KINDS[k]}"
        for k in KINDS
        if k in kinds
    ]


def _unmeasured_notes(part: pd.DataFrame, unmeasured: Sequence[Column]) -> list[str]:
    """Columns no model has a value in are a note, not a column of n/a."""
    by_reason: dict[str, list[str]] = {}
    for column in unmeasured:
        reason = "; ".join(map(str, _distinct(part.na[part.column == column.key]))) or "no value"
        by_reason.setdefault(reason, []).append(column.label)
    return [
        f"not measured in this protocol: {', '.join(labels)} ({why})" for why, labels in by_reason.items()
    ]


def _points(label: str, model: str, variant: str | None, column: Column, entries: pd.DataFrame) -> list:
    return [
        {"row": label, "model": model, "variant": variant, "column": column.key, "run_id": e.run_id,
         "seed": e.seed, "value": e.value}
        for e in entries[entries.value.notna()].itertuples()
    ]  # fmt: skip


def _table_notes(
    part: pd.DataFrame,
    columns: Sequence[Column],
    rows: Sequence[Row],
    shared: dict[str, list[str]],
    floor_notes: list[str],
    published_notes: list[str],
    unmeasured: Sequence[Column],
) -> list[str]:
    """The notes under a section's table, in order: estimators, kinds, bound orders, the floor,
    trivial and process-level cells, conditions, model-level numbers, published sources, the rest."""
    notes = _estimator_notes(part, columns) + _kind_notes(part) + order_notes(part) + floor_notes
    notes += _distinct(c.trivial for r in rows for c in r.cells if c.trivial and c.mean is not None)
    notes += [
        f"{c.label}: the process's resident set on the CPU (the runtime included), not the model's; "
        f"never bold"
        for c in columns
        if c.process
    ]
    if any(r.condition for r in rows):
        notes.append(
            "costs measured under different conditions (config.json: threads, device, precision, other "
            "processes busy at the start) are never averaged: one row per condition; bold compares rows "
            "of one condition only"
        )
    notes += [
        f"{m}: {', '.join(dict.fromkeys(labels))} belong to the model, not to a sample mode, so they "
        f"repeat in each of its rows"
        for m, labels in shared.items()
        if sum(r.model == m for r in rows) > 1
    ]
    notes += published_notes + _unmeasured_notes(part, unmeasured)
    return notes


def _section_table(
    group: Group, section: str, part: pd.DataFrame, footnotes: dict[str, int]
) -> Table | str | None:
    """The section's table; a note when no model has a value in it; None when it has no entries."""
    specs = part.drop_duplicates("column").sort_values(["order", "column"], kind="stable")
    columns = [
        Column(
            s.column, s.label, s.unit, _direction(s.higher_is_better), int(s.order),
            process=measures_process([json.loads(p) for p in part.protocol[part.column == s.column]]),
        )
        for s in specs.itertuples()
    ]  # fmt: skip
    measured = {c for c in part.column[part.value.notna()]}
    unmeasured = [c for c in columns if c.key not in measured]
    columns = [c for c in columns if c.key in measured]
    if not columns:
        return "; ".join(_unmeasured_notes(part, unmeasured)) or None
    conditions = cost_conditions(group.runs) if section == "cost" else {}
    rows, points, shared = [], [], {}
    for model in sorted(part.model.unique()):
        for condition in sorted(_distinct(conditions.get(r) for r in part.run_id[part.model == model])) or [
            None
        ]:
            mine = part[part.model == model]
            if condition is not None:
                mine = mine[mine.run_id.map(conditions.get) == condition]
            for variant in _variants(group, model, part):
                label = model if variant is None else f"{model} [{variant}]"
                label += f" · {condition}" if condition else ""
                cells = []
                for column in columns:
                    entries = mine[(mine.column == column.key) & (mine.variant == variant)]
                    if entries.empty:  # the model's own number, the same for each of its sample modes
                        entries = mine[(mine.column == column.key) & mine.variant.isna()]
                        if variant is not None and not entries.empty:
                            shared.setdefault(model, []).append(column.label)
                    cell = _cell(entries)
                    if cell.mean is not None:
                        cell = dataclasses.replace(
                            cell, trivial=trivial_reason(group.runs, model, column.key)
                        )
                    cells.append(cell)
                    points += _points(label, model, variant, column, entries)
                seeds = seed_order(mine.seed)
                n = mine.run_id.nunique()
                rows.append(Row(label, model, variant, seeds, n, tuple(cells), condition=condition))
    rows = mark_best(sorted(rows, key=lambda r: r.condition or ""), columns)  # a condition's rows together
    floor, floor_notes = _floor_row(group, part, columns)
    rows += [floor] if floor else []
    published, published_notes = _published_rows(group, columns)
    rows += published
    for reason in _distinct(c.na for r in rows if not r.floor for c in r.cells if c.mean is None):
        footnotes.setdefault(reason, len(footnotes) + 1)
    used = _distinct(c.na for r in rows if not r.floor for c in r.cells if c.mean is None)
    notes = _table_notes(part, columns, rows, shared, floor_notes, published_notes, unmeasured)
    return Table(
        group.name,
        section,
        tuple(columns),
        tuple(rows),
        tuple(notes),
        tuple((footnotes[r], r) for r in used),
        pd.DataFrame(points),
    )


def _model_notes(group: Group) -> list[str]:
    """Model-level facts from metrics.json "model_protocol": likelihood estimator, sample modes."""
    notes = []
    for model in sorted({r.model for r in group.runs}):
        facts = []
        for mp in _distinct(
            json.dumps(r.model_protocol, sort_keys=True) for r in group.runs if r.model == model
        ):
            mp = json.loads(mp)
            if mp.get("likelihood"):
                facts.append(f"likelihood {mp['likelihood']} ({mp.get('likelihood_estimator')})")
            modes = [m or "default" for m in (mp.get("sample_modes") or {}).values()]
            if len(modes) > 1:
                facts.append(f"sample modes {', '.join(modes)} (the first is the default)")
        if facts:
            notes.append(f"{model}: {'; '.join(facts)}")
    return notes


def build_group(group: Group) -> GroupTables:
    frame = entries_frame(group)
    footnotes: dict[str, int] = {}
    tables, notes = [], [STATS_NOTE]
    for section, title in SECTIONS.items():
        table = _section_table(group, section, frame[frame.section == section], footnotes)
        if isinstance(table, Table):
            tables.append(table)
        elif table:
            notes.append(f"{title}: {table}")
    condition = main_condition(cost_conditions(group.runs))
    return GroupTables(group, tuple(tables), (*notes, *_model_notes(group)), condition)


def build_tables(results: Results) -> list[GroupTables]:
    return [build_group(g) for g in results.groups]


# --------------------------------------------------------------------------------------------------
# Numbers as text


def _decimals(x: float, significant: int = 4) -> int:
    return 2 if x == 0 else max(0, significant - 1 - math.floor(math.log10(abs(x))))


def format_number(x: float) -> str:
    """Four significant digits with thousands separators; tiny numbers in scientific notation; a
    whole number from 100 up (a count: steps, parameters) without a decimal point."""
    if not math.isfinite(x):
        return str(x)
    if abs(x) >= 100 and x == int(x):
        return f"{x:,.0f}"
    if x != 0 and abs(x) < 1e-3:
        return f"{x:.2e}"
    return f"{x:,.{_decimals(x)}f}"


def spread_text(mean: float, spread: float) -> str:
    """A spread at the mean's decimals ("1.366 ± 0.004"), or to two significant digits where those
    would show it as zero ("1.366 ± 0.00042")."""
    tiny = mean != 0 and abs(mean) < 1e-3
    text = format_number(spread) if tiny else f"{spread:,.{_decimals(mean)}f}"
    if spread > 0 and not any(c in "123456789" for c in text):
        text = f"{spread:.{_decimals(spread, 2)}f}" if spread >= 1e-3 else f"{spread:.1e}"
    return text


def cell_text(cell: Cell, row: Row, footnotes: dict[str, int]) -> str:
    """ "≤ 91.00 ± 1.00" (± std over seeds, or a single run's standard error), "6.000 (n=2)",
    "n/a [1]"; "—" for a floor row's blank."""
    if cell.mean is None:
        return "—" if row.floor else f"{NA} [{footnotes[cell.na]}]" if cell.na in footnotes else NA
    text = cell.mark + format_number(cell.mean)
    spread = cell.std if cell.std is not None or row.floor else cell.stderr
    if spread:  # none for one value, and none for a constant: "300", not "300 ± 0.0"
        text += f" ± {spread_text(cell.mean, spread)}"
    return text + (f" (n={cell.n})" if not row.floor and 0 < cell.n < row.n else "")
