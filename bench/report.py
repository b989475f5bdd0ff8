"""`bench report`: comparison tables (Markdown, CSV, LaTeX, HTML), figures (PNG + SVG) and one
self-contained HTML page, from the finished run folders under results/ (see .notes/SCHEMA.md).

Every number carries its protocol. Runs are grouped by profile and by the protocol fields that change
what a number means (device, precision, test images, IWAE k, generated samples, feature network and
its checksum); seeds are averaged only inside such a group, and every table and figure names its group.

Nothing is half-written: the whole report is built in memory first, then every file is written under
a temporary name and moved into place with os.replace, so an error leaves the previous report intact.
Figures use matplotlib's object API (``Figure``, Agg rendering), never pyplot: no display is needed
and no global figure state is touched.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import html
import io
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from genbench.core.errors import UserError

FORMATS = ("md", "csv", "latex", "html")
DONE = "done"
RESERVED_DIRS = ("floors", "report")  # folders under results/ that are not runs
FLOOR_LABEL = "real data (test vs train)"

LIKELIHOOD_KEYS = ("nll_nats", "bpd", "recon_mse", "recon_bce")
IWAE_KEYS = ("iwae_nats", "iwae_bpd")
SAMPLE_METRICS = ("fid", "kid", "is", "precision", "recall")  # fid_<net> ...; the ones floors carry
BOUND_MARKED = ("nll_nats", "bpd", "iwae_nats", "iwae_bpd")  # "≤": the number is an upper bound on the NLL
SPEED_KEYS = ("train_images_per_s", "sample_images_per_s")
NETS = ("mnist", "inception")
COLUMN_ORDER = (
    ("recon_mse", "recon_bce", "nll_nats", "bpd", "iwae_nats", "iwae_bpd")
    + tuple(f"{m}_{net}" for net in NETS for m in SAMPLE_METRICS)
    + ("train_images_per_s", "sample_images_per_s", "peak_memory_mb", "parameters", "wall_time_s")
)
# Protocol fields of a group, in display order: (field, label).
PROTOCOL_FIELDS = (
    ("profile", "profile"),
    ("device", "device"),
    ("precision", "precision"),
    ("n_test", "test images"),
    ("iwae_k", "IWAE k"),
    ("iwae_images", "IWAE images"),
    ("n_samples", "generated samples"),
    ("feature_networks", "feature networks"),
)
NA = "n/a"
KIND_LABELS = {"rss": "process RSS", "cuda_allocator": "CUDA allocator"}
SECTIONS = (("likelihood", "Likelihood and reconstruction"), ("quality", "Sample quality"), ("cost", "Cost"))


def section_of(key: str) -> str:
    if key in LIKELIHOOD_KEYS or key in IWAE_KEYS or key.startswith(("recon", "nll", "bpd", "iwae")):
        return "likelihood"
    return "quality" if _net_of(key) else "cost"


# --------------------------------------------------------------------------------------------------
# Reading run folders


@dataclasses.dataclass(frozen=True)
class Run:
    """One run folder as read from disk."""

    run_id: str
    path: Path
    status: str
    reason: str | None
    config: dict[str, Any]
    metrics: dict[str, dict[str, Any]]  # KEY -> entry; empty when the run has no metrics.json
    created: dt.datetime | None
    protocol: dict[str, Any]  # the group signature, see protocol_of

    @property
    def model(self) -> str:
        return str(self.config.get("model", "?"))

    @property
    def profile(self) -> str:
        return str(self.config.get("profile", "?"))

    @property
    def seed(self) -> int | None:
        seed = self.config.get("seed")
        return int(seed) if seed is not None else None


@dataclasses.dataclass(frozen=True)
class Floor:
    """A real-data reference (results/floors/<net>_n<count>.json): train vs test through one network."""

    path: Path
    feature_network: str
    n_samples: int | None
    checksum: str | None
    metrics: dict[str, dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Results:
    """Everything the report reads: the long metric frame, the runs behind it and the floors."""

    frame: pd.DataFrame  # one row per (run, metric key); see COLUMNS
    runs: tuple[Run, ...]
    floors: tuple[Floor, ...]
    skipped: tuple[tuple[str, str], ...]  # (run id, status and reason) of unfinished runs left out
    group_of: dict[str, str]  # run id -> protocol group name
    groups: tuple[str, ...]  # group names in report order (profile smoke, quick, full; then protocol)

    def group_runs(self, group: str) -> list[Run]:
        return [r for r in self.runs if self.group_of[r.run_id] == group]


COLUMNS = (
    "group",
    "run_id",
    "model",
    "profile",
    "seed",
    "device",
    "device_name",
    "precision",
    "created",
    "git_commit",
    "status",
    "key",
    "label",
    "value",
    "unit",
    "higher_is_better",
    "kind",
    "n_images",
    "k",
    "n_samples",
    "feature_network",
    "checksum",
    "na",
    "protocol",
)


def _read_json(path: Path, fix: str) -> Any:
    try:
        text = path.read_bytes().decode("utf-8")
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON (line {exc.lineno}): {fix}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not valid JSON (not UTF-8 text): {fix}") from None
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror}): {fix}") from None


def _parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        return None


def _at_or_after(created: dt.datetime | None, since: dt.datetime) -> bool:
    if created is None:
        return False
    # A naive time is local time; make both sides aware (or both naive) before comparing.
    if created.tzinfo is None and since.tzinfo is not None:
        created = created.astimezone()
    elif created.tzinfo is not None and since.tzinfo is None:
        since = since.astimezone()
    return created >= since


def _checksum(protocol: dict[str, Any]) -> str | None:
    """A feature-network checksum recorded in a protocol (any field named like sha256 or checksum)."""
    for name, value in protocol.items():
        lowered = name.lower()
        if isinstance(value, str) and value and ("sha" in lowered or "checksum" in lowered):
            return value
    return None


def _net_of(key: str) -> str | None:
    head, _, net = key.partition("_")
    return net if head in SAMPLE_METRICS and net else None


def protocol_of(config: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The group signature of a run: what a number depends on besides the model and the seed.

    Values recorded beside the metrics win; the profile's eval_config fills what a model does not
    measure (a GAN has no NLL, yet belongs with the VAE that was evaluated on the same test images).
    """
    evaluation = config.get("eval_config") or {}

    def stated(keys: Iterable[str], field: str) -> Any:
        for key in keys:
            value = ((metrics.get(key) or {}).get("protocol") or {}).get(field)
            if value is not None:
                return value
        return None

    n_test = stated(LIKELIHOOD_KEYS, "n_images")
    if n_test is None and "n_test" in evaluation:
        n_test = evaluation["n_test"] if evaluation["n_test"] is not None else 10_000
    iwae_images = stated(IWAE_KEYS, "n_images")
    if iwae_images is None and "iwae_images" in evaluation:
        iwae_images = evaluation["iwae_images"] if evaluation["iwae_images"] is not None else n_test
    sample_keys = sorted(k for k in metrics if _net_of(k))
    measured = [k for k in sample_keys if metrics[k].get("value") is not None]
    nets: dict[str, str | None] = {}
    for key in measured:
        protocol = metrics[key].get("protocol") or {}
        net = str(protocol.get("feature_network") or _net_of(key))
        nets[net] = nets.get(net) or _checksum(protocol)
    if not nets:
        nets = {str(net): None for net in evaluation.get("feature_networks") or ()}
    n_samples = stated(measured or sample_keys, "n_samples")
    if n_samples is None:
        n_samples = evaluation.get("n_samples")
    return {
        "profile": config.get("profile"),
        "device": config.get("device"),
        "precision": config.get("precision"),
        "n_test": n_test,
        "iwae_k": stated(IWAE_KEYS, "k") or (evaluation.get("iwae_k") if "iwae_k" in evaluation else None),
        "iwae_images": iwae_images,
        "n_samples": n_samples,
        "feature_networks": tuple(f"{net}@{sha[:12]}" if sha else net for net, sha in sorted(nets.items())),
    }


def _group_key(protocol: dict[str, Any]) -> tuple[str, ...]:
    return tuple(f"{field}={protocol.get(field)!r}" for field, _ in PROTOCOL_FIELDS)


def _scan(results_dir: Path, out_dir: Path | None) -> list[Path]:
    if not results_dir.is_dir():
        return []
    skip = {out_dir.resolve()} if out_dir is not None else set()
    found = []
    for path in sorted(results_dir.iterdir()):
        if (
            not path.is_dir()
            or path.name.startswith(".")
            or path.name in RESERVED_DIRS
            or path.resolve() in skip
        ):
            continue
        if any((path / name).is_file() for name in ("status.json", "config.json", "metrics.json")):
            found.append(path)
    return found


def _read_run(path: Path, status: str, reason: str | None) -> Run:
    fix = "delete or fix that run folder"
    config = _read_json(path / "config.json", fix) if (path / "config.json").is_file() else {}
    metrics_file = path / "metrics.json"
    if not metrics_file.is_file():
        if status == DONE:
            raise UserError(f"{metrics_file} is missing although {path / 'status.json'} says done: {fix}")
        metrics_doc: dict[str, Any] = {}
    else:
        metrics_doc = _read_json(metrics_file, fix)
        if not isinstance(metrics_doc, dict) or not isinstance(metrics_doc.get("metrics"), dict):
            raise UserError(f"{metrics_file} has no 'metrics' object (see .notes/SCHEMA.md): {fix}")
    if not isinstance(config, dict):
        raise UserError(f"{path / 'config.json'} is not a JSON object: {fix}")
    # metrics.json repeats the identity fields; they stand in for a missing config.json.
    for field in ("run_id", "model", "profile", "seed", "device"):
        if config.get(field) is None and metrics_doc.get(field) is not None:
            config = {**config, field: metrics_doc[field]}
    metrics = {str(k): v for k, v in metrics_doc.get("metrics", {}).items() if isinstance(v, dict)}
    return Run(
        run_id=path.name,  # the folder name is the run id, and unique
        path=path,
        status=status,
        reason=reason,
        config=config,
        metrics=metrics,
        created=_parse_time(config.get("created")),
        protocol=protocol_of(config, metrics),
    )


