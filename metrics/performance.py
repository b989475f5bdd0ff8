"""Cost of a model: training and sampling throughput, peak memory, size, wall time and the steps
trained (what a time budget resolved to: --max-steps of them repeats the run on any machine)."""

from __future__ import annotations

from genbench.core.distributed import world_size
from genbench.core.schema import Output, Value
from genbench.metrics.base import EvalContext, register_metric

TRAIN_SPEED = Output("train_images_per_s", "Train img/s", "images/s", True, "cost", 10)
SAMPLE_SPEED = Output("sample_images_per_s", "Sample img/s", "images/s", True, "cost", 11)
PEAK_MEMORY = Output("peak_memory_mb", "Peak memory", "MiB", False, "cost", 12)
PARAMETERS = Output("parameters", "Parameters", "count", None, "cost", 13)
WALL_TIME = Output("wall_time_s", "Train wall time", "s", False, "cost", 14)
STEPS = Output("steps", "Steps", "steps", None, "cost", 15)
MEMORY_KINDS = {"rss": "process RSS", "cuda_allocator": "CUDA allocator"}


@register_metric("cost", needs=(), outputs=(TRAIN_SPEED, PEAK_MEMORY, PARAMETERS, WALL_TIME, STEPS))
def cost(ctx: EvalContext) -> dict[str, Value]:
    """Training numbers come from the loop (bench.engine.train) through the run's train summary."""
    summary = ctx.train_summary
    training = {
        "device": summary.get("device", str(ctx.device)),  # where it trained (bench eval may score elsewhere)
        "device_name": summary.get("device_name"),
        "precision": summary.get("precision"),
        # torch.compile of the training step (bench.engine.device.compile_choice)
        "compile": summary.get("compile"),
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
        STEPS.key: from_summary("steps", _steps_protocol(summary)),
    }


def _steps_protocol(summary: dict) -> dict:
    """How training ended, and the batch the steps were of; for a time budget, the budget and the
    wall time at which it ended training; for a compute budget, the budget and the FLOPs per step
    that bought the steps."""
    protocol = {"batch_size": summary.get("batch_size"), "stopped_by": summary.get("stopped_by")}
    if summary.get("time_budget_s") is not None:
        protocol |= {"time_budget_s": summary["time_budget_s"], "stopped_at_s": summary.get("budget_stop_s")}
    if summary.get("compute_budget") is not None:  # ceil(budget / FLOPs per step) steps (bench.engine.budget)
        protocol |= {
            "compute_budget": summary["compute_budget"],
            "train_flops_per_step": summary.get("train_flops_per_step"),
        }
    if (summary.get("processes") or 1) > 1:
        protocol["processes"] = summary["processes"]
    return {k: v for k, v in protocol.items() if v is not None}


@register_metric("sampling_speed", needs=("samples",), outputs=(SAMPLE_SPEED,))
def sampling_speed(ctx: EvalContext) -> dict[str, Value]:
    """Images per second of the evaluation's own sampling, per sample mode, after its first batch."""
    samples = ctx.samples()
    images, seconds = ctx.sampling_timed[ctx.mode]
    protocol = {
        "device": str(ctx.device),
        "n_samples": len(samples),
        "images_timed": images,
        "batch_size": ctx.config.batch_size,
        "warm_up": "first batch excluded" if images < len(samples) else "none (a single batch)",
    }
    if world_size() > 1:
        protocol["processes"] = world_size()  # the batches split across ranks, drawn in parallel
    return {SAMPLE_SPEED.key: Value(images / seconds, protocol)}
