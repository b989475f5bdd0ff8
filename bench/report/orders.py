"""Bounds that must order: for one model, a tighter estimator's NLL is not above a looser one's,
beyond the noise (metrics.ais.NESTED_BOUNDS: ELBO >= IWAE >= AIS). The report says whether the order
holds, and where it does not."""

from __future__ import annotations

import math

import pandas as pd

from genbench.metrics.ais import NESTED_BOUNDS

NOISE = 2.0  # standard errors of the difference beyond which a reversal is called one


def _mean_and_stderr(rows: pd.DataFrame) -> tuple[float, float | None]:
    """Mean over the model's runs, and its standard error from the runs' own (sqrt(sum se^2) / n)."""
    errors = rows["stderr"].dropna()
    stderr = (
        math.sqrt(float((errors.astype(float) ** 2).sum())) / len(rows) if len(errors) == len(rows) else None
    )
    return float(rows["value"].mean()), stderr


def order_notes(part: pd.DataFrame) -> list[str]:
    """One note per model with two or more of the nested bounds: whether they order up to noise."""
    notes = []
    for model, rows in part.groupby("model", sort=False):
        bounds = []
        for output in NESTED_BOUNDS:
            found = rows[(rows["key"] == output.key) & rows["value"].notna()]
            if not found.empty:
                bounds.append((output.label, *_mean_and_stderr(found)))
        if len(bounds) < 2:
            continue
        chain = " ≥ ".join(label for label, _, _ in bounds)
        broken = []
        for (loose, a, sa), (tight, b, sb) in zip(bounds[:-1], bounds[1:], strict=True):
            noise = NOISE * math.hypot(sa or 0.0, sb or 0.0)
            if b - a > noise:
                broken.append(
                    f"{tight} {b:.2f} is above {loose} {a:.2f} by {b - a:.2f} nats (noise {noise:.2f})"
                )
        if broken:
            notes.append(
                f"{model}: the bounds must order {chain}, but {'; '.join(broken)}: check its estimators"
            )
        else:
            notes.append(f"{model}: {chain} holds up to noise ({NOISE:g} standard errors)")
    return notes
