"""Evaluation on a GPU, checked on the CPU: no TF32 while evaluating (the flags are torch's, so the CPU
can see them), and the CUDA sample batch used on CUDA only, recorded beside each sample-based value."""

from __future__ import annotations

import pytest
import torch
from conftest import fake_mnist

from genbench import models
from genbench.bench.engine import evaluate as evaluation
from genbench.bench.engine.device import exact_fp32
from genbench.core.schema import Output, Value
from genbench.metrics.base import EVAL_PROFILES, EvalConfig, EvalContext, Metric

CPU = torch.device("cpu")


@pytest.fixture
def tf32_on():
    """The flags as a training process on CUDA may leave them: TF32 matmuls and convolutions."""
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    yield
    torch.set_float32_matmul_precision(saved[0])
    torch.backends.cudnn.allow_tf32 = saved[1]


def tf32_flags() -> tuple[str, bool, bool]:
    return (
        torch.get_float32_matmul_precision(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )


def test_exact_fp32_turns_tf32_off_and_restores_the_flags(tf32_on):
    with exact_fp32():
        assert tf32_flags() == ("highest", False, False)
    assert tf32_flags() == ("high", True, True)
    torch.set_float32_matmul_precision("medium")  # bf16 matmuls, restored as they were (not as "high")
    with pytest.raises(RuntimeError, match="inside"), exact_fp32():
        raise RuntimeError("inside")
    assert tf32_flags() == ("medium", True, True)


class RecordingModel(torch.nn.Module):
    """Draws noise images; records the batch of every sample call."""

    name, likelihood, importance_weighted, can_reconstruct, can_interpolate = (
        "fake",
        None,
        False,
        False,
        False,
    )
    levels, image_shape = 256, (1, 28, 28)

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def sample_modes(self) -> dict[str, str]:
        return {"default": ""}

    def sample(self, n, generator=None, mode=None):
        self.calls.append(n)
        return torch.randint(0, 256, (n, *self.image_shape), generator=generator, dtype=torch.uint8)


def test_samples_are_drawn_at_the_cuda_batch_only_on_cuda(monkeypatch):
    config = EvalConfig(n_samples=10, batch_size=4, cuda_sample_batch_size=10)
    assert config.sample_batch_size(torch.device("cuda")) == 10
    assert config.sample_batch_size(CPU) == 4
    assert EvalConfig(batch_size=4).sample_batch_size(torch.device("cuda")) == 4
    model = RecordingModel()
    images = EvalContext(model, fake_mnist(), config, CPU, seed=0).samples()
    assert model.calls == [4, 4, 2] and images.shape == (10, 1, 28, 28)
    # Every profile samples at its batch_size on the CPU: CPU results are what they were.
    assert all(c.sample_batch_size(CPU) == c.batch_size == 256 for c in EVAL_PROFILES.values())
    assert EVAL_PROFILES["full"].sample_batch_size(torch.device("cuda")) == 2000
    with pytest.raises(ValueError, match="cuda_sample_batch_size"):
        EvalConfig(cuda_sample_batch_size=0)
    monkeypatch.setattr(EvalConfig, "sample_batch_size", lambda self, device: 3)  # as on CUDA, batch 3
    model = RecordingModel()
    EvalContext(model, fake_mnist(), config, CPU, seed=0).samples()
    assert model.calls == [3, 3, 3, 1]


def test_evaluate_runs_in_exact_fp32_and_records_the_sample_batch(tf32_on, monkeypatch):
    seen = []
    out = Output("flags", "Flags", "-", None, "quality", 1)

    def compute(ctx):
        ctx.samples()
        seen.append(tf32_flags())
        return {"flags": Value(1.0, {"n_samples": len(ctx.samples())})}

    monkeypatch.setattr(
        evaluation, "METRICS", {"flags": Metric("flags", frozenset({"samples"}), (out,), compute)}
    )
    torch.manual_seed(0)
    model, _ = models.build("flow", "smoke")  # samples spread from the start: no collapse refusal
    config = EvalConfig(n_test=16, n_samples=12, batch_size=5, cuda_sample_batch_size=12, feature_networks=())
    entries = evaluation.evaluate(model, fake_mnist(), config, CPU, seed=0)
    assert seen == [("highest", False, False)]
    assert entries["flags"]["protocol"] == {"n_samples": 12, "sample_batch": 5}
    assert tf32_flags() == ("high", True, True)


def test_validation_runs_in_exact_fp32(tf32_on, fake_data):
    """Validation bits/dim are compared with the evaluation's: no TF32 in them either."""
    from genbench.bench.engine.train import RunOptions, validate

    seen = []
    model, _ = models.build("flow", "smoke")
    loss = model.loss
    model.loss = lambda x: seen.append(tf32_flags()) or loss(x)
    validate(model, fake_data.val[:8], 4, RunOptions(device=CPU))
    assert seen == [("highest", False, False)] * 2 and tf32_flags() == ("high", True, True)
