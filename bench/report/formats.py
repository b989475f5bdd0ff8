"""Table formats from one pandas DataFrame per table: Markdown (DataFrame.to_markdown), LaTeX and
HTML (pandas Styler, best values bold), and CSV (the numbers themselves)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from genbench.bench.report.comparable import TRIVIAL_MARK
from genbench.bench.report.tables import GroupTables, Table, cell_text, format_value, protocol_fields

FORMATS = ("md", "csv", "latex", "html")
ROW_HEADERS = ("Model", "n", "Seeds")


def display_frame(table: Table) -> tuple[pd.DataFrame, np.ndarray]:
    """The table as text cells, and a boolean mask of the cells to show bold (same shape)."""
    footnotes = {reason: i for i, reason in table.footnotes}
    data, bold = [], []
    for row in table.rows:
        seeds = "—" if row.floor else ", ".join(map(str, row.seeds))
        data.append(
            [
                row.label,
                "—" if row.floor else str(row.n),
                seeds,
                *(
                    cell_text(c, row, footnotes) + (f" {TRIVIAL_MARK}" if c.trivial else "")
                    for c in row.cells
                ),
            ]
        )
        bold.append([False] * len(ROW_HEADERS) + [c.best for c in row.cells])
    frame = pd.DataFrame(data, columns=[*ROW_HEADERS, *(c.header() for c in table.columns)])
    return frame, np.array(bold, dtype=bool).reshape(frame.shape)


def table_notes(table: Table) -> list[str]:
    return [*table.notes, *(f"[{i}] {reason}" for i, reason in table.footnotes)]


def markdown_table(table: Table) -> str:
    frame, bold = display_frame(table)
    frame = frame.mask(bold, "**" + frame + "**")
    floor = [r.floor for r in table.rows]
    frame[ROW_HEADERS[0]] = [f"*{v}*" if f else v for v, f in zip(frame[ROW_HEADERS[0]], floor, strict=True)]
    return frame.to_markdown(index=False, disable_numparse=True)


def render_markdown(groups: Sequence[GroupTables]) -> str:
    """Per group: heading, protocol, one table per section with its notes, then the group's notes."""
    blocks = []
    for group in groups:
        parts = [f"### {group.name}", group.caption()]
        for table in group.tables:
            notes = "\n".join(f"- {n}" for n in table_notes(table))
            parts.append(f"**{table.title}**\n\n{markdown_table(table)}" + (f"\n\n{notes}" if notes else ""))
        parts.append("\n".join(f"- {n}" for n in group.notes))
        blocks.append("\n\n".join(parts))
    return "\n\n".join(blocks) + "\n"


def numbers_frame(group: GroupTables, table: Table) -> pd.DataFrame:
    """The raw numbers of one table: a row per table row, <column>_mean/_std/_stderr/_n/_kind/_na
    columns."""
    base = {label: format_value(value) for label, value in protocol_fields(group.group.protocol)}
    records = []
    for row in table.rows:
        record = {
            "group": group.name,
            "section": table.section,
            **base,
            "row": row.label,
            "model": row.model,
            "variant": row.variant,
            "floor": row.floor,
            "condition": row.condition,
            "n_runs": row.n,
            "seeds": " ".join(map(str, row.seeds)),
        }
        for cell, column in zip(row.cells, table.columns, strict=True):
            record[f"{column.key}_mean"] = cell.mean
            record[f"{column.key}_std"] = cell.std
            record[f"{column.key}_stderr"] = cell.stderr
            record[f"{column.key}_n"] = cell.n
            record[f"{column.key}_kind"] = cell.kind
            record[f"{column.key}_na"] = cell.na if not row.floor else None
            record[f"{column.key}_trivial"] = cell.trivial is not None
        records.append(record)
    return pd.DataFrame(records)


def render_csv(groups: Sequence[GroupTables]) -> str:
    """summary.csv: every table's rows, the numbers unrounded."""
    frames = [numbers_frame(g, t) for g in groups for t in g.tables]
    return pd.concat(frames, ignore_index=True).to_csv(index=False)


def _styler(table: Table, name: str):
    frame, bold = display_frame(table)
    styler = frame.style.hide(axis="index").set_uuid(name)
    return styler.apply(lambda _: np.where(bold, "font-weight: bold;", ""), axis=None), frame


LATEX_SPECIAL = {
    "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
    "↓": r"$\downarrow$", "↑": r"$\uparrow$", "≤": r"$\leq$", "±": r"$\pm$", "—": "--",
}  # fmt: skip


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(c, c) for c in str(text))


def latex_table(group: GroupTables, table: Table) -> str:
    styler, frame = _styler(table, f"{group.name}-{table.section}")
    styler = styler.format(latex_escape).format_index(latex_escape, axis=1)
    caption = f"{table.title} ({group.name}). {group.caption()}. " + "; ".join(table_notes(table))
    body = styler.to_latex(
        caption=latex_escape(caption),
        label=f"tab:genbench-{group.name}-{table.section}",
        hrules=True,
        position="htbp",
        position_float="centering",
        column_format="lrl" + "r" * (frame.shape[1] - len(ROW_HEADERS)),
        convert_css=True,
    )
    # Wide tables shrink to the text width rather than run into the margin.
    body = body.replace("\\begin{tabular}", "\\resizebox{\\textwidth}{!}{%\n\\begin{tabular}")
    return body.replace("\\end{tabular}", "\\end{tabular}%\n}")


def render_latex(groups: Sequence[GroupTables]) -> str:
    header = (
        "% genbench report tables. Needs \\usepackage{booktabs} and \\usepackage{graphicx} (\\resizebox)."
    )
    return "\n".join([header, *(latex_table(g, t) for g in groups for t in g.tables)])


def html_table(group: GroupTables, table: Table) -> str:
    """The table through Styler.to_html: best cells bold and classed "best", n/a cells "na", the
    floor row's cells "floor"."""
    styler, frame = _styler(table, f"{group.name}-{table.section}")
    classes = pd.DataFrame("", index=frame.index, columns=frame.columns)
    for i, row in enumerate(table.rows):
        for j, cell in enumerate(row.cells, start=len(ROW_HEADERS)):
            classes.iat[i, j] = "best" if cell.best else "na" if cell.mean is None and not row.floor else ""
        if row.floor:
            classes.iloc[i] = (classes.iloc[i] + " floor").str.strip()
    styler = styler.set_td_classes(classes).format(escape="html").set_caption(table.title)
    return styler.set_table_attributes('class="results"').to_html()
