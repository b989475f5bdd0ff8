"""Compute in FLOPs: what one training step, one sample (per sample mode) and one likelihood
evaluation of an image cost, counted on the model's public calls, and what the run achieved.

Counting is ``torch.utils.flop_counter.FlopCounterMode``: it counts the matmul and convolution
family (mm, addmm, bmm, baddbmm, convolution, scaled dot-product attention, and their backward
passes) at 2 FLOPs per multiply-add, from the shapes alone. Not counted: elementwise work
(activations, normalization, softmax, bias and residual adds, the losses' sums), the optimizers'
updates (Adam's are elementwise), data movement and host work. A count is a property of the model
and the batch, the same on every machine and precision.

Every count leaves the model as it found it: parameters, buffers (BatchNorm statistics), gradients,
train/eval modes, ``requires_grad`` flags and the CPU and device RNG streams are restored, so a run
that counts trains bit for bit as one that does not. A model whose training step is compiled runs
it eagerly while counted (a compiled graph hides its operators from the counter).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from genbench.core.schema import Output, Value
from genbench.metrics.base import EvalContext, register_metric

WHAT_IS_COUNTED = (
    "FlopCounterMode: matmul/convolution/attention ops and their backward, 2 FLOPs per multiply-add; "
    "elementwise work and optimizer updates not counted"
)

TRAIN_FLOPS = Output("train_flops", "Train FLOPs", "FLOPs", None, "cost", 20)
STEP_FLOPS = Output("train_flops_per_step", "FLOPs/step", "FLOPs", False, "cost", 21)
SAMPLE_FLOPS = Output("sample_flops", "FLOPs/sample", "FLOPs", False, "cost", 22)
LIKELIHOOD_FLOPS = Output("likelihood_flops", "FLOPs/likelihood image", "FLOPs", False, "cost", 23)
TRAIN_FLOP_RATE = Output("train_flops_per_s", "Train FLOP/s", "FLOP/s", True, "cost", 24)
PEAK_FLOP_RATE = Output("peak_flops_per_s", "Peak FLOP/s", "FLOP/s", None, "cost", 25)
UTILIZATION = Output("utilization", "Utilization", "fraction of peak", True, "cost", 26)


class _PerGroup:
    """The ``Optimization`` a counted training step receives: each ``step(group, loss)`` sets the
    group's gradients to None and back-propagates, and the FLOPs counted since the previous call
    (the forward work that led to this loss, then its backward) are booked to that group. Updates
    are skipped: they are elementwise (uncounted) and would change the weights."""

    def __init__(self, counter: FlopCounterMode, groups: dict[str, list[nn.Parameter]]) -> None:
        self.counter, self.groups = counter, groups
        self.flops: dict[str, int] = {}

    def booked(self) -> int:
        return sum(self.flops.values())

    def step(self, group: str, loss: Tensor) -> None:
        for p in self.groups[group]:
            p.grad = None
        loss.backward()
        self.flops[group] = self.flops.get(group, 0) + self.counter.get_total_flops() - self.booked()


@contextlib.contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Within the block the model may run anything; after it, its parameters, buffers, gradients,
    modes, ``requires_grad`` flags and the RNG streams are as before (a counted step leaves no
    trace in the run)."""
    state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    grads = {p: p.grad for p in model.parameters()}
    flags = {p: p.requires_grad for p in model.parameters()}
    modes = {m: m.training for m in model.modules()}
    device = next(model.parameters()).device
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    try:
        with torch.random.fork_rng(devices=devices), torch.compiler.set_stance("force_eager"):
            yield
    finally:
        with torch.no_grad():
            model.load_state_dict(state)
        for p in model.parameters():
            p.grad, p.requires_grad = grads[p], flags[p]
        for m, training in modes.items():
            m.training = training


class _Untracked:
    """Stands in for FlopCounterMode's module tracker, which books each FLOP to every module running
    (hooks on every module call): only the total is wanted here, and the tracking doubles the time
    of a count of a sampler that calls small modules thousands of times (PixelCNN's)."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _Untracked:
        return self

    def __exit__(self, *exc) -> None:
        return None


def flop_counter() -> FlopCounterMode:
    """A FlopCounterMode that counts the total only (``get_total_flops``)."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _Untracked()
    return counter


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs that FlopCounterMode counts while ``fn()`` runs."""
    with flop_counter() as counter:
        fn()
    return int(counter.get_total_flops())


def training_step_flops(model, x: Tensor) -> tuple[int, dict[str, int]]:
    """FLOPs of one ``model.train_step`` on the batch ``x`` (forward and backward of every parameter
    group's loss: the GAN's discriminator and generator steps both), and their split per group.
    Work after the last group's backward (none in the built-in families) counts in the total only."""
    with untouched(model):
        model.train()
        with flop_counter() as counter:
            optim = _PerGroup(counter, model.parameter_groups())
            model.train_step(x, optim, 0)
        total = int(counter.get_total_flops())
    if not optim.flops:
        raise RuntimeError(f"{model.name}.train_step stepped no optimizer; nothing was trained")
    return total, optim.flops


