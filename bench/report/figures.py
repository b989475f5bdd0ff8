"""Figures of numbers (PNG + SVG): metric bars over seeds, quality against speed with its Pareto
front, training curves and validation bits/dim. Built with matplotlib's object API (``Figure``,
Agg), never pyplot: no display is needed and no global figure state is touched. Which column is
which comes from the tables (section, order, direction), never from a key name."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
from collections.abc import Iterator, Sequence
from typing import Any

import pandas as pd

from genbench.bench.report.load import Run
from genbench.bench.report.tables import FLOOR_LABEL, NA, Cell, Column, GroupTables, Row, Table, format_number
from genbench.core.schema import KIND_MARKS

RC = {
    "font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10,
    "ytick.labelsize": 10, "legend.fontsize": 10, "figure.titlesize": 13, "savefig.dpi": 110,
    "svg.hashsalt": "genbench",  # deterministic SVG ids
    "svg.fonttype": "none",  # text stays text in the SVG: smaller, selectable, faster to write
}  # fmt: skip
# Captions name only what their figure draws: each optional element's sentence is added when drawn.
BARS_CAPTION = (
    "Bars: mean over seeds; error bars: ± sample std; dots: single seeds. Each axis label gives the better "
    "direction."
)
BARS_ELEMENTS = {
    "floor": "The dashed line is the real-data floor.",
    "bound": "Hatched bars are upper bounds on the NLL, not exact values.",
    "na": "n/a marks a model the metric does not apply to.",
    "log": "Panels spanning more than a factor of 50 use a log axis and show the mean as a diamond.",
}
QUALITY_SPEED_CAPTION = (
    "{score} against throughput, one point per model and sample mode. Circled points lie on the Pareto front "
    "(no other is both faster and better); the dotted staircase joins them. Error bars are ± std over seeds."
)
FLOOR_SENTENCE = " The dashed line is the real-data floor."
TRAINING_CAPTION = (
    "One row per model; each model's loss is its own objective, so compare shapes, not levels, across rows. "
    "Look for flattening (convergence); the validation figure shows held-out bits/dim, where a rise "
    "means overfitting. The y-axis is clipped to late training when the first steps spike."
)
VAL_BPD_CAPTION = (
    "Bits per dimension on the same discrete protocol for every likelihood model, so levels compare "
    "directly. A model marked ≤ reports a bound on its NLL (an upper bound on its true bits/dim)."
)


@dataclasses.dataclass(frozen=True)
class Rendered:
    name: str  # file stem under figures/
    title: str
    caption: str
    png: bytes
    svg: bytes
    # The horizontal dashed lines each panel draws (panel title -> y values): the floor line as drawn,
    # read back from the figure itself.
    dashed: dict[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)
    data: bytes | None = None  # the points drawn, as CSV (figures/<name>.csv), where a figure has them


@dataclasses.dataclass(frozen=True)
class Skipped:
    title: str
    reason: str


@contextlib.contextmanager
def style() -> Iterator[None]:
    import matplotlib as mpl
    import seaborn as sns

    with mpl.rc_context(RC), sns.axes_style("whitegrid"):
        yield


def figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def render(fig, name: str, title: str, heading: str, caption: str, handles: dict | None = None) -> Rendered:
    """PNG and SVG of ``fig`` with its heading, and the legend ``handles`` below the panels."""
    if handles:
        fig.legend(
            handles=list(handles.values()), loc="outside lower center", ncols=len(handles), frameon=False
        )
    fig.suptitle(heading)
    png, svg = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png")  # runs the constrained layout
    fig.set_layout_engine("none")  # keep those positions for the SVG: layout is most of the cost
    fig.savefig(svg, format="svg", metadata={"Date": None})
    dashed = {
        ax.get_title(): tuple(
            float(line.get_ydata()[0])
            for line in ax.get_lines()
            if line.get_linestyle() == "--" and len(set(line.get_ydata())) == 1
        )
        for ax in fig.axes
    }
    return Rendered(name, title, caption, png.getvalue(), svg.getvalue(), dashed)


def palette(models: Sequence[str]) -> dict[str, Any]:
    import seaborn as sns

    colours = sns.color_palette("colorblind", max(len(models), 3))
    return {m: colours[i % len(colours)] for i, m in enumerate(models)}


def _axis_label(column: Column) -> str:
    # A metric without a unit is named by its label ("KID (mnist)"), never called a "score".
    unit = column.unit if column.unit not in ("", "-") else column.label
    return unit + {True: " (↑ better)", False: " (↓ better)"}.get(column.higher_is_better, "")  # type: ignore[arg-type]


def _wide_range(values: Sequence[float]) -> bool:
    positive = [v for v in values if v > 0]
    return len(positive) >= 2 and max(positive) / min(positive) > 50


def _grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols) with few empty slots: 5 -> 2x3, 6 -> 2x3, 7 -> 2x4."""
    ncols = n if n <= 4 else math.ceil(n / 2) if n <= 8 else 4
    return math.ceil(n / ncols), ncols


