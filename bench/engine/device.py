"""Devices and precision: choosing the device, autocast, and preparing a model for it."""

from __future__ import annotations

import contextlib

import torch

from genbench.core.errors import UserError
from genbench.models.base import GenerativeModel, TrainConfig

PRECISIONS = ("fp32", "bf16")


def resolve_device(name: str = "auto") -> torch.device:
    """ "auto" picks cuda, then mps, then cpu; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available here; use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available here; use --device cpu or auto")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """ "auto" is bf16 on CUDA, fp32 elsewhere."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be auto or one of {PRECISIONS}, got {precision!r}")
    return precision


def autocast(device: torch.device, precision: str):
    """bf16 autocast for the network's matmuls and convolutions; models keep likelihood sums in fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def exact_fp32():
    """fp32 matmuls and convolutions in full precision within the block (no TF32), the previous
    settings restored after. CUDA runs convolutions in TF32 by default (cudnn.allow_tf32 is True),
    a 10-bit mantissa, which evaluation must not inherit: it is always fp32."""
    matmul, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = cudnn


COMPILE_MARGIN = 2  # a CPU run compiles by default at this many times its family's break-even steps


def compile_choice(
    family: type[GenerativeModel], device: torch.device, cfg: TrainConfig, requested: bool | None
) -> tuple[bool, str]:
    """Whether a run compiles its training step, and why (config.json and the training protocol):
    --compile/--no-compile when given; else on the CPU where the family's measured break-even
    (``GenerativeModel.cpu_compile_break_even``) is at most half the run's fixed step count; else off.
    A budget run's steps are not known before it starts, so it stays eager unless told."""
    if requested is not None:
        return requested, "--compile" if requested else "--no-compile"
    break_even = family.cpu_compile_break_even
    if device.type != "cpu" or break_even is None:
        return False, f"default off: {family.name} is not compiled by default on {device.type}"
    if cfg.time_budget_s is not None or cfg.compute_budget is not None:
        return False, "default off: a budget run's steps are not known before it starts"
    if cfg.max_steps is not None and cfg.max_steps < COMPILE_MARGIN * break_even:
        return False, (
            f"default off: {cfg.max_steps} steps, under {COMPILE_MARGIN}x the {break_even} after which "
            f"compiling pays for {family.name} on a CPU"
        )
    return True, f"default on: compiling pays for {family.name} on a CPU after about {break_even} steps"


def prepare_model(
    model: GenerativeModel, device: torch.device, compile: bool = False, compile_backend: str = "inductor"
) -> GenerativeModel:
    """Move to the device; channels_last on CUDA; with ``compile``, torch.compile what the model's
    train_step calls (``GenerativeModel.compile_step``), once and in place, so state_dict keys
    stay as they are."""
    model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model.to(memory_format=torch.channels_last)
    if compile:
        model.compile_step(backend=compile_backend)
    return model