def sample_flops(model, mode: str | None, n: int = 1) -> float:
    """FLOPs per sample of ``model.sample`` in ``mode``, the sampler as it runs (every pixel pass of
    an autoregressive model, every step of an iterative sampler), counted on a call for ``n``
    samples and divided by n: exact where a call costs n times one sample (every built-in family;
    tests/test_compute.py checks it for every registered family)."""
    with untouched(model), torch.inference_mode():
        model.eval()
        generator = torch.Generator(device=model.device).manual_seed(0)
        return count_flops(lambda: model.sample(n, generator=generator, mode=mode)) / n


def likelihood_flops(model, x: Tensor) -> float:
    """FLOPs per image of ``model.log_prob`` on the images ``x`` (the count over the batch / len(x))."""
    with untouched(model), torch.inference_mode():
        model.eval()
        return count_flops(lambda: model.log_prob(x)) / len(x)


def _na(reason: str) -> Value:
    return Value(None, na=reason)


TRAINING_OUTPUTS = (TRAIN_FLOPS, STEP_FLOPS, TRAIN_FLOP_RATE, PEAK_FLOP_RATE, UTILIZATION)


@register_metric("training_compute", needs=(), outputs=TRAINING_OUTPUTS)
def training_compute(ctx: EvalContext) -> dict[str, Value]:
    """The loop counts one step at run start and measures the device's peak (bench.engine.budget);
    training FLOPs are that count times the steps trained. Achieved FLOP/s is the counted FLOPs per
    image times the timed training images/s (after warm-up, without validation or checkpoints)."""
    summary = ctx.train_summary
    per_step, steps = summary.get("train_flops_per_step"), summary.get("steps")
    if per_step is None:
        return {o.key: _na("not counted: not trained by genbench in this run") for o in TRAINING_OUTPUTS}
    counted = {"counter": WHAT_IS_COUNTED, "batch_size": summary.get("batch_size")}
    step_protocol = {**counted, "per_group": summary.get("train_flops_per_group")}
    if summary.get("compute_budget") is not None:
        step_protocol |= {"compute_budget": summary["compute_budget"], "steps_bought": steps}
    peak, peak_protocol = summary.get("peak_flops_per_s"), summary.get("peak_protocol") or {}
    images_per_s = summary.get("train_images_per_s")
    rate = per_step / summary["batch_size"] * images_per_s if images_per_s else None
    rate_protocol = {**counted, "images_per_s": images_per_s, "steps_timed": summary.get("steps_timed")}
    values = {
        TRAIN_FLOPS.key: Value(float(per_step * steps), {**step_protocol, "steps": steps}),
        STEP_FLOPS.key: Value(float(per_step), step_protocol),
        TRAIN_FLOP_RATE.key: Value(rate, rate_protocol) if rate else _na("no timed training steps"),
        PEAK_FLOP_RATE.key: Value(peak, peak_protocol) if peak else _na("no peak measured"),
        UTILIZATION.key: _na("needs the achieved and the peak FLOP/s"),
    }
    if rate and peak:
        values[UTILIZATION.key] = Value(rate / peak, {"achieved": rate, "peak": peak, **peak_protocol})
    return values


@register_metric("sampling_compute", needs=("samples",), outputs=(SAMPLE_FLOPS,))
def sampling_compute(ctx: EvalContext) -> dict[str, Value]:
    """FLOPs per sample of the current sample mode, counted on one sample of the evaluated model."""
    flops = sample_flops(ctx.model, ctx.mode)
    return {SAMPLE_FLOPS.key: Value(flops, {"counter": WHAT_IS_COUNTED, "counted_on": "1 sample"})}


@register_metric("likelihood_compute", needs=("likelihood",), outputs=(LIKELIHOOD_FLOPS,))
def likelihood_compute(ctx: EvalContext) -> dict[str, Value]:
    """FLOPs per image of one ``log_prob`` evaluation (not the IWAE estimate), on one test image."""
    images = ctx.test_images(1).to(ctx.device)
    protocol = {
        "counter": WHAT_IS_COUNTED,
        "counted_on": "1 image",
        "estimator": ctx.model.likelihood_estimator(),
    }
    return {LIKELIHOOD_FLOPS.key: Value(likelihood_flops(ctx.model, images), protocol)}
