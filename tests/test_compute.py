"""Compute in FLOPs: the counter against hand counts, every optimizer's work in a step, counts that
leave the model untouched, and a compute budget that decides a run's steps."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch
from cli_utils import invoke, one_line_error
from conftest import fake_mnist
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from genbench import models
from genbench.bench.engine import budget
from genbench.bench.engine.optim import EMA, Optimizers
from genbench.bench.engine.train import RunOptions, Trainer
from genbench.bench.execute import run as runs
from genbench.bench.planning import plan as plans
from genbench.metrics.compute import likelihood_flops, sample_flops, training_step_flops
from genbench.models.base import GenerativeModel, TrainConfig

CPU = RunOptions(device=torch.device("cpu"), progress=False, warmup_steps=1)
B = 5  # batch of the hand-counted steps


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    image_shape: tuple[int, int, int] = (1, 4, 4)
    levels: int = 256


class Toy(GenerativeModel):
    """A network whose FLOPs are countable by hand; its loss is the mean square of its output."""

    Config = ToyConfig

    def __init__(self, net: nn.Module) -> None:
        super().__init__(ToyConfig())
        self.net = net

    def loss(self, x):
        return {"loss": self.net(x.float() / 255).pow(2).mean()}

    def sample(self, n, generator=None, mode=None):
        return torch.zeros(n, *self.image_shape, dtype=torch.uint8)


def _x(batch: int = B) -> torch.Tensor:
    return torch.randint(
        0, 256, (batch, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )


def test_two_linear_layers_forward_and_backward_by_hand():
    """16 -> 3 -> 2 on a batch of 5: forward 2*B*(16*3 + 3*2); backward the same again for the
    weight gradients, plus the second layer's input gradient (the input needs none)."""
    model = Toy(nn.Sequential(nn.Flatten(), nn.Linear(16, 3), nn.Linear(3, 2)))
    forward = 2 * B * (16 * 3 + 3 * 2)
    backward = 2 * B * (16 * 3 + 3 * 2) + 2 * B * 3 * 2
    total, per_group = training_step_flops(model, _x())
    assert total == forward + backward == 1140 and per_group == {"main": total}


def test_small_conv_net_forward_and_backward_by_hand():
    """3x3 convolutions 1 -> 2 -> 3 channels at 4x4 ('same' padding): 2 FLOPs per multiply-add per
    output value, forward; backward: weight gradients of both, input gradient of the second only."""
    model = Toy(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 3, 3, padding=1)))
    conv1, conv2 = 2 * B * 16 * 2 * 1 * 9, 2 * B * 16 * 3 * 2 * 9
    total, _ = training_step_flops(model, _x())
    assert total == (conv1 + conv2) + (conv1 + conv2 + conv2)


def test_the_gans_step_counts_both_optimizers_work():
    """The discriminator's and the generator's steps are both in the count, each with its backward:
    D's part is G's forward and D's forward and backward on real and fake batches; G's part D's
    forward on the fakes and the backward through D and G."""
    model, cfg = models.build("gan", "smoke")
    x = fake_mnist(n_train=cfg.batch_size).train
    total, per_group = training_step_flops(model, x)
    assert set(per_group) == {"d", "g"} and sum(per_group.values()) == total
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            model.discriminator(model.generator(torch.randn(len(x), model.config.latent_dim)))
    forward_g_then_d = counter.get_total_flops()
    # G's step: D's forward and its backward (input gradients) and G's backward (>= its forward)
    assert per_group["g"] > forward_g_then_d
    assert per_group["d"] > forward_g_then_d  # D on real and fake batches, forward and backward


def _state(model: nn.Module, optimizers: Optimizers, ema: EMA):
    return (
        copy.deepcopy(model.state_dict()),
        [p.grad if p.grad is None else p.grad.clone() for p in model.parameters()],
        copy.deepcopy(optimizers.state_dict()),
        copy.deepcopy(ema.state_dict()),
        torch.get_rng_state(),
        {name: m.training for name, m in model.named_modules()},
        [p.requires_grad for p in model.parameters()],
    )


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_equal(u, v) for u, v in zip(a, b, strict=True))
    return a == b


def _trained(name: str, size: int = 28):
    """A smoke model for size x size images after one trained step: optimizer and EMA states,
    gradients and BatchNorm statistics in place, as the loop holds them."""
    torch.manual_seed(0)
    model, cfg = models.build(name, "smoke", image_shape=(1, size, size))
    data = fake_mnist(n_train=cfg.batch_size, size=size)
    optimizers = Optimizers(model, cfg, 10, CPU.device)
    ema = EMA(model, 0.9)
    model.train_step(data.train, optimizers, 0)
    ema.update(model)
    model.train()
    return model, data, optimizers, ema


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_counting_a_step_leaves_the_model_its_optimizers_and_the_rng_untouched(name):
    model, data, optimizers, ema = _trained(name)
    before = _state(model, optimizers, ema)
    training_step_flops(model, data.train)
    assert _equal(before, _state(model, optimizers, ema))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_sample_and_likelihood_counts_are_exact_per_image_and_leave_the_model_untouched(name):
    """A call for 2 samples (images) counts twice one's, so the count on one is exact per sample;
    counting every sample mode and a likelihood changes nothing the run holds. On 16x16 images:
    PixelCNN's sampler makes a third of the passes it makes at 28x28."""
    model, data, optimizers, ema = _trained(name, size=16)
    before = _state(model, optimizers, ema)
    for mode in model.sample_modes():
        # exact but for per-call work that does not scale with n (Glow assembles its 1x1 convs' weights
        # from their LU factors once per call: 0.5% at 16x16), which the count on one sample includes
        assert sample_flops(model, mode, n=2) == pytest.approx(sample_flops(model, mode, n=1), rel=1e-2), mode
        assert sample_flops(model, mode, n=1) > 0, mode
    if model.likelihood is not None:
        one = likelihood_flops(model, data.test[:1])
        assert likelihood_flops(model, data.test[:2]) == pytest.approx(one, rel=1e-2) and one > 0
    assert _equal(before, _state(model, optimizers, ema))