def _hatch_bounds(ax, labels: Sequence[str], marked: set[str], handles: dict[str, Any]) -> None:
    """Hatch the bars of bounds and estimates (rows whose cell carries a ≤ mark), with a legend entry."""
    from matplotlib.patches import Patch

    for patch in ax.patches:
        index = round(patch.get_x() + patch.get_width() / 2)
        if 0 <= index < len(labels) and labels[index] in marked:
            patch.set_hatch("///")
            patch.set_edgecolor("0.25")
            handles["bound"] = Patch(
                facecolor="white", edgecolor="0.25", hatch="///", label="upper bound on the NLL (≤)"
            )


def _value_axis(ax, values: pd.Series, floor_value: float | None, log: bool) -> None:
    """A non-negative metric's axis from 0 (below it only for a negative floor: KID's can be), and
    tick labels that read as numbers."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    if not log and len(values) and values.min() >= 0:
        top = max(ax.get_ylim()[1], (floor_value or 0) * 1.08)
        ax.set_ylim(min(0.0, 1.3 * (floor_value or 0)), top if top > 0 else 1)
    if log:  # plain tick labels: mathtext ($10^{3}$) is most of a log panel's drawing time
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    elif len(values) and values.abs().max() >= 1e4:
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_number(v)))


def plot_metric_bars(group: str, table: Table, colours: dict[str, Any]) -> Rendered | Skipped:
    """One panel per column: mean bars with ± std error bars (seaborn), one dot per seed, the floor
    as a dashed line; bars of bounds and estimates hatched."""
    import seaborn as sns
    from matplotlib.lines import Line2D

    title = f"{table.title} per model ({group})"
    rows = [r for r in table.rows if not r.floor]
    labels = [r.label for r in rows]
    hues = {r.label: colours[r.model] for r in rows}
    floor = next((r for r in table.rows if r.real_floor), None)  # never a published row
    drawn: set[str] = set()
    nrows, ncols = _grid_shape(len(table.columns))
    rotate = len(labels) > 4 or max(map(len, labels)) > 9
    handles: dict[str, Any] = {}
    with style():
        fig = figure(3.6 * ncols, 3.3 * nrows + 1.0)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, (j, column) in zip(axes, enumerate(table.columns), strict=False):
            data = table.points[table.points.column == column.key]
            floor_value = floor.cells[j].mean if floor is not None else None
            log = _wide_range([*data.value, *([floor_value] if floor_value else [])])
            common = {"data": data, "x": "row", "y": "value", "order": labels, "ax": ax}
            bar = {
                "hue": "row",
                "hue_order": labels,
                "palette": hues,
                "errorbar": "sd",
                "capsize": 0.25,
                "legend": False,
            }
            drawn |= {"log"} if log else set()
            if log:  # a bar's length means nothing on a log axis: the mean as a diamond instead
                sns.pointplot(**common, **bar, linestyle="none", marker="D", markersize=7)
                ax.set_yscale("log")
                positive = [v for v in (*data.value, floor_value) if v is not None and v > 0]
                ax.set_ylim(min(positive) / 1.8, max(positive) * 1.8)  # one point has no range
            else:
                sns.barplot(**common, **bar, err_kws={"linewidth": 1.3})
            sns.stripplot(**common, color="0.15", size=3.5, jitter=0.12, zorder=5)
            _hatch_bounds(ax, labels, {r.label for r in rows if r.cells[j].mark}, handles)
            for i, row in enumerate(rows):
                if row.cells[j].mean is None:
                    drawn.add("na")
                    ax.text(
                        i, 0.03, NA, transform=ax.get_xaxis_transform(), ha="center", color="0.4", fontsize=9
                    )
            if floor_value is not None:
                ax.axhline(floor_value, color="0.3", linestyle="--", linewidth=1.3)
                handles["floor"] = Line2D([], [], color="0.3", linestyle="--", label=FLOOR_LABEL)
            _value_axis(ax, data.value, floor_value, log)
            ax.set_title(column.label)
            ax.set_ylabel(_axis_label(column))
            ax.set_xlabel("")
            ax.set_xticks(
                range(len(labels)), labels, rotation=30 if rotate else 0, ha="right" if rotate else "center"
            )
        for ax in axes[len(table.columns) :]:
            fig.delaxes(ax)
        handles["seeds"] = Line2D(
            [], [], color="0.15", marker="o", linestyle="none", markersize=4, label="single seeds"
        )
        heading = f"{group} · {table.title.lower()}: mean ± std over seeds"
        drawn |= set(handles)
        caption = " ".join([BARS_CAPTION, *(text for key, text in BARS_ELEMENTS.items() if key in drawn)])
        return render(fig, f"bars_{table.section}_{group}", title, heading, caption, handles)


def pareto_front(points: Sequence[tuple[float, float]], lower_is_better: bool = True) -> list[int]:
    """Indices of the points no other point beats: at least as fast (x, higher better) and at least
    as good (y), strictly better in one; sorted by x."""
    sign = 1 if lower_is_better else -1
    front = []
    for i, (x, y) in enumerate(points):
        if not any(
            xo >= x and sign * yo <= sign * y and (xo > x or sign * yo < sign * y)
            for j, (xo, yo) in enumerate(points)
            if j != i
        ):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _nan0(x: float | None) -> float:
    return 0.0 if x is None else x


PANEL_IN = (5.8, 5.0)  # a quality-vs-speed panel, inches
PANEL_PT = (PANEL_IN[0] * 72 - 85, PANEL_IN[1] * 72 - 110)  # its plot area, roughly, in points


def label_points(
    ax, points: Sequence[tuple[float, float]], labels: Sequence[tuple[str, Any]], size_pt
) -> None:
    """Name each point beside it, at the first of six positions around it whose box overlaps no other
    label and no point; works on the final limits (log x) in points of an axes of ``size_pt``."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()

    def to_pt(x: float, y: float) -> tuple[float, float]:
        fx = math.log(x / x0) / math.log(x1 / x0) if ax.get_xscale() == "log" else (x - x0) / (x1 - x0)
        return fx * size_pt[0], (y - y0) / (y1 - y0) * size_pt[1]

    marks = [to_pt(x, y) for x, y in points]
    taken = [(px - 9, py - 9, px + 9, py + 9) for px, py in marks]  # the markers and Pareto rings
    offsets = ((9, 6, "left", "bottom"), (9, -6, "left", "top"), (-9, 6, "right", "bottom"),
               (-9, -6, "right", "top"), (0, 11, "center", "bottom"), (0, -11, "center", "top"))  # fmt: skip
    for (px, py), (x, y), (text, colour) in zip(marks, points, labels, strict=True):
        width, height = 6.0 * len(text) + 2, 12.0  # 9 pt bold text
        choice = offsets[0]
        for dx, dy, ha, va in offsets:
            left = px + dx - {"left": 0, "right": width, "center": width / 2}[ha]
            bottom = py + dy - (height if va == "top" else 0)
            box = (left, bottom, left + width, bottom + height)
            inside = box[0] >= 0 and box[2] <= size_pt[0] and box[1] >= 0 and box[3] <= size_pt[1]
            if inside and all(
                box[2] <= o[0] or box[0] >= o[2] or box[3] <= o[1] or box[1] >= o[3] for o in taken
            ):
                choice = (dx, dy, ha, va)
                taken.append(box)
                break
        dx, dy, ha, va = choice
        ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=9,
                    color=colour, fontweight="bold")  # fmt: skip