def _read_floors(results_dir: Path) -> list[Floor]:
    folder = results_dir / "floors"
    floors = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        doc = _read_json(path, "delete or fix that file (re-create it with `bench floors`)")
        if not isinstance(doc, dict) or not isinstance(doc.get("metrics"), dict):
            raise UserError(f"{path} has no 'metrics' object: delete it or re-create it with `bench floors`")
        metrics = {str(k): v for k, v in doc["metrics"].items() if isinstance(v, dict)}
        net = doc.get("feature_network") or next((_net_of(k) for k in metrics if _net_of(k)), None)
        checksum = _checksum(doc) or next(
            (_checksum(e.get("protocol") or {}) for e in metrics.values()), None
        )
        n = doc.get("n_samples")
        floors.append(Floor(path, str(net), int(n) if n is not None else None, checksum, metrics))
    return floors


def _frame(runs: Sequence[Run], groups: dict[tuple[str, ...], str]) -> pd.DataFrame:
    rows = []
    for run in runs:
        config = run.config
        for key, entry in run.metrics.items():
            protocol = entry.get("protocol") or {}
            value = entry.get("value")
            rows.append(
                {
                    "group": groups[_group_key(run.protocol)],
                    "run_id": run.run_id,
                    "model": run.model,
                    "profile": run.profile,
                    "seed": run.seed,
                    "device": config.get("device"),
                    "device_name": config.get("device_name"),
                    "precision": config.get("precision"),
                    "created": config.get("created"),
                    "git_commit": config.get("git_commit"),
                    "status": run.status,
                    "key": key,
                    "label": entry.get("label") or key,
                    "value": float(value) if isinstance(value, (int, float)) else math.nan,
                    "unit": entry.get("unit") or "",
                    "higher_is_better": entry.get("higher_is_better"),
                    "kind": protocol.get("kind"),
                    "n_images": protocol.get("n_images"),
                    "k": protocol.get("k"),
                    "n_samples": protocol.get("n_samples"),
                    "feature_network": protocol.get("feature_network") or _net_of(key),
                    "checksum": _checksum(protocol),
                    "na": entry.get("na") if value is None else None,
                    "protocol": json.dumps(protocol, sort_keys=True, default=str),
                }
            )
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["value"] = frame["value"].astype(float)
    return frame


def load_results(
    results_dir: Path,
    models: Sequence[str] = (),
    profile: str | None = None,
    since: dt.datetime | None = None,
    runs: Sequence[str] = (),
    include_unfinished: bool = False,
    out_dir: Path | None = None,
) -> Results:
    """Read and filter the run folders under ``results_dir``; raise UserError when nothing is left."""
    results_dir = Path(results_dir)
    where = f"{results_dir}/"
    folders = _scan(results_dir, out_dir)
    if runs:
        wanted = set(runs)
        known = {p.name for p in folders}
        unknown = sorted(wanted - known)
        if unknown:
            raise UserError(
                f"no run folder {', '.join(unknown)} under {where}: list them with `ls {results_dir}`"
            )
        folders = [p for p in folders if p.name in wanted]
    read: list[Run] = []
    skipped: list[tuple[str, str]] = []
    for path in folders:
        status_file = path / "status.json"
        if status_file.is_file():
            doc = _read_json(status_file, "delete or fix that run folder")
            doc = doc if isinstance(doc, dict) else {}
            status, reason = str(doc.get("status") or "unknown"), doc.get("reason")
        else:
            status, reason = "unknown", "no status.json"
        if status != DONE and not include_unfinished:
            skipped.append((path.name, status + (f": {reason}" if reason else "")))
            continue
        read.append(_read_run(path, status, reason))
    if not read:
        hint = f" ({len(skipped)} unfinished skipped; --include-unfinished shows them)" if skipped else ""
        raise UserError(f"no finished runs under {where}{hint}: run `bench run` first")

    selected = read
    if models:
        lowered = {m.lower() for m in models}
        available = sorted({r.model for r in selected})
        missing = sorted(lowered - {m.lower() for m in available})
        if missing:
            raise UserError(
                f"no finished runs of {', '.join(missing)} under {where}: "
                f"models found: {', '.join(available)}"
            )
        selected = [r for r in selected if r.model.lower() in lowered]
    if profile is not None:
        available = sorted({r.profile for r in selected})
        selected = [r for r in selected if r.profile == profile]
        if not selected:
            raise UserError(
                f"no finished runs with profile {profile!r} under {where}: "
                f"profiles found: {', '.join(available)}"
            )
    if since is not None:
        selected = [r for r in selected if _at_or_after(r.created, since)]
        if not selected:
            raise UserError(f"no finished runs created since {since.isoformat()} under {where}: drop --since")
    if not any(r.metrics for r in selected):
        raise UserError(f"no finished runs with metrics under {where}: run `bench run` first")

    groups = _name_groups(selected)
    return Results(
        frame=_frame(selected, groups),
        runs=tuple(selected),
        floors=tuple(_read_floors(results_dir)),
        skipped=tuple(skipped),
        group_of={r.run_id: groups[_group_key(r.protocol)] for r in selected},
        groups=tuple(groups.values()),
    )


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c == "." else "-" for c in text)


def _name_groups(runs: Sequence[Run]) -> dict[tuple[str, ...], str]:
    """Readable, file-name-safe group names in report order: "<profile>-<device>", plus the first
    protocol field that tells a group from the first one of the same profile and device
    (e.g. "quick-cpu-n500" for 500 generated samples)."""
    profile_rank = {"smoke": 0, "quick": 1, "full": 2}
    keys: dict[tuple[str, ...], dict[str, Any]] = {}
    for run in runs:
        keys.setdefault(_group_key(run.protocol), run.protocol)
    ordered = sorted(keys, key=lambda k: (profile_rank.get(str(keys[k]["profile"]), 9), k))
    short = {"precision": "", "n_test": "test", "iwae_k": "k", "iwae_images": "iwae", "n_samples": "n"}
    names: dict[tuple[str, ...], str] = {}
    first: dict[str, dict[str, Any]] = {}
    for key in ordered:
        protocol = keys[key]
        base = _slug(f"{protocol['profile']}-{protocol['device']}")
        name = base
        if base in first:
            differs = [f for f, _ in PROTOCOL_FIELDS if protocol.get(f) != first[base].get(f)]
            field = differs[0] if differs else ""
            value = protocol.get(field)
            if field == "feature_networks":
                name = f"{base}-{_slug('+'.join(value or ('none',)))}"
            elif field:
                name = f"{base}-{short.get(field, '')}{_slug(str(value))}"
        else:
            first[base] = protocol
        count = 2
        while name in names.values():
            name = f"{base}-{count}"
            count += 1
        names[key] = name
    return names


# --------------------------------------------------------------------------------------------------
# Tables


def _normal(text: str) -> str:
    return "".join(c for c in text.lower().replace("images", "img") if c.isalnum())


@dataclasses.dataclass(frozen=True)
class Column:
    key: str
    label: str
    unit: str
    higher_is_better: bool | None
    detail: str = ""  # e.g. "k=100" or "rss": part of the header

    @property
    def arrow(self) -> str:
        return {True: "↑", False: "↓"}.get(self.higher_is_better, "")  # type: ignore[arg-type]

    def header(self) -> str:
        unit = (
            "" if self.unit in ("", "-", "count") or _normal(self.unit) in _normal(self.label) else self.unit
        )
        extras = [u for u in (unit, self.detail) if u]
        text = self.label + (f" ({', '.join(extras)})" if extras else "")
        return f"{text} {self.arrow}".strip()


@dataclasses.dataclass(frozen=True)
class Cell:
    mean: float | None
    std: float | None
    n: int
    na: str | None = None  # reason, when mean is None
    bound: bool = False
    best: bool = False


@dataclasses.dataclass(frozen=True)
class Row:
    label: str
    seeds: tuple[int, ...]
    n: int
    cells: tuple[Cell, ...]
    floor: bool = False


