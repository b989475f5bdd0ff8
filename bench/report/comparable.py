"""What a table may compare: costs measured under like conditions, cells that are trivially perfect
by construction, and costs that measure the process rather than the model.

- A cost (throughput, wall time, memory) depends on the machine's state: the thread count, the
  device, the precision, and other processes busy when the run started (config.json). Runs measured
  under different conditions are never averaged in the cost table: each condition is its own row.
  Quality numbers are deterministic in the steps, so they still average over seeds.
- An invertible model (a bijection, declared by the model and recorded in metrics.json) reconstructs exactly
  up to float rounding; that is true by construction, not a finding, so such a cell is never bold.
- On the CPU, peak memory is the process's resident set (the runtime included), not the model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from genbench.bench.engine.timing import threads_text
from genbench.bench.report.load import Run
from genbench.metrics.reconstruction import BCE, MSE

BUSY_CORES = 0.5  # cores busy with other processes at the start above which a run is "beside others"
CONDITION_FIELDS = ("device", "precision", "threads", "load")
RECONSTRUCTION = (MSE.key, BCE.key)
PROCESS_MEMORY = "rss"  # the peak-memory entry's protocol "kind" when it measures the process
TRIVIAL_MARK = "†"
IDLE = "idle at start"


def run_condition(run: Run) -> dict[str, str]:
    """The conditions a run's costs were measured under, from its config.json, in words."""
    config = run.config
    threads = config.get("threads") if isinstance(config.get("threads"), dict) else {}
    found = {"device": str(config.get("device", "device not recorded"))}
    found["precision"] = str(config.get("precision", "precision not recorded"))
    count = threads.get("threads")
    found["threads"] = threads_text(int(count)) if count is not None else "threads not recorded"
    busy = threads.get("busy")
    found["load"] = (
        "load not measured" if busy is None else "others busy at start" if busy >= BUSY_CORES else IDLE
    )
    return found


def cost_conditions(runs: Sequence[Run]) -> dict[str, str | None]:
    """run id -> its cost condition, naming only the fields that differ between the runs; None for
    every run when all were measured alike (one row per model, as before)."""
    found = {r.run_id: run_condition(r) for r in runs}
    varying = [f for f in CONDITION_FIELDS if len({c[f] for c in found.values()}) > 1]
    if not varying:
        return dict.fromkeys(found)
    return {run_id: ", ".join(c[f] for f in varying) for run_id, c in found.items()}


def main_condition(conditions: dict[str, str | None]) -> str | None:
    """The condition most runs were measured under (ties: an idle machine first, then the first in
    sorted order): the one the verdict and the quality-against-speed figure read."""
    counts: dict[str | None, int] = {}
    for condition in conditions.values():
        counts[condition] = counts.get(condition, 0) + 1
    if not counts:
        return None
    return sorted(counts, key=lambda c: (-counts[c], IDLE not in (c or IDLE), c or ""))[0]


def trivial_reason(runs: Sequence[Run], model: str, column: str) -> str | None:
    """Why a model's value in a column is perfect by construction, or None."""
    # Runs before "invertible" was recorded: the flow was the one family with an exact likelihood and
    # a reconstruction.
    invertible = {
        r.model_protocol.get("invertible", r.model_protocol.get("likelihood") == "exact")
        for r in runs
        if r.model == model
    }
    if column in RECONSTRUCTION and invertible == {True}:
        return (
            f"{TRIVIAL_MARK} trivial by construction: {model} is invertible (its reconstruction inverts "
            f"a bijection), so it reconstructs exactly up to float rounding; not a finding, never bold"
        )
    return None


def measures_process(protocols: Sequence[dict[str, Any]]) -> bool:
    """Whether a cost column's entries measure the whole process (CPU RSS), not the model."""
    return any(p.get("kind") == PROCESS_MEMORY for p in protocols)