def _speed_points(group: GroupTables, speed: Column) -> list[tuple[Row, Cell, Cell]]:
    """(row, throughput cell, quality cell) of each model row with both, at the group's condition."""
    quality, cost = group.section("quality"), group.section("cost")
    points = []
    for row in (r for r in quality.rows if not r.floor):
        other = cost.row(row.model, row.variant, group.condition)
        x, y = other.cells[cost.columns.index(speed)] if other else None, row.cells[0]
        if x is not None and x.mean and y.mean is not None:
            points.append((row, x, y))
    return points


def _draw_front(ax, xy: list[tuple[float, float]], lower_is_better: bool) -> Any:
    """The Pareto front of the points as a dotted step line through circled points; its legend handle."""
    from matplotlib.lines import Line2D

    front = pareto_front(xy, lower_is_better=lower_is_better)
    fx, fy = [xy[i][0] for i in front], [xy[i][1] for i in front]
    ax.step(fx, fy, where="post", color="0.3", linestyle=":", linewidth=1.5, zorder=2)
    ax.scatter(fx, fy, s=280, facecolors="none", edgecolors="0.2", linewidths=1.3, zorder=3)
    return Line2D(
        [], [], marker="o", markersize=14, markerfacecolor="none", markeredgecolor="0.2", color="0.3",
        linestyle=":", label="Pareto front",
    )  # fmt: skip


