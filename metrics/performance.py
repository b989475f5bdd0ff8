"""Cost of a model: training and sampling throughput, peak memory, size and wall time."""

from __future__ import annotations

from genbench.metrics.base import EvalContext, Output, Value, register_metric

TRAIN_SPEED = Output("train_images_per_s", "Train img/s", "images/s", higher_is_better=True)
SAMPLE_SPEED = Output("sample_images_per_s", "Sample img/s", "images/s", higher_is_better=True)
PEAK_MEMORY = Output("peak_memory_mb", "Peak memory", "MiB", higher_is_better=False)
PARAMETERS = Output("parameters", "Parameters", "count", higher_is_better=None)
WALL_TIME = Output("wall_time_s", "Train wall time", "s", higher_is_better=False)


@register_metric(
    "cost", needs=("samples",), outputs=(TRAIN_SPEED, SAMPLE_SPEED, PEAK_MEMORY, PARAMETERS, WALL_TIME)
)
def cost(ctx: EvalContext) -> dict[str, Value]:
    """Training numbers come from the loop (bench.train); sampling is timed on the shared samples."""
    summary = ctx.train_summary
    device = {"device": str(ctx.device), "device_name": summary.get("device_name")}
    samples = ctx.samples()
    training = {**device, "precision": summary.get("precision"), "batch_size": summary.get("batch_size")}
    missing = "no training in this process (resumed after training?)"

    def from_summary(key: str, protocol: dict) -> Value:
        value = summary.get(key)
        return Value(value, protocol) if value is not None else Value(None, protocol, na=missing)

    return {
        TRAIN_SPEED.key: from_summary(
            "train_images_per_s",
            {
                **training,
                "warmup_steps": summary.get("warmup_steps"),
                "steps_timed": summary.get("steps_timed"),
            },
        ),
        SAMPLE_SPEED.key: Value(
            len(samples) / ctx.sampling_seconds,
            {
                **device,
                "n_samples": len(samples),
                "batch_size": ctx.config.batch_size,
                "includes": "first call",
            },
        ),
        PEAK_MEMORY.key: from_summary("peak_memory_mb", {**training, "kind": summary.get("memory_kind")}),
        PARAMETERS.key: Value(float(ctx.model.num_parameters()), {}),
        WALL_TIME.key: from_summary("wall_time_s", training),
    }