def test_planned_steps_under_each_budget():
    step = 1000
    assert budget.planned_steps(TrainConfig(compute_budget=2500.0, max_steps=1), 10, step) == 3
    assert budget.planned_steps(TrainConfig(compute_budget=3000.0), 10, step) == 3
    assert budget.planned_steps(TrainConfig(time_budget_s=5.0, max_steps=2, epochs=1), 10, step) == math.inf
    assert budget.planned_steps(TrainConfig(epochs=2, max_steps=15), 10, step) == 15
    with pytest.raises(ValueError, match="positive number of FLOPs"):
        TrainConfig(compute_budget=0.0)
    with pytest.raises(ValueError, match="one budget"):
        TrainConfig(compute_budget=1e9, time_budget_s=1.0)


def test_a_time_budget_is_not_capped_by_epochs_or_max_steps(tmp_path):
    """The profile's max_steps and epochs do not end a budgeted run: the budget alone does."""
    model, smoke = models.build("vae", "smoke")
    cfg = dataclasses.replace(smoke, epochs=1, max_steps=3, batch_size=64, time_budget_s=0.55, log_every=2)
    trainer = Trainer(model, fake_mnist(), cfg, 0, CPU, tmp_path / "last.pt", {"run": 1})
    trainer._wall_time = lambda: 0.1 * trainer.state.step  # a clock of 0.1 s a step
    state, summary = trainer.run()
    assert state.step == 6 and summary["stopped_by"] == "time budget"  # past max_steps and epoch 1 (4 steps)


def _independent_step_count(name: str, batch_size: int) -> int:
    """FLOPs of one training step counted here, without genbench.metrics.compute: FlopCounterMode
    around the model's train_step with an optimization that back-propagates each loss."""

    class Backward:
        def step(self, group, loss):
            loss.backward()

    model, _ = models.build(name, "smoke")
    with FlopCounterMode(display=False) as counter:
        model.train_step(fake_mnist(n_train=batch_size).train, Backward(), 0)
    return counter.get_total_flops()


def test_a_compute_budget_run_records_budget_steps_and_flops(tmp_path):
    """A smoke run with a compute budget: metrics.json says the budget, the steps it bought and the
    FLOPs per step (equal to a count made here); steps x FLOPs per step reaches the budget by less
    than one step, whatever the profile's max_steps."""
    name = "flow"  # its samples spread from the first step (a GAN's collapse until its 30th)
    per_step = _independent_step_count(name, 16)
    compute = 7.5 * per_step  # buys 8 steps, past max_steps
    plan = plans.plan(
        name, "smoke", 0, train_overrides={"compute_budget": compute, "max_steps": 2, "batch_size": 16},
        eval_overrides={"n_test": 32, "iwae_images": 8, "n_samples": 32, "feature_networks": ()},
    )  # fmt: skip
    run_dir = runs.start(plan, CPU, tmp_path, name="c")
    runs.execute(run_dir, fake_mnist(), CPU)
    document = json.loads((run_dir / "metrics.json").read_text())
    assert document["protocol"]["compute_budget"] == compute  # the report groups runs by it
    metrics = document["metrics"]
    steps, flops = metrics["steps"], metrics["train_flops_per_step"]
    assert flops["value"] == per_step and flops["section"] == "cost"
    assert steps["value"] == 8 and steps["protocol"]["stopped_by"] == "compute budget"
    assert steps["protocol"]["compute_budget"] == compute == flops["protocol"]["compute_budget"]
    assert steps["protocol"]["train_flops_per_step"] == per_step and flops["protocol"]["steps_bought"] == 8
    assert compute <= steps["value"] * flops["value"] < compute + flops["value"]
    assert metrics["train_flops"]["value"] == steps["value"] * flops["value"]
    assert 0 < metrics["utilization"]["value"] and metrics["peak_flops_per_s"]["protocol"]["source"]
    images_per_s = metrics["train_images_per_s"]["value"]
    assert metrics["train_images_per_s"]["protocol"]["compile"] is False  # a budget run stays eager
    assert json.loads((run_dir / "config.json").read_text())["compile"] is False
    rate = flops["value"] / plan.train_config.batch_size * images_per_s
    assert metrics["train_flops_per_s"]["value"] == pytest.approx(rate)
    for key in [k for k in metrics if k.startswith("sample_flops")]:
        assert metrics[key]["value"] > 0


def test_compute_option_sets_the_budget_and_refuses_a_second_budget():
    """`bench run --compute` fills TrainConfig.compute_budget (shown by --dry-run); with a time budget
    too it is one line: a run has one budget."""
    result = invoke("run", "--models", "vae", "--profile", "smoke", "--compute", "2e11", "--dry-run")
    assert result.exit_code == 0, result.output
    assert '"compute_budget": 200000000000.0' in result.output
    both = invoke("run", "--models", "vae", "--profile", "smoke", "--compute", "2e11", "--time-budget", "5")
    assert "one budget" in one_line_error(both, 2)