def plot_quality_speed(group: GroupTables, colours: dict[str, Any]) -> Rendered | Skipped:
    """The first sample-quality column (by order) against each throughput column (cost columns where
    higher is better), per (model, variant) row, with the Pareto front."""
    from matplotlib.lines import Line2D

    title = f"Sample quality versus speed ({group.name})"
    quality, cost = group.section("quality"), group.section("cost")
    if quality is None:
        return Skipped(title, "no sample-quality number in this group")
    speeds = [c for c in cost.columns if c.higher_is_better] if cost else []
    if not speeds:
        return Skipped(title, "no training or sampling throughput in this group")
    score = quality.columns[0]
    panels = [(speed, points) for speed in speeds if (points := _speed_points(group, speed))]
    if max((len(p) for _, p in panels), default=0) < 2:
        return Skipped(title, f"fewer than two models have both {score.label} and a throughput")
    floor = next((r.cells[0].mean for r in quality.rows if r.real_floor), None)
    handles: dict[str, Any] = {}
    with style():
        fig = figure(PANEL_IN[0] * len(panels), PANEL_IN[1])
        for ax, (speed, points) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
            for row, x, y in points:
                colour = colours[row.model]
                ax.errorbar(
                    x.mean,
                    y.mean,
                    xerr=_nan0(x.std),
                    yerr=_nan0(y.std),
                    fmt="o",
                    ms=8,
                    color=colour,
                    ecolor=colour,
                    capsize=3,
                    zorder=4,
                )
            xy = [(x.mean, y.mean) for _, x, y in points]
            handles["front"] = _draw_front(ax, xy, lower_is_better=score.higher_is_better is not True)
            if floor is not None:
                ax.axhline(floor, color="0.3", linestyle="--", linewidth=1.3, zorder=1)
                handles["floor"] = Line2D([], [], color="0.3", linestyle="--", label=FLOOR_LABEL)
            ax.set_xscale("log")
            xs = [p[0] for p in xy]
            ax.set_xlim(min(xs) / 2.5, max(xs) * 5)  # room for the labels right of the points
            ys = [p[1] for p in xy] + ([floor] if floor is not None else [])
            pad = 0.12 * ((max(ys) - min(ys)) or abs(max(ys)) or 1.0)
            ax.set_ylim(min(0.0, min(ys)) - pad / 3, max(ys) + pad)
            label_points(ax, xy, [(row.label, colours[row.model]) for row, _, _ in points], PANEL_PT)
            ax.set_xlabel(f"{speed.label} ({speed.unit}, log scale; → faster)")
            ax.set_ylabel(f"{score.header()}")
            ax.set_title(f"{score.label} vs {speed.label}")
        heading = f"{group.name}: sample quality against throughput (mean ± std over seeds)"
        caption = QUALITY_SPEED_CAPTION.format(score=score.label) + (
            FLOOR_SENTENCE if floor is not None else ""
        )
        if group.condition:
            caption += (
                f" Throughput of the runs measured {group.condition}: costs never average across conditions."
            )
        return render(fig, f"quality_speed_{group.name}", title, heading, caption, handles)