@dataclasses.dataclass(frozen=True)
class Table:
    group: str
    protocol: dict[str, Any]
    columns: tuple[Column, ...]
    rows: tuple[Row, ...]
    unmeasured: tuple[tuple[str, str, str], ...]  # (key, header, reason) of columns no model has

    def caption(self) -> str:
        return protocol_line(self.protocol, self.seeds())

    def seeds(self) -> tuple[int, ...]:
        return tuple(sorted({s for row in self.rows if not row.floor for s in row.seeds}))

    def na_reasons(self) -> list[str]:
        reasons: list[str] = []
        for row in self.rows:
            for cell in row.cells:
                if cell.mean is None and cell.na and cell.na not in reasons:
                    reasons.append(cell.na)
        return reasons

    def sections(self) -> list[tuple[str, Table]]:
        """Sub-tables by kind of metric (likelihood, sample quality, cost), each with the model rows
        and, where it has numbers there, the real-data floor row."""
        out = []
        for name, title in SECTIONS:
            index = [j for j, c in enumerate(self.columns) if section_of(c.key) == name]
            if not index:
                continue
            rows = []
            for row in self.rows:
                cells = tuple(row.cells[j] for j in index)
                if row.floor and all(c.mean is None for c in cells):
                    continue
                rows.append(dataclasses.replace(row, cells=cells))
            columns = tuple(self.columns[j] for j in index)
            unmeasured = tuple(u for u in self.unmeasured if section_of(u[0]) == name)
            out.append(
                (title, dataclasses.replace(self, columns=columns, rows=tuple(rows), unmeasured=unmeasured))
            )
        return out

    @property
    def has_bound(self) -> bool:
        return any(c.bound and c.mean is not None for r in self.rows for c in r.cells)


def protocol_line(protocol: dict[str, Any], seeds: Sequence[int]) -> str:
    parts = []
    for field, label in PROTOCOL_FIELDS:
        value = protocol.get(field)
        if value is None or value == ():
            continue
        if isinstance(value, tuple):
            value = ", ".join(value)
        parts.append(f"{label} {value}")
    parts.append(f"seeds {', '.join(str(s) for s in seeds) or '?'}")
    return "Protocol: " + "; ".join(parts)


def _column_order(keys: Iterable[str]) -> list[str]:
    rank = {k: i for i, k in enumerate(COLUMN_ORDER)}
    return sorted(set(keys), key=lambda k: (rank.get(k, len(rank)), k))


def _uniform(values: Iterable[Any]) -> Any:
    distinct = {v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))}
    return distinct.pop() if len(distinct) == 1 else None


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std (ddof=1) and count of every metric over the seeds of each (group, model)."""
    valued = frame.dropna(subset=["value"])
    stats = valued.groupby(["group", "model", "key"], sort=True)["value"].agg(["mean", "std", "count"])
    return stats.rename(columns={"count": "n"})


def _floor_for(floors: Sequence[Floor], protocol: dict[str, Any]) -> dict[str, float]:
    """Floor values matching the group's feature networks (and checksums) and sample count."""
    values: dict[str, float] = {}
    for spec in protocol.get("feature_networks") or ():
        net, _, sha = spec.partition("@")
        for floor in floors:
            if floor.feature_network != net or floor.n_samples != protocol.get("n_samples"):
                continue
            if sha and floor.checksum and not floor.checksum.startswith(sha):
                continue
            for key, entry in floor.metrics.items():
                if isinstance(entry.get("value"), (int, float)) and _net_of(key) == net:
                    values[key] = float(entry["value"])
    return values


def build_tables(results: Results) -> list[Table]:
    """One table per protocol group: a row per model (seeds averaged) plus the real-data floor."""
    frame = results.frame
    stats = summarize(frame)
    protocols = {results.group_of[r.run_id]: r.protocol for r in results.runs}
    tables = []
    for group in [g for g in results.groups if g in set(frame.group)]:
        part = frame[frame.group == group]
        protocol = protocols[group]
        models = sorted(part.model.unique())
        floor = _floor_for(results.floors, protocol)
        columns, unmeasured = [], []
        for key in _column_order(part.key.unique()):
            rows = part[part.key == key]
            detail = ""
            if key in IWAE_KEYS and protocol.get("iwae_k"):
                detail = f"k={protocol['iwae_k']}"
            elif _uniform(rows.kind) not in (None, "exact", "bound"):
                kind = str(_uniform(rows.kind))  # e.g. peak memory: "rss" or "cuda_allocator"
                detail = KIND_LABELS.get(kind, kind)
            column = Column(
                key=key,
                label=str(rows.label.iloc[0]),
                unit=str(rows.unit.iloc[0]),
                higher_is_better=_uniform(rows.higher_is_better),
                detail=detail,
            )
            if rows.value.notna().any():
                columns.append(column)
            else:
                reasons = "; ".join(dict.fromkeys(str(r) for r in rows.na.dropna())) or "not measured"
                unmeasured.append((key, column.header(), reasons))
        body: list[Row] = []
        for model in models:
            runs = part[part.model == model]
            seeds = tuple(sorted(int(s) for s in runs.drop_duplicates("run_id").seed.dropna()))
            n_runs = runs.run_id.nunique()
            cells = []
            for column in columns:
                entries = runs[runs.key == column.key]
                bound = (entries.kind == "bound").any() and column.key in BOUND_MARKED
                if (group, model, column.key) in stats.index:
                    s = stats.loc[(group, model, column.key)]
                    std = float(s["std"]) if pd.notna(s["std"]) else None
                    cells.append(Cell(float(s["mean"]), std, int(s["n"]), bound=bool(bound)))
                else:
                    reason = "; ".join(dict.fromkeys(str(r) for r in entries.na.dropna())) or "not measured"
                    cells.append(Cell(None, None, 0, na=reason))
            body.append(Row(model, seeds, n_runs, tuple(cells)))
        body = _mark_best(body, columns)
        if any(c.key in floor for c in columns):
            cells = tuple(Cell(floor.get(c.key), None, 1 if c.key in floor else 0) for c in columns)
            body.append(Row(FLOOR_LABEL, (), 0, cells, floor=True))
        tables.append(Table(group, protocol, tuple(columns), tuple(body), tuple(unmeasured)))
    return tables


def _mark_best(rows: list[Row], columns: Sequence[Column]) -> list[Row]:
    """Mark the best mean of each column by its direction; ties are all marked; needs two values."""
    marked = [list(r.cells) for r in rows]
    for j, column in enumerate(columns):
        if column.higher_is_better is None:
            continue
        values = [(i, r.cells[j].mean) for i, r in enumerate(rows) if r.cells[j].mean is not None]
        if len(values) < 2:
            continue
        best = (max if column.higher_is_better else min)(v for _, v in values)
        if all(math.isclose(v, best, rel_tol=1e-12, abs_tol=0.0) for _, v in values):
            continue  # all tied: nothing stands out
        for i, v in values:
            if math.isclose(v, best, rel_tol=1e-12, abs_tol=0.0):
                marked[i][j] = dataclasses.replace(marked[i][j], best=True)
    return [dataclasses.replace(r, cells=tuple(c)) for r, c in zip(rows, marked, strict=True)]


def format_number(x: float, key: str = "") -> str:
    """Four significant digits; parameter counts as 1.23M; tiny numbers in scientific notation."""
    if not math.isfinite(x):
        return str(x)
    if key == "parameters":
        for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(x) >= scale:
                return f"{x / scale:.3g}{suffix}"
        return f"{x:.0f}"
    if x != 0 and abs(x) < 1e-3:
        return f"{x:.3g}" if "e" in f"{x:.3g}" else f"{x:.2e}"
    return f"{x:,.{_decimals(x)}f}"


def _decimals(x: float, significant: int = 4) -> int:
    if x == 0:
        return 2
    return max(0, significant - 1 - math.floor(math.log10(abs(x))))


def _format_pair(cell: Cell, key: str) -> tuple[str, str | None]:
    assert cell.mean is not None
    mean = format_number(cell.mean, key)
    if cell.std is None or key == "parameters":  # a parameter count does not vary over seeds
        return mean, None
    if key == "parameters" or (cell.mean != 0 and abs(cell.mean) < 1e-3):
        return mean, format_number(cell.std, key)
    return mean, f"{cell.std:,.{_decimals(cell.mean)}f}"


def _cell_parts(cell: Cell, key: str, row_n: int) -> tuple[str, str | None, str]:
    """(value, std or None, suffix) of a valued cell; suffix notes a count below the row's runs."""
    mean, std = _format_pair(cell, key)
    suffix = f" (n={cell.n})" if 0 < cell.n < row_n else ""
    return mean, std, suffix


def _footnote_index(table: Table) -> dict[str, int]:
    return {reason: i + 1 for i, reason in enumerate(table.na_reasons())}


def _seed_text(row: Row) -> str:
    return ", ".join(str(s) for s in row.seeds) if not row.floor else "—"


def _table_notes(table: Table) -> list[str]:
    notes = [
        "mean ± sample std (ddof=1) over seeds; "
        "bold: best mean in the column by its arrow (not a significance test)"
    ]
    if table.has_bound:
        notes.append(
            "≤: upper bound on the NLL (negative ELBO, or IWAE with k samples); the exact NLL is lower"
        )
    if any(r.floor for r in table.rows):
        notes.append(
            f"{FLOOR_LABEL}: held-out test images scored against training images through the same network"
        )
    by_reason: dict[str, list[str]] = {}
    for _, header, reason in table.unmeasured:
        by_reason.setdefault(reason, []).append(header.rstrip(" ↑↓"))
    for reason, headers in by_reason.items():
        notes.append(f"not measured in this protocol: {', '.join(headers)} ({reason})")
    return notes


def _md_table(table: Table, notes_index: dict[str, int]) -> str:
    headers = ["Model", "n", "Seeds"] + [c.header() for c in table.columns]
    lines = []
    for row in table.rows:
        cells = [
            f"*{row.label}*" if row.floor else row.label,
            str(row.n) if not row.floor else "—",
            _seed_text(row),
        ]
        for cell, column in zip(row.cells, table.columns, strict=True):
            if cell.mean is None:
                cells.append("—" if row.floor else f"{NA} [{notes_index[cell.na]}]" if cell.na else NA)
                continue
            mean, std, suffix = _cell_parts(cell, column.key, row.n)
            text = ("≤ " if cell.bound else "") + mean + (f" ± {std}" if std else "")
            cells.append((f"**{text}**" if cell.best else text) + suffix)
        lines.append(cells)
    return pd.DataFrame(lines, columns=headers).to_markdown(index=False, disable_numparse=True)


