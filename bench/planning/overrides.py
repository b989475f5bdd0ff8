"""Typed overrides of any config field: ``--set SECTION.FIELD=VALUE`` (`bench run`, `bench sweep`) and
the sweep axes ``--grid SECTION.FIELD=V1,V2,...``.

A section is a frozen config dataclass of the run: ``model`` (the family's Config), ``train``
(TrainConfig) or ``eval`` (EvalConfig). A value is parsed by its field's type (int, float, bool,
str, tuples as comma-separated items, ``none`` for an optional field); the dataclass's own checks
decide its range when the plan builds the config. An override changes what is compared, so the
resolved overrides are recorded in config.json, name the run (``tag``) and enter the protocol
block that the report groups runs by.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from typing import Any

from genbench.core.errors import UsageError
from genbench.metrics.base import EvalConfig
from genbench.models.base import TrainConfig

SECTIONS = ("model", "train", "eval")
# Model fields the dataset decides (models.base.with_image_spec): not the user's to set.
DATA_FIELDS = ("image_shape", "levels")
_ASSIGNMENT = re.compile(r"\s*([A-Za-z_]\w*)\.([A-Za-z_]\w*)\s*=(.*)", re.DOTALL)
_TRUE, _FALSE, _NONE = ("true", "yes", "1"), ("false", "no", "0"), ("none", "null")


def split_assignment(text: str, option: str = "--set") -> tuple[str, str, str]:
    """``"model.latent_dim=64"`` -> ("model", "latent_dim", "64"); a known section, or UsageError."""
    match = _ASSIGNMENT.fullmatch(text)
    if match is None:
        raise UsageError(f"{option} {text!r}: write SECTION.FIELD=VALUE, e.g. model.latent_dim=64")
    section, field, value = match.group(1), match.group(2), match.group(3).strip()
    if section not in SECTIONS:
        raise UsageError(
            f"{option} {text}: unknown section {section!r}; valid: model.FIELD (a field of the family's "
            f"config), train.FIELD ({_names('train', TrainConfig)}), "
            f"eval.FIELD ({_names('eval', EvalConfig)})"
        )
    return section, field, value


def check_syntax(texts: tuple[str, ...], option: str = "--set") -> tuple[str, ...]:
    """The --set values as given, each checked for its form and section (the fields need the family)."""
    for text in texts:
        split_assignment(text, option)
    return tuple(t.strip() for t in texts)


def section_class(section: str, model_config: type) -> type:
    return {"model": model_config, "train": TrainConfig, "eval": EvalConfig}[section]


def settable_fields(section: str, cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if section != "model" or f.name not in DATA_FIELDS]


def _names(section: str, cls: type) -> str:
    return ", ".join(settable_fields(section, cls))


def resolve(model: str, model_config: type, texts: tuple[str, ...]) -> dict[str, Any]:
    """The --set values of a run of family ``model`` as {"section.field": typed value}, in a stable
    order; one line naming the valid fields for an unknown field, a repeated one or a wrong type."""
    resolved: dict[str, Any] = {}
    for text in texts:
        section, field, raw = split_assignment(text)
        cls = section_class(section, model_config)
        where = f"{model}'s model config" if section == "model" else f"the {section} config"
        valid = f"valid fields of {where}: {_names(section, cls)}"
        if field not in settable_fields(section, cls):
            decided = " (the dataset decides it)" if field in DATA_FIELDS and section == "model" else ""
            raise UsageError(f"--set {text}: {where} has no settable field {field!r}{decided}; {valid}")
        key = f"{section}.{field}"
        if key in resolved:
            raise UsageError(f"--set {key} is given twice ({text}); give each field one value")
        try:
            resolved[key] = parse_value(raw, typing.get_type_hints(cls)[field])
        except ValueError as exc:
            raise UsageError(f"--set {text}: {exc}; {valid}") from None
    return dict(sorted(resolved.items()))


def parse_value(raw: str, hint: Any) -> Any:
    """``raw`` read as a value of the type ``hint``: int, float, bool, str, a tuple (comma-separated,
    in optional parentheses) or an optional one of these (``none``)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if raw.lower() in _NONE and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return parse_value(raw, inner)
    if hint is tuple or typing.get_origin(hint) is tuple:
        items = [i.strip() for i in raw.strip().removeprefix("(").removesuffix(")").split(",") if i.strip()]
        kinds = [args[0]] * len(items) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(kinds) != len(items):
            raise ValueError(f"{raw!r} is not {len(kinds)} comma-separated values ({_type_name(hint)})")
        return tuple(parse_value(i, k) for i, k in zip(items, kinds, strict=True))
    if hint is bool:
        if raw.lower() not in _TRUE + _FALSE:
            raise ValueError(f"{raw!r} is not a bool (true or false)")
        return raw.lower() in _TRUE
    if hint in (int, float):
        try:
            return hint(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not {'an int' if hint is int else 'a float'}") from None
    if hint is str:
        return raw
    raise ValueError(f"a field of type {_type_name(hint)} cannot be set from the command line")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint)) if typing.get_origin(hint) is None else str(hint)


def apply(config: Any, section: str, overrides: dict[str, Any]) -> Any:
    """``config`` with the overrides of ``section`` (the dataclass checks their ranges: ValueError)."""
    prefix = f"{section}."
    changes = {k.removeprefix(prefix): v for k, v in overrides.items() if k.startswith(prefix)}
    return dataclasses.replace(config, **changes) if changes else config


def tag(overrides: dict[str, Any]) -> str:
    """The run-id part of a run's overrides: "" for none, else ``set-`` and a short stable hash of
    their resolved values (``model.latent_dim=8`` and ``=08`` name the same run)."""
    if not overrides:
        return ""
    text = json.dumps(overrides, sort_keys=True, default=list)
    return "set-" + hashlib.sha256(text.encode()).hexdigest()[:8]


def split_grid(text: str) -> tuple[str, ...]:
    """``--grid model.channels=(8,16),(16,32)`` -> ("model.channels=(8,16)", "model.channels=(16,32)"):
    the axis as one --set per point (commas inside parentheses belong to a tuple value)."""
    section, field, raw = split_assignment(text, "--grid")
    values, depth, current = [], 0, ""
    for char in raw:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    values.append(current.strip())
    if depth != 0 or not all(values):
        raise UsageError(f"--grid {text}: write SECTION.FIELD=V1,V2,... (tuples in parentheses)")
    points = tuple(dict.fromkeys(f"{section}.{field}={v}" for v in values))
    return points