def read_history(runs: Sequence[Run]) -> pd.DataFrame:
    """history.csv of every run that has one, with model, run_id and seed columns."""
    frames = []
    for run in runs:
        path = run.path / "history.csv"
        try:
            history = pd.read_csv(path) if path.is_file() else None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            history = None  # a history is optional: the tables do not depend on it
        if history is not None and {"step", "split", "loss"} <= set(history.columns):
            frames.append(history.assign(model=run.model, run_id=run.run_id, seed=run.seed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _x_axes(history: pd.DataFrame) -> list[tuple[str, str]]:
    has_time = "wall_time_s" in history.columns and history.wall_time_s.notna().any()
    return [("step", "training step")] + ([("wall_time_s", "wall time (s)")] if has_time else [])


def plot_training_curves(group: str, runs: Sequence[Run], colours: dict[str, Any]) -> Rendered | Skipped:
    """Training loss per model, one line per seed (seaborn ``units=``)."""
    import seaborn as sns

    title = f"Training curves ({group})"
    history = read_history(runs)
    if history.empty:
        return Skipped(title, "no history.csv in these runs")
    xs = _x_axes(history)
    models = sorted(history.model.unique())
    with style():
        fig = figure(5.2 * len(xs), 2.9 * len(models) + 0.6)
        axes = fig.subplots(len(models), len(xs), squeeze=False)
        for i, model in enumerate(models):
            part = history[history.model == model]
            for c, (x, xlabel) in enumerate(xs):
                ax = axes[i][c]
                # Training rows only: a family's training objective need not be its validation
                # objective (the diffusion model trains on the simple loss, validates its bound in
                # nats); validation has its own figure, in bits/dim.
                lines = part[part.split == "train"].dropna(subset=[x, "loss"])
                if not lines.empty:
                    seeds = lines.assign(seed="seed " + lines.seed.astype(str))  # the legend names each
                    sns.lineplot(
                        data=seeds, x=x, y="loss", units="run_id", estimator=None, style="seed", ax=ax,
                        color=colours[model], linewidth=1.2,
                    )  # fmt: skip
                train = part[part.split == "train"]
                late = train.loss[train.step >= 0.1 * train.step.max()].dropna()
                if len(late) >= 3 and train.loss.max() > late.quantile(0.98) * 1.5:  # the first steps spike
                    ax.set_ylim(late.min() - 0.05 * abs(late.min()), late.quantile(0.98) * 1.25)
                ax.set_title(f"{model}: loss vs {xlabel.split(' (')[0]}")
                ax.set_ylabel("loss (model's objective)")
                ax.set_xlabel(xlabel)
                ax.legend(loc="upper right", fontsize=9, title=None)
        heading = f"{group}: training loss (one line per seed)"
        return render(fig, f"training_{group}", title, heading, TRAINING_CAPTION)


def plot_validation_bpd(group: str, runs: Sequence[Run], colours: dict[str, Any]) -> Rendered | Skipped:
    """Validation bits/dim of the likelihood models, one line per seed; bounds marked by the model's
    own likelihood kind (metrics.json "model_protocol")."""
    import seaborn as sns

    title = f"Validation bits/dim ({group})"
    history = read_history(runs)
    missing = "no validation bits/dim in history.csv (no likelihood model, or no history)"
    if history.empty or "bpd" not in history.columns:
        return Skipped(title, missing)
    val = history[(history.split == "val") & history.bpd.notna()]
    if val.empty:
        return Skipped(title, missing)
    kinds = {r.model: r.model_protocol.get("likelihood") for r in runs}
    names = {m: f"{m} ({KIND_MARKS[k]}{k})" if KIND_MARKS.get(k) else m for m, k in kinds.items()}
    val = val.assign(model=val.model.map(names), seed="seed " + val.seed.astype(str))
    hues = {names[m]: colours[m] for m in names}
    xs = _x_axes(val)
    with style():
        fig = figure(5.4 * len(xs), 4.4)
        for ax, (x, xlabel) in zip(fig.subplots(1, len(xs), squeeze=False)[0], xs, strict=True):
            sns.lineplot(
                data=val,
                x=x,
                y="bpd",
                hue="model",
                hue_order=sorted(val.model.unique()),
                palette=hues,
                style="seed",
                units="run_id",
                estimator=None,
                markers=True,
                markersize=5,
                ax=ax,
            )
            ax.set_xlabel(xlabel)
            ax.set_ylabel("validation bits/dim (↓ better)")
            ax.set_title(f"bits/dim vs {xlabel.split(' (')[0]}")
            ax.legend(fontsize=9)
        heading = f"{group}: validation bits/dim of the likelihood models (one line per seed)"
        return render(fig, f"val_bpd_{group}", title, heading, VAL_BPD_CAPTION)
