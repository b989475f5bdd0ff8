"""`bench report`: comparison tables (Markdown, CSV, LaTeX, HTML), figures (PNG + SVG) and one
self-contained HTML page from the finished run folders under results/.

Everything is read from the results schema (``genbench.core.schema``): runs are grouped by their
metrics.json "protocol" block and averaged only inside a group; columns, headers, directions,
sections, bound marks, estimators, n/a reasons and floors come from the entries' own fields.

    load.py     run folders and floors -> protocol groups (unreadable folders skipped with a note)
    tables.py   the table model: a table per (group, section), rows (model, variant), cells
    formats.py  Markdown, CSV, LaTeX, HTML from one DataFrame per table (Styler for LaTeX/HTML)
    figures.py  bars, quality vs speed, training curves, validation bits/dim
    ladder.py   quality against training compute (a compute ladder's rungs), best family per rung
    images.py   sample grids, interpolations, nearest training images
    comparable.py  what a table may compare: cost conditions, trivial cells, process-level costs
    verdict.py  the verdict first: per headline metric the best family, its margin, seed noise
    page.py     index.html from templates/index.html.j2

The whole report is built in memory, then each file is written through ``core.files`` (atomic), so
an error leaves the previous report in place.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable
from pathlib import Path

from genbench.bench.report import figures as plots
from genbench.bench.report import images
from genbench.bench.report.figures import Rendered, Skipped, pareto_front
from genbench.bench.report.formats import FORMATS, render_csv, render_latex, render_markdown
from genbench.bench.report.images import nearest_training_images
from genbench.bench.report.ladder import plot_ladder, render_ladder_markdown
from genbench.bench.report.load import Results, load_results
from genbench.bench.report.page import render_html
from genbench.bench.report.tables import FLOOR_LABEL, GroupTables, build_tables, format_number, runs_frame
from genbench.bench.report.verdict import render_verdict_markdown
from genbench.core.errors import UserError
from genbench.core.files import write_bytes

__all__ = [
    "FLOOR_LABEL", "FORMATS", "ReportResult", "build_tables", "format_number", "load_results",
    "make_report", "nearest_training_images", "pareto_front",
]  # fmt: skip

FIGURE_PREFIXES = (
    "ladder_",
    "bars_",
    "quality_speed_",
    "training_",
    "val_bpd_",
    "samples_",
    "interpolation_",
    "nearest_",
)


@dataclasses.dataclass(frozen=True)
class ReportResult:
    out_dir: Path
    written: tuple[Path, ...]  # every file written
    markdown: str  # the tables as Markdown, for the terminal
    n_runs: int
    n_skipped: int  # unfinished runs left out
    skipped_runs: tuple[str, ...]  # "run-id (status: reason)"
    notes: tuple[str, ...]  # runs and floors left out and why, repeated seeds, figures skipped


def build_figures(
    results: Results, groups: Iterable[GroupTables], data_dir: Path | None
) -> list[Rendered | Skipped]:
    colours = plots.palette(sorted({r.model for r in results.runs}))
    figures: list[Rendered | Skipped] = []
    training: dict[str, tuple] = {}  # dataset -> (train images or None, why not)
    for group in groups:
        runs, name, protocol = group.group.runs, group.name, group.group.protocol
        figures += [plots.plot_metric_bars(name, t, colours) for t in group.tables]
        ladder = plot_ladder(group, colours)
        if isinstance(ladder, Rendered):  # only a compute ladder's group has the figure
            figures.append(ladder)
        figures.append(plots.plot_quality_speed(group, colours))
        figures.append(plots.plot_training_curves(name, runs, colours))
        figures.append(plots.plot_validation_bpd(name, runs, colours))
        figures.append(images.plot_samples(name, runs, protocol.get("levels", 256)))
        figures.append(images.plot_interpolations(name, runs))
        dataset = str(protocol.get("dataset"))
        if dataset not in training:
            training[dataset] = (
                images.load_training_images(data_dir, dataset) if data_dir else (None, "pass --data-dir")
            )
        train, why_not = training[dataset]
        figures.append(
            images.plot_nearest_neighbours(name, runs, train, why_not, protocol.get("levels", 256))
        )
    return figures


def _filters_text(models, profile, since, runs, include_unfinished) -> str:
    parts = [
        f"models {', '.join(models)}" if models else "",
        f"profile {profile}" if profile else "",
        f"since {since.isoformat()}" if since else "",
        f"runs {', '.join(runs)}" if runs else "",
        "including unfinished runs" if include_unfinished else "",
    ]
    text = ", ".join(p for p in parts if p)
    return f"Filters: {text}." if text else ""


def _remove_stale_figures(out_dir: Path, keep: Iterable[str]) -> None:
    """Figures of an earlier report that this one did not redraw would contradict index.html; remove
    those, and only files this package names."""
    keep = set(keep)
    folder = out_dir / "figures"
    for path in folder.glob("*") if folder.is_dir() else ():
        if (
            path.suffix in (".png", ".svg", ".csv")
            and path.name.startswith(FIGURE_PREFIXES)
            and f"figures/{path.name}" not in keep
        ):
            path.unlink(missing_ok=True)


def make_report(
    results_dir: Path,
    out_dir: Path | None = None,
    formats: tuple[str, ...] = FORMATS,
    models: tuple[str, ...] = (),
    profile: str | None = None,
    since: dt.datetime | None = None,
    runs: tuple[str, ...] = (),
    include_unfinished: bool = False,
    data_dir: Path | None = None,
    figures: bool = True,
) -> ReportResult:
    """Read results_dir, build tables and figures, and write them to out_dir (default results_dir/report):
    summary.md, summary.csv + runs.csv, summary.tex, index.html (as ``formats`` asks) and
    figures/*.png + *.svg (unless not ``figures``). A UserError before anything is written when there is
    nothing to report."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise UserError(f"unknown report format {', '.join(unknown)}: choose from {', '.join(FORMATS)}")
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir / "report"
    results = load_results(results_dir, models, profile, since, runs, include_unfinished, out_dir=out_dir)
    groups = build_tables(results)
    markdown = render_markdown(groups)
    drawn = build_figures(results, groups, data_dir) if figures else [Skipped("Figures", "--no-figures")]
    filters = _filters_text(models, profile, since, runs, include_unfinished)

    files: dict[str, bytes] = {}
    if "md" in formats:
        header = f"# genbench report\n\nFrom `{results_dir}`: {len(results.runs)} runs. {filters}\n\n"
        tables = "## Tables\n\n" + markdown
        leads = render_verdict_markdown(groups) + "\n" + render_ladder_markdown(groups)
        files["summary.md"] = (header + leads.rstrip("\n") + "\n\n" + tables).encode()
    if "csv" in formats:
        files["summary.csv"] = render_csv(groups).encode()
        files["runs.csv"] = runs_frame(results).to_csv(index=False).encode()
    if "latex" in formats:
        files["summary.tex"] = render_latex(groups).encode()
    for figure in drawn:
        if isinstance(figure, Rendered):
            files[f"figures/{figure.name}.png"] = figure.png
            files[f"figures/{figure.name}.svg"] = figure.svg
            if figure.data is not None:
                files[f"figures/{figure.name}.csv"] = figure.data
    if "html" in formats:
        files["index.html"] = render_html(results, groups, drawn, results_dir, filters).encode()

    for relative, payload in files.items():
        write_bytes(out_dir / relative, payload)
    _remove_stale_figures(out_dir, files)
    return ReportResult(
        out_dir=out_dir,
        written=tuple(out_dir / r for r in files),
        markdown=markdown,
        n_runs=len(results.runs),
        n_skipped=len(results.skipped),
        skipped_runs=tuple(f"{r} ({why})" for r, why in results.skipped),
        notes=(
            *results.notes,
            *(f"{f.title}: skipped ({f.reason})" for f in drawn if isinstance(f, Skipped)),
        ),
    )
