"""index.html: one self-contained page (figures embedded as PNG) from the jinja2 template
templates/index.html.j2; the tables come from pandas' Styler (formats.html_table)."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from genbench.bench.report.figures import Rendered, Skipped
from genbench.bench.report.formats import html_table, table_notes
from genbench.bench.report.ladder import ladder_html
from genbench.bench.report.load import Results, Run
from genbench.bench.report.tables import GroupTables, format_value, protocol_fields
from genbench.bench.report.verdict import RULE, verdict_html

TEMPLATES = Path(__file__).resolve().parent / "templates"
# Figures shown with the verdict, before the tables: quality against training compute (a compute
# ladder's), then quality against cost (the Pareto figure).
LEAD_FIGURES = (
    "ladder_", "Quality against training compute", "quality_speed_", "Sample quality versus speed",
)  # fmt: skip
PACKAGES = ("python", "torch", "torchvision", "torch_fidelity", "genbench")


def _distinct(values: Iterable[Any]) -> list[str]:
    return list(dict.fromkeys(str(v) for v in values if v not in (None, "")))


def provenance(group: GroupTables) -> list[tuple[str, str]]:
    """The group's protocol fields (with their labels) and where its numbers came from."""
    runs: Sequence[Run] = group.group.runs
    items = [(label, format_value(value)) for label, value in protocol_fields(group.group.protocol)]
    names = _distinct(r.config.get("device_name") for r in runs)
    if names:
        items.append(("device names", ", ".join(names)))
    by_model: dict[str, list[str]] = {}
    for run in runs:
        by_model.setdefault(run.model, []).append(str(run.seed))
    items.append(("seeds per model", "; ".join(f"{m}: {', '.join(s)}" for m, s in sorted(by_model.items()))))
    commits = _distinct(r.config.get("git_commit") for r in runs)
    items.append(("git commits", ", ".join(c[:12] for c in commits) or "not recorded"))
    for package in PACKAGES:
        found = _distinct((r.config.get("versions") or {}).get(package) for r in runs)
        if found:
            items.append((package, ", ".join(found) + ("  ⚠ mixed versions" if len(found) > 1 else "")))
    created = sorted(_distinct(r.config.get("created") for r in runs))
    if created:
        items.append(("created", created[0] if len(created) == 1 else f"{created[0]} … {created[-1]}"))
    floors = [f.path.name for f in group.group.floors]
    items.append(
        ("real-data floors", ", ".join(floors) or "none matching (compute them with `bench floors`)")
    )
    return items


def _leads(figure: Rendered | Skipped) -> bool:
    name = figure.name if isinstance(figure, Rendered) else figure.title
    return name.startswith(LEAD_FIGURES)


def _figure(figure: Rendered | Skipped) -> dict[str, Any]:
    if isinstance(figure, Skipped):
        return {"title": figure.title, "reason": figure.reason, "png": None}
    png = base64.b64encode(figure.png).decode("ascii")
    return {"title": figure.title, "caption": figure.caption, "name": figure.name, "png": png}


def render_html(
    results: Results,
    groups: Sequence[GroupTables],
    figures: Sequence[Rendered | Skipped],
    results_dir: Path,
    filters: str,
) -> str:
    import jinja2
    from markupsafe import Markup

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    )
    context = {
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "results_dir": str(results_dir),
        "n_runs": len(results.runs),
        "filters": filters,
        "skipped": results.skipped,
        "warnings": results.notes,
        "groups": [
            {
                "name": g.name,
                "caption": g.caption(),
                "provenance": provenance(g),
                "runs": g.group.runs,
                "notes": g.notes,
                "tables": [{"html": Markup(html_table(g, t)), "notes": table_notes(t)} for t in g.tables],
                "verdict": Markup(verdict_html(g)),
                "ladder": Markup(ladder_html(g)),
            }
            for g in groups
        ],
        "rule": RULE,
        # The verdict's figures come right after it; the rest after the tables.
        "lead_figures": [_figure(f) for f in figures if _leads(f)],
        "figures": [_figure(f) for f in figures if not _leads(f)],
    }
    return env.get_template("index.html.j2").render(context)
