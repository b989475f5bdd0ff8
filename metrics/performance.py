"""Cost of a model: training and sampling throughput, peak memory, size and wall time."""

from __future__ import annotations

from genbench.core.schema import Output, Value
from genbench.metrics.base import EvalContext, register_metric

TRAIN_SPEED = Output("train_images_per_s", "Train img/s", "images/s", True, "cost", 10)
SAMPLE_SPEED = Output("sample_images_per_s", "Sample img/s", "images/s", True, "cost", 11)
PEAK_MEMORY = Output("peak_memory_mb", "Peak memory", "MiB", False, "cost", 12)
PARAMETERS = Output("parameters", "Parameters", "count", None, "cost", 13)
WALL_TIME = Output("wall_time_s", "Train wall time", "s", False, "cost", 14)
MEMORY_KINDS = {"rss": "process RSS", "cuda_allocator": "CUDA allocator"}


@register_metric("cost", needs=(), outputs=(TRAIN_SPEED, PEAK_MEMORY, PARAMETERS, WALL_TIME))
def cost(ctx: EvalContext) -> dict[str, Value]:
    """Training numbers come from the loop (bench.train) through the run's train summary."""
    summary = ctx.train_summary
    training = {
        "device": str(ctx.device),
        "device_name": summary.get("device_name"),
        "precision": summary.get("precision"),
        "batch_size": summary.get("batch_size"),
    }
    missing = "not trained by genbench in this run"

    def from_summary(key: str, protocol: dict) -> Value:
        value = summary.get(key)
        return Value(value, protocol) if value is not None else Value(None, protocol, na=missing)

    memory_kind = summary.get("memory_kind")
    return {
        TRAIN_SPEED.key: from_summary(
            "train_images_per_s",
            {
                **training,
                "warmup_steps": summary.get("warmup_steps"),
                "steps_timed": summary.get("steps_timed"),
            },
        ),
        PEAK_MEMORY.key: from_summary(
            "peak_memory_mb", {**training, "kind": memory_kind, "measures": MEMORY_KINDS.get(memory_kind)}
        ),
        PARAMETERS.key: Value(float(ctx.model.num_parameters()), {}),
        WALL_TIME.key: from_summary("wall_time_s", training),
    }


@register_metric("sampling_speed", needs=("samples",), outputs=(SAMPLE_SPEED,))
def sampling_speed(ctx: EvalContext) -> dict[str, Value]:
    """Images per second of the evaluation's own sampling (first call included), per sample mode."""
    samples = ctx.samples()
    protocol = {
        "device": str(ctx.device),
        "n_samples": len(samples),
        "batch_size": ctx.config.batch_size,
        "includes": "first call",
    }
    return {SAMPLE_SPEED.key: Value(len(samples) / ctx.sampling_seconds[ctx.mode], protocol)}