def render_markdown(tables: Sequence[Table]) -> str:
    """Per group: the protocol line, one table per section, then the notes and n/a reasons."""
    blocks = []
    for table in tables:
        notes_index = _footnote_index(table)
        parts = [f"### {table.group}", table.caption()]
        for title, sub in table.sections():
            parts.append(f"**{title}**\n\n{_md_table(sub, notes_index)}")
        notes = _table_notes(table) + [f"[{i}] {reason}" for reason, i in notes_index.items()]
        parts.append("\n".join(f"- {n}" for n in notes))
        blocks.append("\n\n".join(parts))
    return "\n\n".join(blocks) + "\n"


def render_csv(tables: Sequence[Table]) -> str:
    """Raw numbers: one row per (group, model) and per floor; <key>_mean, <key>_std, <key>_n columns."""
    records = []
    for table in tables:
        base = {field: _plain(table.protocol.get(field)) for field, _ in PROTOCOL_FIELDS}
        for row in table.rows:
            record = {
                "group": table.group,
                **base,
                "model": row.label,
                "n_runs": row.n,
                "seeds": " ".join(str(s) for s in row.seeds),
            }
            for cell, column in zip(row.cells, table.columns, strict=True):
                record[f"{column.key}_mean"] = cell.mean
                record[f"{column.key}_std"] = cell.std
                record[f"{column.key}_n"] = cell.n
                if column.key in BOUND_MARKED:
                    record[f"{column.key}_kind"] = (
                        ("bound" if cell.bound else "exact") if cell.mean is not None else None
                    )
                if cell.mean is None and not row.floor:
                    record[f"{column.key}_na"] = cell.na
            records.append(record)
    frame = pd.DataFrame(records)
    first = ["group", *(f for f, _ in PROTOCOL_FIELDS), "model", "n_runs", "seeds"]
    rank = {k: i for i, k in enumerate(COLUMN_ORDER)}
    rest = [c for c in frame.columns if c not in first]
    rest.sort(
        key=lambda c: (
            rank.get(c.rsplit("_", 1)[0], len(rank)),
            c.rsplit("_", 1)[0],
            ("mean", "std", "n", "kind", "na").index(c.rsplit("_", 1)[1]),
        )
    )
    return frame[first + rest].to_csv(index=False)


def _plain(value: Any) -> Any:
    return " ".join(value) if isinstance(value, tuple) else value


LATEX_SPECIAL = {
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
    "↓": r"$\downarrow$",
    "↑": r"$\uparrow$",
    "≤": r"$\leq$",
    "±": r"$\pm$",
    "—": "--",
}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(c, c) for c in text)


def _latex_table(table: Table, title: str, notes_index: dict[str, int], notes: Sequence[str]) -> str:
    headers = ["Model", "n", "Seeds"] + [latex_escape(c.header()) for c in table.columns]
    data, bold = [], []
    for row in table.rows:
        cells = [
            latex_escape(row.label),
            str(row.n) if not row.floor else "--",
            latex_escape(_seed_text(row)),
        ]
        flags = [False, False, False]
        for cell, column in zip(row.cells, table.columns, strict=True):
            flags.append(cell.best)
            if cell.mean is None:
                cells.append("--" if row.floor else f"n/a\\textsuperscript{{{notes_index[cell.na]}}}")
                continue
            mean, std, suffix = _cell_parts(cell, column.key, row.n)
            text = ("$\\leq$ " if cell.bound else "") + latex_escape(mean)
            cells.append(text + (f" $\\pm$ {latex_escape(std)}" if std else "") + latex_escape(suffix))
        data.append(cells)
        bold.append(flags)
    frame = pd.DataFrame(data, columns=headers)
    mask = np.array(bold, dtype=bool)
    styler = frame.style.hide(axis="index").apply(
        lambda _: np.where(mask, "font-weight: bold;", ""), axis=None
    )
    caption = latex_escape(f"{title} ({table.group}). {table.caption()}. " + "; ".join(notes) + ".")
    slug = "".join(c if c.isalnum() else "-" for c in title.lower())
    body = styler.to_latex(
        caption=caption,
        label=f"tab:genbench-{table.group}-{slug}",
        hrules=True,
        position="htbp",
        position_float="centering",
        column_format="lrl" + "r" * len(table.columns),
        convert_css=True,
    )
    # Wide tables shrink to the text width rather than run into the margin.
    body = body.replace("\\begin{tabular}", "\\resizebox{\\textwidth}{!}{%\n\\begin{tabular}")
    return body.replace("\\end{tabular}", "\\end{tabular}%\n}")


def render_latex(tables: Sequence[Table]) -> str:
    """pandas Styler.to_latex per group and section; best values bold through Styler CSS (\\bfseries)."""
    out = [
        "% genbench report tables. Needs \\usepackage{booktabs} and \\usepackage{graphicx} (for \\resizebox)."
    ]
    for table in tables:
        notes_index = _footnote_index(table)
        for title, sub in table.sections():
            used = {c.na for r in sub.rows for c in r.cells if c.mean is None and c.na}
            notes = _table_notes(sub) + [
                f"{i}: {reason}" for reason, i in notes_index.items() if reason in used
            ]
            out.append(_latex_table(sub, title, notes_index, notes))
    return "\n".join(out)


def _html_table(table: Table, title: str, notes_index: dict[str, int]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in ("Model", "n", "Seeds")) + "".join(
        f'<th title="{esc(c.key)}">{esc(c.header())}</th>' for c in table.columns
    )
    body = []
    for row in table.rows:
        cls = ' class="floor"' if row.floor else ""
        cells = [
            f"<th scope='row'>{esc(row.label)}</th>",
            f"<td>{row.n if not row.floor else '—'}</td>",
            f"<td>{esc(_seed_text(row))}</td>",
        ]
        for cell, column in zip(row.cells, table.columns, strict=True):
            if cell.mean is None:
                if row.floor:
                    cells.append('<td class="blank">—</td>')
                else:
                    mark = f"<sup>{notes_index[cell.na]}</sup>" if cell.na else ""
                    cells.append(f'<td class="na" title="{esc(cell.na or "")}">{NA}{mark}</td>')
                continue
            mean, std, suffix = _cell_parts(cell, column.key, row.n)
            text = esc(("≤ " if cell.bound else "") + mean + (f" ± {std}" if std else ""))
            tip = esc(f"{column.key}: mean {cell.mean!r}, std {cell.std!r}, n {cell.n}")
            if cell.best:
                cells.append(f'<td class="best" title="{tip}"><strong>{text}</strong>{esc(suffix)}</td>')
            else:
                cells.append(f'<td title="{tip}">{text}{esc(suffix)}</td>')
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    caption = (
        f"<span class='section'>{esc(title)}</span> <span class='protocol'>{esc(table.caption())}</span>"
    )
    return (
        f'<div class="table-wrap"><table class="results"><caption>{caption}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def render_html_tables(table: Table) -> str:
    """The group's section tables, then its notes and numbered n/a reasons (also tooltips on each n/a)."""
    esc = html.escape
    notes_index = _footnote_index(table)
    parts = [_html_table(sub, title, notes_index) for title, sub in table.sections()]
    foot = "".join(f"<li>{esc(n)}</li>" for n in _table_notes(table))
    foot += "".join(f"<li><sup>{i}</sup> n/a: {esc(reason)}</li>" for reason, i in notes_index.items())
    return "".join(parts) + f'<ul class="notes">{foot}</ul>'


# --------------------------------------------------------------------------------------------------
# Figures

RC = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "figure.titlesize": 13,
    "savefig.dpi": 110,
    "svg.hashsalt": "genbench",  # deterministic SVG ids
    "svg.fonttype": "none",  # text stays text in the SVG: smaller, selectable, faster to write
}


@dataclasses.dataclass(frozen=True)
class Rendered:
    name: str  # file stem under figures/
    title: str
    caption: str
    png: bytes
    svg: bytes


@dataclasses.dataclass(frozen=True)
class Skipped:
    title: str
    reason: str


@contextlib.contextmanager
def _style() -> Iterator[None]:
    import matplotlib as mpl
    import seaborn as sns

    with mpl.rc_context(RC), sns.axes_style("whitegrid"):
        yield


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _render(fig, name: str, title: str, caption: str) -> Rendered:
    png, svg = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png")  # runs the constrained layout
    fig.set_layout_engine("none")  # keep those positions for the SVG: layout is most of the cost
    fig.savefig(svg, format="svg", metadata={"Date": None})
    return Rendered(name, title, caption, png.getvalue(), svg.getvalue())


def _palette(models: Sequence[str]) -> dict[str, Any]:
    import seaborn as sns

    colours = sns.color_palette("colorblind", max(len(models), 3))
    return {m: colours[i % len(colours)] for i, m in enumerate(models)}


def _direction_label(column: Column) -> str:
    unit = column.unit if column.unit not in ("", "-") else "score"
    unit = "parameters" if column.key == "parameters" else unit
    better = {True: " (↑ better)", False: " (↓ better)"}.get(column.higher_is_better, "")  # type: ignore[arg-type]
    return unit + better


