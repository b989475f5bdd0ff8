"""The results schema: what ``metrics.json`` holds and what every reader may rely on.

This module is the one source of truth for the schema. The evaluator writes through it, floors
and external scores write through it, and the report reads the fields named here; nothing
re-derives a metric's meaning from its key.

metrics.json (schema 2)::

    {
      "schema": 2,
      "run_id": "vae-quick-s0-20261129-101500",
      "model": "vae",            # registry name
      "seed": 0,
      "protocol": {...},         # run-level: see PROTOCOL_LABELS; equal blocks may be averaged
      "model_protocol": {...},   # the model's own settings that change its numbers (sampler, steps)
      "metrics": {KEY: ENTRY, ...},
      "ladder": [RUNG, ...]      # only for a compute ladder (bench.engine.ladder): one per rung, in order
    }

A RUNG: {"compute": FLOPs of the rung, "steps": ceil(compute / FLOPs per step), "train_flops":
steps x FLOPs per step, "protocol": {...}, "metrics": {KEY: ENTRY, ...}} (the likelihood and
sample-quality entries at that step), with "na" (why) where its samples had collapsed and have no
sample-quality numbers.

An ENTRY (``entry(output, value)``)::

    {
      "value": 1.42 | null,      # null: not measured, "na" says why
      "label": "Bits/dim",       # column header
      "unit": "bits/dim",
      "higher_is_better": false | true | null,
      "section": "likelihood" | "quality" | "cost",
      "order": 20,               # display order within the section
      "kind": "exact" | "bound" | "estimate" | null,   # see KINDS; null for non-likelihood numbers
      "stderr": 0.004 | null,    # standard error of "value" in its unit (see Value.stderr)
      "estimator": "ELBO, one posterior sample per image" | null,
      "k": 100 | null,           # samples of an importance-weighted estimate
      "variant": "decoder mean" | null,  # which sample mode of the model produced it (a table row)
      "column": "fid_mnist",     # the table column: KEY without the variant suffix
      "floor": "fid_mnist" | null,       # the key of the real-data floor shown beside it, if any
      "protocol": {...},         # per-value details: n_images, n_samples, feature network, stderr...
      "na": "gan has no likelihood"      # only when value is null
    }

Keys of sample-quality numbers of a non-default sample mode carry the mode: ``fid_mnist[sample]``.
A results folder written by an older genbench has no "schema" field (schema 1); readers refuse it
with ``old_schema_message``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

SCHEMA_VERSION = 2

Section = Literal["likelihood", "quality", "cost"]
SECTIONS: dict[str, str] = {
    "likelihood": "Likelihood and reconstruction",
    "quality": "Sample quality",
    "cost": "Cost",
}

# What a likelihood number is, relative to the model's true NLL on the stated discrete protocol.
# The one vocabulary: models declare it (GenerativeModel.likelihood), metrics.json carries it, the
# report marks and explains it.
KINDS: dict[str, str] = {
    "exact": "the NLL of the discrete image itself (a normalized distribution over the levels)",
    "bound": "an upper bound on the NLL, computed deterministically",
    "estimate": "a Monte-Carlo estimate of an upper bound on the NLL (random posterior, "
    "dequantization or timestep draws; importance-weighted with k samples where stated): an upper "
    "bound in expectation, ± its standard error over images",
}
KIND_MARKS: dict[str, str] = {"exact": "", "bound": "≤ ", "estimate": "≤ "}

# Run-level protocol fields, in display order, with their labels. Runs whose protocol blocks are
# equal are measured identically and may be averaged; any difference puts them in another group.
PROTOCOL_LABELS: dict[str, str] = {
    "profile": "profile",
    "dataset": "dataset",
    "levels": "levels",
    "image_shape": "image shape",
    "device": "device",
    "hardware": "hardware",
    "precision": "precision",
    "time_budget_s": "time budget (s)",
    "compute_budget": "compute budget (FLOPs)",
    "processes": "processes",
    "overrides": "overrides (--set)",
    "test_images": "test images",
    "test_subset": "test subset",
    "iwae_k": "IWAE k",
    "iwae_images": "IWAE images",
    "n_samples": "generated samples",
    "reference": "FID reference",
    "feature_networks": "feature networks",
    "evaluation": "evaluation",
}


@dataclasses.dataclass(frozen=True)
class Output:
    """One number a metric produces, with everything a table needs to show it."""

    key: str  # key in metrics.json, e.g. "fid_mnist"
    label: str  # column header, e.g. "FID (mnist)"
    unit: str
    higher_is_better: bool | None  # None: neither (parameter count)
    section: Section
    order: int  # display order within the section

    def __post_init__(self) -> None:
        if self.section not in SECTIONS:
            raise ValueError(f"output {self.key!r}: section must be one of {sorted(SECTIONS)}")


@dataclasses.dataclass(frozen=True)
class Value:
    """A measured number (or None with the reason) and how it was measured."""

    value: float | None
    protocol: dict[str, Any] = dataclasses.field(default_factory=dict)
    na: str | None = None  # the reason when value is None
    kind: str | None = None  # KINDS, for likelihood numbers
    estimator: str | None = None
    k: int | None = None
    floor: str | None = None  # key of the real-data floor entry to show beside this value
    # The standard error of ``value``, in its unit: over images for a mean over test images (the
    # noise of the Monte-Carlo draws and of the image sample together), over resampled sample sets
    # for FID/KID, over draws for an AIS estimate. None: not stated (a deterministic number).
    stderr: float | None = None

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, got {self.kind!r}")
        if self.stderr is not None and not self.stderr >= 0:
            raise ValueError(f"stderr must be a non-negative number or None, got {self.stderr!r}")


def variant_key(key: str, mode: str | None) -> str:
    """The metrics.json key of a value measured on a non-default sample mode."""
    return key if mode is None else f"{key}[{mode}]"


def entry(output: Output, value: Value, variant: str | None = None) -> dict[str, Any]:
    """The metrics.json form of one value (see the module docstring)."""
    out: dict[str, Any] = {
        "value": value.value,
        "label": output.label,
        "unit": output.unit,
        "higher_is_better": output.higher_is_better,
        "section": output.section,
        "order": output.order,
        "kind": value.kind,
        "stderr": value.stderr,
        "estimator": value.estimator,
        "k": value.k,
        "variant": variant,
        "column": output.key,
        "floor": value.floor,
        "protocol": value.protocol,
    }
    if value.value is None:
        out["na"] = value.na or "not computed"
    return out


def old_schema_message(path: Any) -> str:
    return (
        f"{path} was written by an older genbench (results schema 1; this version reads "
        f"{SCHEMA_VERSION}): run it again with this version, or move it out of the results folder"
    )


def schema_of(doc: Any) -> int:
    """The schema version of a metrics.json or floors document (1 when unstated)."""
    version = doc.get("schema", 1) if isinstance(doc, dict) else 1
    return version if isinstance(version, int) else 1
