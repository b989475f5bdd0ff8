"""Reading run folders and floors, and grouping runs by protocol.

Only the results schema (``genbench.core.schema``) is read: a run's group is its metrics.json
"protocol" block, compared as JSON; nothing is inferred from a metric's key. A run folder that
cannot be read (bad JSON, not a metrics document, an older schema) is skipped with a one-line note
naming it, and the rest is reported.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from genbench.core.errors import UserError
from genbench.core.files import read_json
from genbench.core.schema import PROTOCOL_LABELS, SCHEMA_VERSION, SECTIONS, old_schema_message, schema_of
from genbench.models.base import PROFILE_NAMES

DONE = "done"
RESERVED_DIRS = ("floors", "report")  # folders under results/ that are not runs
FIX_RUN = "delete or fix that run folder"
FIX_FLOOR = "delete it, or re-create it with `bench floors`"
ENTRY_FIELDS = ("value", "label", "unit", "higher_is_better", "section", "order", "column")


@dataclasses.dataclass(frozen=True)
class Run:
    """One finished (or, on request, unfinished) run folder with a readable metrics.json."""

    run_id: str  # the folder name: unique under results/
    path: Path
    status: str
    config: dict[str, Any]  # config.json ({} when absent)
    doc: dict[str, Any]  # metrics.json

    @property
    def model(self) -> str:
        return str(self.doc["model"])

    @property
    def seed(self) -> int | None:
        return self.doc.get("seed")

    @property
    def protocol(self) -> dict[str, Any]:
        return self.doc["protocol"]

    @property
    def model_protocol(self) -> dict[str, Any]:
        return self.doc.get("model_protocol") or {}

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        return self.doc["metrics"]

    @property
    def created(self) -> dt.datetime | None:
        return _parse_time(self.config.get("created"))


@dataclasses.dataclass(frozen=True)
class Floor:
    """A real-data floor document (results/floors/*.json, written by ``bench floors``)."""

    path: Path
    doc: dict[str, Any]

    def matches(self, protocol: dict[str, Any]) -> bool:
        """Same dataset, sample count and reference subset as the group, through a feature network
        of the group whose weights have the same checksum."""
        stated = (protocol.get("feature_networks") or {}).get(self.doc.get("feature_network"))
        return (
            isinstance(stated, str)
            and str(self.doc.get("sha256", "")).startswith(stated)
            and all(self.doc.get(f) == protocol.get(f) for f in ("dataset", "n_samples", "reference"))
        )


@dataclasses.dataclass(frozen=True)
class Group:
    """Runs measured under one protocol: the only runs averaged together."""

    name: str  # short and file-name safe, e.g. "smoke-cpu"
    protocol: dict[str, Any]
    runs: tuple[Run, ...]
    floors: tuple[Floor, ...]  # the floors matching the protocol, newest first


@dataclasses.dataclass(frozen=True)
class Results:
    groups: tuple[Group, ...]
    skipped: tuple[tuple[str, str], ...]  # (run id, status and reason) of unfinished runs left out
    notes: tuple[str, ...]  # unreadable folders and floors, repeated seeds: one line each

    @property
    def runs(self) -> tuple[Run, ...]:
        return tuple(r for g in self.groups for r in g.runs)


def _parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.astimezone()  # a naive time is local time


def timestamp(run: Run) -> float:
    return run.created.timestamp() if run.created else float("-inf")


def _scan(results_dir: Path, out_dir: Path | None) -> list[Path]:
    if not results_dir.is_dir():
        return []
    skip = {out_dir.resolve()} if out_dir is not None else set()
    return [
        path
        for path in sorted(results_dir.iterdir())
        if path.is_dir()
        and not path.name.startswith(".")
        and path.name not in RESERVED_DIRS
        and path.resolve() not in skip
        and any((path / n).is_file() for n in ("status.json", "config.json", "metrics.json"))
    ]


def check_document(doc: Any, path: Path, fix: str) -> dict[str, Any]:
    """A schema-2 document with a "metrics" object of complete entries, or a UserError saying why not."""
    if not isinstance(doc, dict):
        raise UserError(f"{path} is not a JSON object: {fix}")
    version = schema_of(doc)
    if version < SCHEMA_VERSION:
        raise UserError(old_schema_message(path))
    if version > SCHEMA_VERSION:
        raise UserError(f"{path} has results schema {version}; this genbench reads {SCHEMA_VERSION}: upgrade")
    metrics = doc.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        raise UserError(f"{path} has no 'metrics' object: {fix}")
    for key, entry in metrics.items():
        missing = [f for f in ENTRY_FIELDS if not isinstance(entry, dict) or f not in entry]
        if missing:
            raise UserError(f"{path}: entry {key!r} lacks {', '.join(missing)}: {fix}")
        if entry["section"] not in SECTIONS:
            raise UserError(f"{path}: entry {key!r} has unknown section {entry['section']!r}: {fix}")
    return doc


def _read_run(path: Path, status: str) -> Run:
    config = read_json(path / "config.json", FIX_RUN) if (path / "config.json").is_file() else {}
    if not isinstance(config, dict):
        raise UserError(f"{path / 'config.json'} is not a JSON object: {FIX_RUN}")
    if not (path / "metrics.json").is_file():
        raise UserError(f"{path} has no metrics.json (status {status})")
    doc = check_document(read_json(path / "metrics.json", FIX_RUN), path / "metrics.json", FIX_RUN)
    for field in ("model", "protocol"):
        if not doc.get(field):
            raise UserError(f"{path / 'metrics.json'} has no {field!r}: {FIX_RUN}")
    return Run(path.name, path, status, config, doc)


def _status(path: Path) -> tuple[str, str | None]:
    if not (path / "status.json").is_file():
        return "unknown", "no status.json"
    doc = read_json(path / "status.json", FIX_RUN)
    doc = doc if isinstance(doc, dict) else {}
    return str(doc.get("status") or "unknown"), doc.get("reason")


def read_floors(results_dir: Path) -> tuple[list[Floor], list[str]]:
    floors, notes = [], []
    folder = results_dir / "floors"
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            floors.append(Floor(path, check_document(read_json(path, FIX_FLOOR), path, FIX_FLOOR)))
        except UserError as exc:
            notes.append(f"skipped floor {path.name}: {exc}")
    return floors, notes


def _canonical(protocol: dict[str, Any]) -> str:
    return json.dumps(protocol, sort_keys=True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def _group_names(protocols: Sequence[dict[str, Any]]) -> list[str]:
    """ "<profile>-<device>", plus the first protocol field that tells a group from the first of the
    same profile and device (e.g. "quick-cpu-n-samples-500"); a number when nothing tells them apart."""
    names: list[str] = []
    first: dict[str, dict[str, Any]] = {}
    for protocol in protocols:
        base = _slug(f"{protocol.get('profile')}-{protocol.get('device')}")
        name = base
        if base in first:
            fields = [*PROTOCOL_LABELS, *sorted((set(protocol) | set(first[base])) - set(PROTOCOL_LABELS))]
            differs = [f for f in fields if protocol.get(f) != first[base].get(f)]
            value = protocol.get(differs[0]) if differs else None
            if isinstance(value, dict):  # e.g. the --set overrides: "model.latent_dim-8"
                value = "-".join(f"{k}-{v}" for k, v in value.items())
            value = "-".join(map(str, value)) if isinstance(value, list) else value
            name = _slug(f"{base}-{differs[0]}-{value}") if differs else base
        first.setdefault(base, protocol)
        candidate, count = name, 2
        while candidate in names:
            candidate, count = f"{name}-{count}", count + 1
        names.append(candidate)
    return names


def _drop_repeats(runs: list[Run], group: str) -> tuple[list[Run], list[str]]:
    """Two runs of one model and seed under one protocol repeat one seed: keep the newest."""
    kept: dict[tuple[str, Any], Run] = {}
    notes = []
    for run in sorted(runs, key=timestamp, reverse=True):
        key = (run.model, run.seed)
        if key in kept:
            notes.append(
                f"{run.run_id}: ignored, it repeats seed {run.seed} of {run.model} in group {group} "
                f"(kept the newer {kept[key].run_id})"
            )
        else:
            kept[key] = run
    return [r for r in runs if kept[(r.model, r.seed)] is r], notes


def group_runs(runs: Sequence[Run], floors: Sequence[Floor]) -> tuple[list[Group], list[str]]:
    """Runs with JSON-equal protocol blocks form one group; groups in profile order, then by size."""
    by_protocol: dict[str, list[Run]] = {}
    for run in runs:
        by_protocol.setdefault(_canonical(run.protocol), []).append(run)
    rank = {p: i for i, p in enumerate(PROFILE_NAMES)}
    # The largest group of a profile first: it gets the plain name ("smoke-cpu").
    keys = sorted(
        by_protocol,
        key=lambda k: (rank.get(by_protocol[k][0].protocol.get("profile"), 99), -len(by_protocol[k]), k),
    )
    names = _group_names([by_protocol[k][0].protocol for k in keys])
    groups, notes = [], []
    for key, name in zip(keys, names, strict=True):
        members, repeated = _drop_repeats(by_protocol[key], name)
        notes += repeated
        protocol = members[0].protocol
        matching = sorted(
            (f for f in floors if f.matches(protocol)), key=lambda f: str(f.doc.get("created")), reverse=True
        )
        members.sort(key=lambda r: (r.model, r.seed if isinstance(r.seed, int) else -1, r.run_id))
        groups.append(Group(name, protocol, tuple(members), tuple(matching)))
    return groups, notes


def load_results(
    results_dir: Path,
    models: Sequence[str] = (),
    profile: str | None = None,
    since: dt.datetime | None = None,
    runs: Sequence[str] = (),
    include_unfinished: bool = False,
    out_dir: Path | None = None,
) -> Results:
    """Read, check, filter and group the run folders under ``results_dir``. Unreadable folders are
    skipped with a note; a UserError when nothing reportable is left."""
    results_dir = Path(results_dir)
    where = f"{results_dir}/"
    folders = _scan(results_dir, out_dir)
    if runs:
        unknown = sorted(set(runs) - {p.name for p in folders})
        if unknown:
            raise UserError(
                f"no run folder {', '.join(unknown)} under {where}: list them with `ls {results_dir}`"
            )
        folders = [p for p in folders if p.name in set(runs)]
    read: list[Run] = []
    skipped: list[tuple[str, str]] = []
    notes: list[str] = []
    for path in folders:
        try:
            status, reason = _status(path)
            if status != DONE and not include_unfinished:
                skipped.append((path.name, status + (f": {reason}" if reason else "")))
                continue
            read.append(_read_run(path, status))
        except UserError as exc:
            notes.append(f"skipped {path.name}: {exc}")
    if not read:
        hints = [f"{len(skipped)} unfinished skipped; --include-unfinished shows them"] if skipped else []
        hints += [f"{len(notes)} unreadable, e.g. {notes[0]}"] if notes else []
        hint = f" ({'; '.join(hints)})" if hints else ""
        raise UserError(f"no finished runs under {where}{hint}: run `bench run` first")
    selected = _filter(read, models, profile, since, where)
    floors, floor_notes = read_floors(results_dir)
    groups, repeat_notes = group_runs(selected, floors)
    return Results(tuple(groups), tuple(skipped), tuple(notes + floor_notes + repeat_notes))


def _filter(
    runs: list[Run], models: Sequence[str], profile: str | None, since: dt.datetime | None, where: str
) -> list[Run]:
    if models:
        wanted = {m.lower() for m in models}
        available = sorted({r.model for r in runs})
        missing = sorted(wanted - {m.lower() for m in available})
        if missing:
            found = ", ".join(available)
            raise UserError(f"no finished runs of {', '.join(missing)} under {where}: models found: {found}")
        runs = [r for r in runs if r.model.lower() in wanted]
    if profile is not None:
        available = sorted({str(r.protocol.get("profile")) for r in runs})
        runs = [r for r in runs if r.protocol.get("profile") == profile]
        if not runs:
            found = ", ".join(available)
            raise UserError(
                f"no finished runs with profile {profile!r} under {where}: profiles found: {found}"
            )
    if since is not None:
        since = since if since.tzinfo else since.astimezone()
        runs = [r for r in runs if r.created is not None and r.created >= since]
        if not runs:
            raise UserError(f"no finished runs created since {since.isoformat()} under {where}: drop --since")
    return runs