def _wide_range(values: Iterable[float]) -> bool:
    positive = [v for v in values if v > 0]
    return len(positive) >= 2 and max(positive) / min(positive) > 50


def _grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols) with few empty slots: 5 -> 2x3, 6 -> 2x3, 7 -> 2x4."""
    ncols = n if n <= 4 else math.ceil(n / 2) if n <= 8 else 4
    return math.ceil(n / ncols), ncols


def _count_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: format_number(v, "parameters") if v else "0")


def plot_metric_bars(
    table: Table, frame: pd.DataFrame, colours: dict[str, Any], section: str = "Metrics"
) -> Rendered | Skipped:
    """One panel per column of ``table`` (a section of a group's table): mean bars, ± std, seed dots."""
    import seaborn as sns
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    title = f"{section} per model ({table.group})"
    columns = list(table.columns)
    if not columns:
        return Skipped(title, "no metric has a value")
    models = [r.label for r in table.rows if not r.floor]
    floor = next((r for r in table.rows if r.floor), None)
    nrows, ncols = _grid_shape(len(columns))
    rotate = len(models) > 5 or max(len(m) for m in models) > 9
    handles: dict[str, Any] = {}
    with _style():
        fig = _figure(3.6 * ncols, 3.1 * nrows + 0.9)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, (j, column) in zip(axes, enumerate(columns), strict=False):
            data = frame[(frame.key == column.key) & frame.value.notna() & frame.model.isin(models)]
            floor_value = floor.cells[j].mean if floor is not None else None
            log = _wide_range([*data.value, *([floor_value] if floor_value else [])])
            common = {"data": data, "x": "model", "y": "value", "order": models, "ax": ax}
            if log:  # a bar's length means nothing on a log axis: show the mean as a point instead
                sns.pointplot(
                    **common,
                    hue="model",
                    hue_order=models,
                    palette=colours,
                    errorbar="sd",
                    capsize=0.25,
                    linestyle="none",
                    marker="D",
                    markersize=7,
                    legend=False,
                )
                ax.set_yscale("log")
                positive = [v for v in (*data.value, floor_value) if v is not None and v > 0]
                ax.set_ylim(min(positive) / 1.8, max(positive) * 1.8)  # explicit: one point has no range
            else:
                sns.barplot(
                    **common,
                    hue="model",
                    hue_order=models,
                    palette=colours,
                    errorbar="sd",
                    capsize=0.25,
                    err_kws={"linewidth": 1.3},
                    legend=False,
                )
            sns.stripplot(**common, color="0.15", size=3.5, jitter=0.12, zorder=5)
            bound = {r.label for r in table.rows if not r.floor and r.cells[j].bound}
            for patch in ax.patches:
                index = round(patch.get_x() + patch.get_width() / 2)
                if 0 <= index < len(models) and models[index] in bound:
                    patch.set_hatch("///")
                    patch.set_edgecolor("0.25")
                    handles["bound"] = Patch(
                        facecolor="white",
                        edgecolor="0.25",
                        hatch="///",
                        label="upper bound on the NLL (ELBO / IWAE)",
                    )
            for i, row in enumerate(r for r in table.rows if not r.floor):
                if row.cells[j].mean is None:
                    ax.text(
                        i,
                        0.03,
                        NA,
                        transform=ax.get_xaxis_transform(),
                        ha="center",
                        va="bottom",
                        color="0.4",
                        fontsize=9,
                    )
            if floor_value is not None:
                ax.axhline(floor_value, color="0.3", linestyle="--", linewidth=1.3)
                handles["floor"] = Line2D([], [], color="0.3", linestyle="--", label=FLOOR_LABEL)
                if not log:  # keep the floor line off the frame edge
                    ax.set_ylim(top=max(ax.get_ylim()[1], floor_value * 1.08))
            if not log and len(data) and data.value.min() >= 0:  # no negative axis for a non-negative metric
                top = ax.get_ylim()[1]
                bottom = (
                    min(0.0, 1.3 * floor_value) if floor_value is not None else 0.0
                )  # KID's floor can be < 0
                ax.set_ylim(bottom, top if top > 0 else 1)
            if column.key == "parameters":
                ax.yaxis.set_major_formatter(_count_formatter())
            ax.set_title(column.label + (f" ({column.detail})" if column.detail else ""))
            ax.set_ylabel(_direction_label(column))
            ax.set_xlabel("")
            ax.set_xticks(
                range(len(models)), models, rotation=30 if rotate else 0, ha="right" if rotate else "center"
            )
        for ax in axes[len(columns) :]:
            fig.delaxes(ax)
        handles["seeds"] = Line2D(
            [], [], color="0.15", marker="o", linestyle="none", markersize=4, label="single seeds"
        )
        fig.legend(
            handles=list(handles.values()), loc="outside lower center", ncols=len(handles), frameon=False
        )
        fig.suptitle(f"{table.group} · {section.lower()}: mean ± std over seeds")
        caption = (
            "Bars: mean over seeds; error bars: ± sample std; dots: individual seeds. The arrow in each "
            "panel's axis label gives the better direction; the dashed line is the real-data floor "
            "(what real test images score). Hatched bars are upper bounds on the NLL (VAE ELBO / IWAE), "
            "not exact values; n/a marks a model the metric does not apply to. Panels spanning more than "
            "a factor of 50 use a log axis and show the mean as a diamond, since bar length means "
            "nothing there."
        )
        slug = section.split()[0].lower()
        return _render(fig, f"bars_{slug}_{table.group}", title, caption)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated by another that is at least as fast (x, higher better) and at
    least as good (y, lower better) and strictly better in one; sorted by x."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (xo >= x and yo <= y) and (xo > x or yo < y) for j, (xo, yo) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def plot_quality_speed(table: Table, frame: pd.DataFrame, colours: dict[str, Any]) -> Rendered | Skipped:
    from matplotlib.lines import Line2D

    title = f"Sample quality versus speed ({table.group})"
    fid_keys = [c.key for c in table.columns if c.key.startswith("fid_")]
    speed_keys = [c.key for c in table.columns if c.key in SPEED_KEYS]
    if not fid_keys:
        return Skipped(title, "no FID in this group yet")
    if not speed_keys:
        return Skipped(title, "no training or sampling throughput in this group")
    stats = summarize(frame[frame.group == table.group]).loc[table.group]
    both = [
        m
        for m in {m for m, _ in stats.index}
        if any((m, f) in stats.index for f in fid_keys) and any((m, s) in stats.index for s in speed_keys)
    ]
    if len(both) < 2:
        return Skipped(title, "fewer than two models have both an FID and a throughput: nothing to compare")
    by_key = {c.key: c for c in table.columns}
    floor = next((r for r in table.rows if r.floor), None)
    handles: dict[str, Any] = {}
    with _style():
        fig = _figure(5.6 * len(speed_keys), 4.3 * len(fid_keys) + 0.7)
        axes = fig.subplots(len(fid_keys), len(speed_keys), squeeze=False)
        for r, fid in enumerate(fid_keys):
            for c, speed in enumerate(speed_keys):
                ax = axes[r][c]
                pts, names = [], []
                for model in sorted({m for m, _ in stats.index}):
                    if (model, fid) not in stats.index or (model, speed) not in stats.index:
                        continue
                    sx, sy = stats.loc[(model, speed)], stats.loc[(model, fid)]
                    ax.errorbar(
                        sx["mean"],
                        sy["mean"],
                        xerr=_nan0(sx["std"]),
                        yerr=_nan0(sy["std"]),
                        fmt="o",
                        ms=8,
                        color=colours[model],
                        ecolor=colours[model],
                        capsize=3,
                        zorder=4,
                    )
                    pts.append((float(sx["mean"]), float(sy["mean"])))
                    names.append(model)
                ax.set_xlabel(f"{by_key[speed].label} (images/s, log scale; → faster)")
                ax.set_ylabel(f"{by_key[fid].label} (↓ better)")
                ax.set_title(f"{by_key[fid].label} vs {by_key[speed].label.lower()}")
                if not pts:
                    ax.text(0.5, 0.5, "no model has both numbers", transform=ax.transAxes, ha="center")
                    continue
                front = pareto_front(pts)
                fx, fy = [pts[i][0] for i in front], [pts[i][1] for i in front]
                if len(front) > 1:
                    ax.step(fx, fy, where="post", color="0.3", linestyle=":", linewidth=1.5, zorder=2)
                ax.scatter(fx, fy, s=280, facecolors="none", edgecolors="0.2", linewidths=1.3, zorder=3)
                handles["front"] = Line2D(
                    [],
                    [],
                    marker="o",
                    markersize=14,
                    markerfacecolor="none",
                    markeredgecolor="0.2",
                    color="0.3",
                    linestyle=":",
                    label="Pareto front (no model both faster and better)",
                )
                ax.set_xscale("log")
                xs = [p[0] for p in pts]
                ax.set_xlim(min(xs) / 2.5, max(xs) * 4)  # room for the labels right of the points
                top = max(y for _, y in pts)
                ax.set_ylim(0, top * 1.18 if top > 0 else 1)
                _label_points(ax, pts, names, colours, size_pt=(5.6 * 72 - 80, 4.3 * 72 - 75))
                fid_floor = floor.cells[table.columns.index(by_key[fid])].mean if floor else None
                if fid_floor is not None:
                    ax.axhline(fid_floor, color="0.3", linestyle="--", linewidth=1.3, zorder=1)
                    handles["floor"] = Line2D([], [], color="0.3", linestyle="--", label=f"{FLOOR_LABEL} FID")
        if handles:
            fig.legend(
                handles=list(handles.values()), loc="outside lower center", ncols=len(handles), frameon=False
            )
        fig.suptitle(f"{table.group}: sample quality against throughput (mean ± std over seeds)")
        caption = (
            "Lower right is better: low FID at high throughput. Circled models lie on the Pareto front "
            "(no other model is both faster and better); the dotted staircase joins them. Error bars are "
            "± std over seeds; the dashed line is the FID of real test images against training images, "
            "the best a model can expect with this many samples."
        )
        return _render(fig, f"quality_speed_{table.group}", title, caption)


def _label_points(
    ax,
    points: Sequence[tuple[float, float]],
    names: Sequence[str],
    colours: dict[str, Any],
    size_pt: tuple[float, float],
) -> None:
    """Name each point beside it, trying positions around it until the label overlaps neither another
    label nor a point. Works on the final limits in points (log x); ``size_pt`` is the axes' rough size."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    log = ax.get_xscale() == "log"

    def to_pt(x: float, y: float) -> tuple[float, float]:
        fx = (
            (math.log10(x) - math.log10(x0)) / (math.log10(x1) - math.log10(x0))
            if log
            else (x - x0) / (x1 - x0)
        )
        return fx * size_pt[0], (y - y0) / (y1 - y0) * size_pt[1]

    marks = [to_pt(x, y) for x, y in points]
    taken = [(px - 9, py - 9, px + 9, py + 9) for px, py in marks]  # the markers (and Pareto rings)
    candidates = (
        (9, 6, "left", "bottom"),
        (9, -6, "left", "top"),
        (-9, 6, "right", "bottom"),
        (-9, -6, "right", "top"),
        (0, 11, "center", "bottom"),
        (0, -11, "center", "top"),
    )
    for (px, py), (x, y), name in zip(marks, points, names, strict=True):
        width, height = 6.6 * len(name) + 2, 13.0  # 10 pt bold text
        choice = candidates[0]
        for dx, dy, ha, va in candidates:
            left = px + dx - {"left": 0, "right": width, "center": width / 2}[ha]
            bottom = py + dy - (height if va == "top" else 0)
            box = (left, bottom, left + width, bottom + height)
            inside = box[0] >= 0 and box[2] <= size_pt[0] and box[1] >= 0 and box[3] <= size_pt[1]
            clear = all(box[2] <= o[0] or box[0] >= o[2] or box[3] <= o[1] or box[1] >= o[3] for o in taken)
            if inside and clear:
                choice = (dx, dy, ha, va)
                taken.append(box)
                break
        dx, dy, ha, va = choice
        ax.annotate(
            name,
            (x, y),
            xytext=(dx, dy),
            textcoords="offset points",
            ha=ha,
            va=va,
            fontsize=10,
            color=colours[name],
            fontweight="bold",
        )


def _nan0(x: Any) -> float:
    return 0.0 if x is None or pd.isna(x) else float(x)


def _read_history(runs: Sequence[Run]) -> pd.DataFrame:
    frames = []
    for run in runs:
        path = run.path / "history.csv"
        if not path.is_file():
            continue
        try:
            history = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            continue  # a history is optional for the report; the tables do not depend on it
        if not {"step", "split", "loss"} <= set(history.columns):
            continue
        history = history.assign(model=run.model, run_id=run.run_id, seed=run.seed)
        frames.append(history)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _robust_ylim(ax, values: pd.Series, steps: pd.Series) -> None:
    """Clip the start-of-training spike so late training is readable (the caption says so)."""
    values = values[np.isfinite(values)]
    if len(values) < 5:
        return
    late = values[steps.loc[values.index] >= 0.1 * steps.max()]
    if late.empty:
        return
    lo, hi = float(late.min()), float(late.quantile(0.98))
    if float(values.max()) > hi + 0.5 * (hi - lo):
        pad = 0.08 * (hi - lo or abs(hi) or 1.0)
        ax.set_ylim(lo - pad, hi + 3 * pad)


def _seed_lines(ax, data: pd.DataFrame, x: str, y: str, label: str, **style: Any) -> None:
    """One line per run (seed), one legend entry."""
    for i, (_, run) in enumerate(data.sort_values(x).groupby("run_id", sort=True)):
        ax.plot(run[x], run[y], label=label if i == 0 else "_nolegend_", **style)


def plot_training_curves(table: Table, runs: Sequence[Run], colours: dict[str, Any]) -> Rendered | Skipped:
    import seaborn as sns

    title = f"Training curves ({table.group})"
    history = _read_history(runs)
    if history.empty:
        return Skipped(title, "no history.csv in these runs")
    has_time = "wall_time_s" in history.columns and history.wall_time_s.notna().any()
    xs = [("step", "training step")] + ([("wall_time_s", "wall time (s)")] if has_time else [])
    models = sorted(history.model.unique())
    with _style():
        fig = _figure(5.2 * len(xs), 2.9 * len(models) + 0.6)
        axes = fig.subplots(len(models), len(xs), squeeze=False)
        for i, model in enumerate(models):
            part = history[history.model == model]
            train, val = part[part.split == "train"], part[part.split == "val"]
            colour = colours.get(model)
            for c, (x, xlabel) in enumerate(xs):
                ax = axes[i][c]
                if x == "step":  # seeds share steps: mean line, min-max band
                    if not train.empty:
                        sns.lineplot(
                            data=train,
                            x=x,
                            y="loss",
                            color=colour,
                            linewidth=1.3,
                            label="train",
                            errorbar=("pi", 100),
                            ax=ax,
                        )
                    if not val.empty:
                        sns.lineplot(
                            data=val,
                            x=x,
                            y="loss",
                            color="0.15",
                            linestyle="--",
                            marker="o",
                            markersize=5,
                            label="validation",
                            errorbar=("pi", 100),
                            ax=ax,
                        )
                else:  # seeds do not share times: one line each
                    _seed_lines(ax, train, x, "loss", "train", color=colour, linewidth=1.2)
                    _seed_lines(
                        ax,
                        val,
                        x,
                        "loss",
                        "validation",
                        color="0.15",
                        linestyle="--",
                        marker="o",
                        markersize=5,
                    )
                _robust_ylim(ax, part["loss"], part["step"])
                ax.set_title(f"{model}: loss vs {xlabel.split(' (')[0]}")
                ax.set_ylabel("loss (model's objective)")
                ax.set_xlabel(xlabel)
                ax.legend(loc="upper right", fontsize=9)
        n_seeds = history.groupby("model").run_id.nunique().max()
        band = "shaded: min–max over seeds" if n_seeds > 1 else "one seed"
        fig.suptitle(f"{table.group}: training and validation loss ({band})")
        caption = (
            "One row per model; each model's loss is its own objective, so compare shapes, not levels, "
            "across rows. Look for convergence (flattening) and for validation loss rising above training "
            "loss (overfitting). Against step, seeds form a min–max band; against wall time each seed is "
            "its own line. The y-axis is clipped to late training when the first steps spike."
        )
        return _render(fig, f"training_{table.group}", title, caption)


def plot_validation_bpd(table: Table, runs: Sequence[Run], colours: dict[str, Any]) -> Rendered | Skipped:
    import seaborn as sns

    title = f"Validation bits/dim ({table.group})"
    history = _read_history(runs)
    missing = "no validation bits/dim in history.csv (no likelihood model, or no history)"
    if history.empty or "bpd" not in history.columns:
        return Skipped(title, missing)
    val = history[(history.split == "val") & history.bpd.notna()]
    if val.empty:
        return Skipped(title, missing)
    bound = {
        r.label
        for r in table.rows
        for c, col in zip(r.cells, table.columns, strict=True)
        if col.key in ("nll_nats", "bpd") and c.bound
    }
    val = val.assign(model=[f"{m} (bound)" if m in bound else m for m in val.model])
    palette = {f"{m} (bound)" if m in bound else m: colour for m, colour in colours.items()}
    has_time = "wall_time_s" in val.columns and val.wall_time_s.notna().any()
    xs = [("step", "training step")] + ([("wall_time_s", "wall time (s)")] if has_time else [])
    models = sorted(val.model.unique())
    with _style():
        fig = _figure(5.4 * len(xs), 4.4)
        axes = fig.subplots(1, len(xs), squeeze=False)[0]
        for ax, (x, xlabel) in zip(axes, xs, strict=True):
            if x == "step":
                sns.lineplot(
                    data=val,
                    x=x,
                    y="bpd",
                    hue="model",
                    hue_order=models,
                    palette=palette,
                    marker="o",
                    markersize=5,
                    errorbar=("pi", 100),
                    ax=ax,
                )
            else:
                for model in models:
                    _seed_lines(
                        ax,
                        val[val.model == model],
                        x,
                        "bpd",
                        model,
                        color=palette[model],
                        marker="o",
                        markersize=5,
                    )
                positive = val[x][val[x] > 0]
                if len(positive) and positive.max() / positive.min() > 100:
                    ax.set_xscale("log")
            ax.set_xlabel(xlabel + (", log scale" if ax.get_xscale() == "log" else ""))
            ax.set_ylabel("validation bits/dim (↓ better)")
            ax.set_title(f"bits/dim vs {xlabel.split(' (')[0]}")
            ax.legend(title="model", fontsize=9)
        fig.suptitle(f"{table.group}: validation bits/dim of the likelihood models")
        caption = (
            "Same scale for every likelihood model (bits per dimension on the 8-bit protocol), so levels "
            "compare directly. Models marked (bound) report the negative ELBO, an upper bound on their "
            "true bits/dim. Against wall time, see which model reaches a given bits/dim first; seeds are "
            "a band against step and separate lines against time."
        )
        return _render(fig, f"val_bpd_{table.group}", title, caption)


def _representative(runs: Sequence[Run]) -> dict[str, Run]:
    """One run per model for image panels: the lowest seed (then the newest)."""
    chosen: dict[str, Run] = {}
    for run in sorted(runs, key=lambda r: (r.seed if r.seed is not None else 1 << 30, -(_ts(r.created)))):
        chosen.setdefault(run.model, run)
    return dict(sorted(chosen.items()))


def _ts(created: dt.datetime | None) -> float:
    if created is None:
        return 0.0
    return (created if created.tzinfo else created.astimezone()).timestamp()


def _load_samples(run: Run) -> np.ndarray | None:
    """uint8 (N, H, W) from samples.pt, or None."""
    path = run.path / "samples.pt"
    if not path.is_file():
        return None
    import torch

    try:
        samples = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable tensor file only costs the report a panel
        return None
    if not isinstance(samples, torch.Tensor) or samples.dim() != 4:
        return None
    return samples[:, 0].to(torch.uint8).numpy()  # (N, H, W)


def _grid(images: np.ndarray, ncols: int = 8, pad: int = 2) -> np.ndarray:
    """uint8 (N, H, W) -> one grey (rows*(H+pad)+pad, cols*(W+pad)+pad) image, mid-grey padding."""
    n, h, w = images.shape
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad), 128, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, ncols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = (
            image
        )
    return grid


def _read_png(path: Path) -> np.ndarray | None:
    import matplotlib.image as mpimg

    try:
        return mpimg.imread(path)
    except Exception:  # noqa: BLE001 - a broken image costs the report a panel, not the report
        return None


def plot_samples(table: Table, runs: Sequence[Run]) -> Rendered | Skipped:
    title = f"Samples ({table.group})"
    panels = []
    for model, run in _representative(runs).items():
        samples = _load_samples(run)
        image = _grid(samples[:64]) if samples is not None else None
        if image is None and (run.path / "samples.png").is_file():
            image = _read_png(run.path / "samples.png")
        if image is not None:
            panels.append((model, run, image))
    if not panels:
        return Skipped(title, "no samples.pt or samples.png in these runs")
    with _style():
        fig = _figure(3.3 * len(panels), 4.0)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (model, run, image) in zip(axes, panels, strict=True):
            if image.ndim == 2:
                vmax = 255 if image.dtype == np.uint8 else 1.0
                ax.imshow(image, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
            else:
                ax.imshow(image, interpolation="nearest")
            ax.set_title(f"{model} · seed {run.seed}", fontsize=12)
            ax.set_axis_off()
        fig.suptitle(f"{table.group}: 64 random samples per model (uncurated)")
        caption = (
            "Uncurated samples, one run per model (lowest seed). Look for sharp strokes, all ten digit "
            "classes (mode coverage) and artefacts such as broken strokes, blur (typical of VAEs) or "
            "speckle noise (typical of pixel-level likelihood models)."
        )
        return _render(fig, f"samples_{table.group}", title, caption)


def plot_interpolations(table: Table, runs: Sequence[Run]) -> Rendered | Skipped:
    title = f"Latent interpolations ({table.group})"
    panels = []
    for model, run in _representative(runs).items():
        path = run.path / "interpolation.png"
        image = _read_png(path) if path.is_file() else None
        if image is not None:
            panels.append((model, run, image))
    if not panels:
        return Skipped(
            title, "no model in this group wrote interpolation.png (only models with a latent space do)"
        )
    # Wide strips (a few rows of many steps) stack; squarish ones sit side by side, up to three a row.
    aspect = max(p[2].shape[0] / p[2].shape[1] for p in panels)
    ncols = 1 if aspect < 0.45 else min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    panel_width = 10.0 if ncols == 1 else 4.6
    with _style():
        fig = _figure(panel_width * ncols, nrows * (panel_width * aspect + 0.45) + 0.5)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, (model, run, image) in zip(axes, panels, strict=False):
            cmap = "gray" if image.ndim == 2 else None
            ax.imshow(image, cmap=cmap, interpolation="nearest")
            ax.set_title(f"{model} · seed {run.seed}", fontsize=12)
            ax.set_axis_off()
        for ax in axes[len(panels) :]:
            fig.delaxes(ax)
        fig.suptitle(f"{table.group}: latent interpolations (each row: a straight line between two codes)")
        caption = (
            "Each row decodes points on a straight line between two latent codes. A smooth latent space "
            "morphs one digit into another through plausible digits; abrupt jumps or non-digit blends in "
            "the middle show holes in the latent space."
        )
        return _render(fig, f"interpolation_{table.group}", title, caption)


def nearest_training_images(
    samples: np.ndarray, train: np.ndarray, chunk: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """For uint8 samples (n, H, W) and training images (N, H, W): index and L2 distance (pixels scaled
    to [0, 1]) of each sample's nearest training image."""
    a = samples.reshape(len(samples), -1).astype(np.float64) / 255.0  # (n, D)
    a_sq = (a**2).sum(1)  # (n,)
    best_d = np.full(len(a), np.inf)
    best_i = np.zeros(len(a), dtype=np.int64)
    for start in range(0, len(train), chunk):
        b = train[start : start + chunk].reshape(-1, a.shape[1]).astype(np.float64) / 255.0  # (c, D)
        d2 = a_sq[:, None] + (b**2).sum(1)[None, :] - 2.0 * a @ b.T  # (n, c)
        i = d2.argmin(1)
        d = d2[np.arange(len(a)), i]
        better = d < best_d
        best_d[better], best_i[better] = d[better], i[better] + start
    return best_i, np.sqrt(np.clip(best_d, 0.0, None))


def _load_training_images(data_dir: Path | None) -> tuple[np.ndarray | None, str]:
    """MNIST training images (N, 28, 28) uint8, or None and the reason; never downloads."""
    from genbench.bench import data as bench_data

    try:
        mnist = bench_data.load_mnist(data_dir, download_missing=False)
    except UserError as exc:
        return None, str(exc)
    return mnist.train[:, 0].numpy(), ""


def _pair_mosaic(top: np.ndarray, bottom: np.ndarray, pad: int = 3) -> np.ndarray:
    """uint8 (k, H, W) twice -> one (2H + 3 pad, k (W + pad) + pad) image: top row above bottom row."""
    k, h, w = top.shape
    out = np.full((2 * h + 3 * pad, k * (w + pad) + pad), 255, dtype=np.uint8)
    for j in range(k):
        x = pad + j * (w + pad)
        out[pad : pad + h, x : x + w] = top[j]
        out[2 * pad + h : 2 * pad + 2 * h, x : x + w] = bottom[j]
    return out


def plot_nearest_neighbours(
    table: Table, runs: Sequence[Run], train: np.ndarray | None, why_not: str, n: int = 8
) -> Rendered | Skipped:
    title = f"Nearest training images ({table.group})"
    if train is None:
        return Skipped(title, f"MNIST not available ({why_not})")
    panels = []
    for model, run in _representative(runs).items():
        samples = _load_samples(run)
        if samples is not None and samples.shape[1:] == train.shape[1:]:
            index, distance = nearest_training_images(samples[:n], train)
            panels.append((model, run, samples[:n], train[index], distance))
    if not panels:
        return Skipped(title, "no samples.pt in these runs (the panel needs the raw sample tensor)")
    pad = 3
    with _style():
        fig = _figure(1.15 * n + 1.6, 2.9 * len(panels) + 0.5)
        axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
        for ax, (model, run, samples, nearest, distance) in zip(axes, panels, strict=True):
            # One image per model (not 2 x n axes): cheap to lay out, and pairs stay aligned.
            mosaic = _pair_mosaic(samples, nearest, pad)
            h, w = samples.shape[1:]
            ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.grid(False)
            ax.set_xticks(
                [pad + j * (w + pad) + w / 2 - 0.5 for j in range(len(samples))],
                [f"d={d:.2f}" for d in distance],
                fontsize=10,
            )
            ax.set_yticks(
                [pad + h / 2 - 0.5, 2 * pad + 1.5 * h - 0.5], ["sample", "nearest\ntrain"], fontsize=10
            )
            ax.tick_params(length=0)
            for spine in ax.spines.values():
                spine.set_visible(False)
            ax.set_title(f"{model} (seed {run.seed})", fontsize=12)
        fig.suptitle(f"{table.group}: generated samples (top) and their nearest training images (bottom)")
        caption = (
            "Each generated sample above its closest MNIST training image by L2 distance in pixel space "
            "(pixels scaled to [0, 1], d under each pair). Near-copies (nearly identical pairs, d much "
            "smaller than other models') suggest memorisation; different styles at a larger d suggest "
            "novel samples. L2 in pixel space is a coarse similarity."
        )
        return _render(fig, f"nearest_{table.group}", title, caption)


def build_figures(
    results: Results, tables: Sequence[Table], data_dir: Path | None
) -> list[Rendered | Skipped]:
    colours = _palette(sorted(results.frame.model.unique()))
    figures: list[Rendered | Skipped] = []
    needs_mnist = any((r.path / "samples.pt").is_file() for r in results.runs)
    train, why_not = _load_training_images(data_dir) if needs_mnist else (None, "no samples.pt in any run")
    for table in tables:
        frame = results.frame[results.frame.group == table.group]
        runs = results.group_runs(table.group)
        for section, sub in table.sections():
            figures.append(plot_metric_bars(sub, frame, colours, section))
        figures.append(plot_quality_speed(table, frame, colours))
        figures.append(plot_training_curves(table, runs, colours))
        figures.append(plot_validation_bpd(table, runs, colours))
        figures.append(plot_samples(table, runs))
        figures.append(plot_interpolations(table, runs))
        figures.append(plot_nearest_neighbours(table, runs, train, why_not))
    return figures


# --------------------------------------------------------------------------------------------------
# HTML page

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1250px; padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { margin-bottom: .2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2.2rem; }
.meta { color: #555; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: .92rem; }
th, td { border-bottom: 1px solid #e3e3e3; padding: .3rem .55rem; text-align: right; white-space: nowrap; }
th[scope=row], td:nth-child(3) { text-align: left; }
thead th { background: #f4f5f7; position: sticky; top: 0; vertical-align: bottom; white-space: normal; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: .3rem 0; }
td.best { background: #e5f4e7; } td.na { color: #888; cursor: help; }
tr.floor { font-style: italic; color: #444; background: #fafafa; }
.table-wrap { overflow-x: auto; }
.notes { font-size: .85rem; color: #555; }
table.kv th { text-align: left; background: none; position: static; font-weight: 600; }
table.kv td { text-align: left; white-space: normal; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .9rem; color: #333; max-width: 60rem; }
.skipped { color: #8a5a00; background: #fff8e6; padding: .4rem .7rem; border-left: 3px solid #e0a800; }
code { font-size: .88em; }
"""


def _distinct(values: Iterable[Any]) -> list[str]:
    return list(dict.fromkeys(str(v) for v in values if v not in (None, "")))


def _provenance(table: Table, runs: Sequence[Run]) -> str:
    esc = html.escape
    items: list[tuple[str, str]] = []
    for field, label in PROTOCOL_FIELDS:
        value = table.protocol.get(field)
        if field == "device":
            names = _distinct(r.config.get("device_name") for r in runs)
            value = f"{value} ({', '.join(names)})" if names else value
        if field == "feature_networks":
            value = ", ".join(value) if value else "none"
            value += " (name@sha256 prefix where the run recorded a checksum)"
        items.append((label, str(value)))
    by_model: dict[str, list[str]] = {}
    for run in runs:
        by_model.setdefault(run.model, []).append(str(run.seed))
    items.append(("seeds per model", "; ".join(f"{m}: {', '.join(s)}" for m, s in sorted(by_model.items()))))
    commits = _distinct(r.config.get("git_commit") for r in runs)
    items.append(("git commits", ", ".join(c[:12] for c in commits) or "not recorded"))
    for package in ("python", "torch", "torchvision", "torch_fidelity", "genbench"):
        found = _distinct((r.config.get("versions") or {}).get(package) for r in runs)
        if found:
            items.append((package, ", ".join(found) + ("  ⚠ mixed versions" if len(found) > 1 else "")))
    created = sorted(str(r.config.get("created")) for r in runs if r.config.get("created"))
    if created:
        items.append(("created", created[0] if len(created) == 1 else f"{created[0]} … {created[-1]}"))
    run_list = "".join(f"<li><code>{esc(r.run_id)}</code> ({esc(r.status)})</li>" for r in runs)
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in items)
    return (
        f'<table class="kv">{rows}</table>'
        f"<details><summary>{len(runs)} run(s)</summary><ul>{run_list}</ul></details>"
    )


def render_html(
    results: Results,
    tables: Sequence[Table],
    figures: Sequence[Rendered | Skipped],
    results_dir: Path,
    filters: str,
) -> str:
    esc = html.escape
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>genbench report</title><style>{CSS}</style></head><body>",
        "<h1>genbench report</h1>",
        f"<p class='meta'>Generated {esc(now)} from <code>{esc(str(results_dir))}</code>: "
        f"{len(results.runs)} runs in {len(tables)} protocol group(s). {esc(filters)}</p>",
    ]
    if results.skipped:
        listed = "".join(f"<li><code>{esc(r)}</code>: {esc(why)}</li>" for r, why in results.skipped)
        parts.append(
            f"<p class='skipped'>{len(results.skipped)} unfinished run(s) left out "
            f"(pass --include-unfinished to show them):</p><ul class='notes'>{listed}</ul>"
        )
    parts.append("<h2>Protocol and provenance</h2>")
    parts.append(
        "<p>Numbers are only averaged within a protocol group: runs that differ in profile, device, "
        "precision, test images, IWAE k, generated samples or feature network are reported apart.</p>"
    )
    for table in tables:
        parts.append(f"<h3>{esc(table.group)}</h3>{_provenance(table, results.group_runs(table.group))}")
    parts.append("<h2>Tables</h2>")
    for table in tables:
        parts.append(f"<h3>{esc(table.group)}</h3>{render_html_tables(table)}")
    parts.append("<h2>Figures</h2>")
    for figure in figures:
        if isinstance(figure, Skipped):
            parts.append(f"<h3>{esc(figure.title)}</h3><p class='skipped'>Skipped: {esc(figure.reason)}.</p>")
            continue
        data = base64.b64encode(figure.png).decode("ascii")
        parts.append(
            f"<h3>{esc(figure.title)}</h3><figure><img src='data:image/png;base64,{data}' "
            f"alt='{esc(figure.title)}'><figcaption>{esc(figure.caption)} "
            f"<a href='figures/{esc(figure.name)}.svg'>SVG</a></figcaption></figure>"
        )
    parts.append("</body></html>\n")
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------
# Writing and the entry point


@dataclasses.dataclass(frozen=True)
class ReportResult:
    out_dir: Path
    written: tuple[Path, ...]  # every file written, absolute or as given
    markdown: str  # the tables as Markdown, for the terminal
    n_runs: int
    n_skipped: int  # unfinished runs left out
    skipped_runs: tuple[str, ...]  # "run-id (status: reason)"
    notes: tuple[str, ...]  # figures skipped and why


def _write_all(out_dir: Path, files: dict[str, bytes]) -> list[Path]:
    """Write every file under a temporary name first, then os.replace them all into place."""
    staged: list[tuple[Path, Path]] = []
    try:
        for relative, payload in files.items():
            target = out_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
            temporary.write_bytes(payload)
            staged.append((temporary, target))
        for temporary, target in staged:
            os.replace(temporary, target)
    except PermissionError:
        raise UserError(
            f"cannot write the report to {out_dir}: permission denied; pass --out to a writable folder"
        ) from None
    finally:
        for temporary, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
    return [target for _, target in staged]


FIGURE_PREFIXES = (
    "bars_",
    "quality_speed_",
    "training_",
    "val_bpd_",
    "samples_",
    "interpolation_",
    "nearest_",
)


def _remove_stale_figures(out_dir: Path, keep: Iterable[str]) -> None:
    """Figures of an earlier report that this one did not redraw (a group that is gone, a plot now
    skipped) would contradict index.html; remove those, and only files this module names."""
    keep = set(keep)
    folder = out_dir / "figures"
    for path in folder.glob("*") if folder.is_dir() else ():
        if (
            path.suffix in (".png", ".svg")
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
) -> ReportResult:
    """Read results_dir, build tables and figures, and write them to out_dir (default results_dir/report).

    Writes summary.md, summary.csv + runs.csv, summary.tex, index.html (as ``formats`` asks) and
    figures/*.png + *.svg. Raises UserError before writing anything when there is nothing to report.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise UserError(f"unknown report format {', '.join(unknown)}: choose from {', '.join(FORMATS)}")
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir / "report"
    results = load_results(results_dir, models, profile, since, runs, include_unfinished, out_dir=out_dir)
    tables = build_tables(results)
    markdown = render_markdown(tables)
    figures = build_figures(results, tables, data_dir)

    filters = ", ".join(
        text
        for text in (
            f"models {', '.join(models)}" if models else "",
            f"profile {profile}" if profile else "",
            f"since {since.isoformat()}" if since else "",
            f"runs {', '.join(runs)}" if runs else "",
            "including unfinished runs" if include_unfinished else "",
        )
        if text
    )
    filters = f"Filters: {filters}." if filters else ""
    files: dict[str, bytes] = {}
    if "md" in formats:
        header = f"# genbench report\n\nFrom `{results_dir}`: {len(results.runs)} runs. {filters}\n\n"
        files["summary.md"] = (header + markdown).encode()
    if "csv" in formats:
        files["summary.csv"] = render_csv(tables).encode()
        files["runs.csv"] = results.frame.to_csv(index=False).encode()
    if "latex" in formats:
        files["summary.tex"] = render_latex(tables).encode()
    for figure in figures:
        if isinstance(figure, Rendered):
            files[f"figures/{figure.name}.png"] = figure.png
            files[f"figures/{figure.name}.svg"] = figure.svg
    if "html" in formats:
        files["index.html"] = render_html(results, tables, figures, results_dir, filters).encode()

    written = _write_all(out_dir, files)
    _remove_stale_figures(out_dir, files)
    return ReportResult(
        out_dir=out_dir,
        written=tuple(written),
        markdown=markdown,
        n_runs=len(results.runs),
        n_skipped=len(results.skipped),
        skipped_runs=tuple(f"{r} ({why})" for r, why in results.skipped),
        notes=tuple(f"{f.title}: skipped ({f.reason})" for f in figures if isinstance(f, Skipped)),
    )
