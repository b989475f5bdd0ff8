"""The loop: checkpoints, bit-identical resume, non-finite stop, precision and compile paths."""

import dataclasses

import pytest
import torch

from genbench import models
from genbench.bench.engine.checkpoint import load_checkpoint
from genbench.bench.engine.device import prepare_model
from genbench.bench.engine.optim import EMA, lr_factor
from genbench.bench.engine.train import NonFiniteLoss, RunOptions, Trainer, validate
from genbench.core.errors import UserError

CPU = RunOptions(device=torch.device("cpu"), progress=False, warmup_steps=1)


def _run(fake_data, tmp_path, cfg=None, options=CPU, resume=None, name="vae", checkpoint="last.pt"):
    torch.manual_seed(0)
    model, smoke = models.build(name, "smoke")
    cfg = cfg or dataclasses.replace(
        smoke, max_steps=12, batch_size=16, checkpoint_every=4, log_every=2, val_images=32
    )
    identity = {"model": name, "seed": 0}
    prepare_model(model, options.device, options.compile)
    ckpt = load_checkpoint(tmp_path / checkpoint, identity) if resume else None
    state, summary = Trainer(model, fake_data, cfg, 0, options, tmp_path / checkpoint, identity).run(ckpt)
    return model, state, summary


def test_train_writes_history_validation_and_checkpoint(fake_data, tmp_path):
    model, state, summary = _run(fake_data, tmp_path)
    assert state.step == 12 and (tmp_path / "last.pt").is_file()
    train_rows = [r for r in state.history if r["split"] == "train"]
    val_rows = [r for r in state.history if r["split"] == "val"]
    assert [r["step"] for r in train_rows] == [2, 4, 6, 8, 10, 12]
    assert len(val_rows) == 1 and "bpd" in val_rows[0]
    assert summary["train_images_per_s"] > 0 and summary["peak_memory_mb"] > 0


def test_resume_is_bit_identical(fake_data, tmp_path, monkeypatch):
    """Die right after the step-8 checkpoint, resume: the same weights as 16 steps straight."""
    import genbench.bench.engine.train

    base = models.build("vae", "smoke")[1]
    cfg16 = dataclasses.replace(
        base, max_steps=16, batch_size=16, checkpoint_every=4, log_every=2, val_images=32
    )
    straight, _, _ = _run(fake_data, tmp_path / "a", cfg16)

    class Killed(Exception):
        pass

    original = genbench.bench.engine.train.save_checkpoint

    def save_then_die(path, model, optimizers, ema, state, identity, device):
        original(path, model, optimizers, ema, state, identity, device)
        if state.step == 8:
            raise Killed

    monkeypatch.setattr(genbench.bench.engine.train, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        _run(fake_data, tmp_path / "b", cfg16)
    monkeypatch.setattr(genbench.bench.engine.train, "save_checkpoint", original)
    resumed, state, _ = _run(fake_data, tmp_path / "b", cfg16, resume=True)
    assert state.step == 16
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=False):
        assert torch.equal(a, b), name


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(fake_data, tmp_path, monkeypatch):
    model_cls = models.get_model_class("vae")
    original = model_cls.loss
    calls = {"n": 0}

    def poisoned(self, x):
        terms = original(self, x)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 8:  # the loop's 7th step: the first call is the FLOP count at its start
                terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(model_cls, "loss", poisoned)
    with pytest.raises(NonFiniteLoss) as err:
        _run(fake_data, tmp_path)
    message = str(err.value)
    assert "step 7" in message and "vae" in message and "step 4" in message and "\n" not in message
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["state"]["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_foreign_or_truncated_checkpoint_is_a_clear_error(fake_data, tmp_path):
    _run(fake_data, tmp_path)
    with pytest.raises(UserError, match="different run"):
        load_checkpoint(tmp_path / "last.pt", {"model": "gan", "seed": 0})
    blob = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UserError, match="truncated"):
        load_checkpoint(tmp_path / "cut.pt", {"model": "vae", "seed": 0})
    (tmp_path / "other.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError):
        load_checkpoint(tmp_path / "other.pt", {"model": "vae", "seed": 0})


def test_bf16_autocast_path_runs_on_cpu(fake_data, tmp_path):
    options = dataclasses.replace(CPU, precision="bf16")
    model, state, _ = _run(fake_data, tmp_path, options=options)
    val = validate(model, fake_data.val[:32], 16, options)
    assert torch.isfinite(torch.tensor(val["loss"])) and state.step == 12
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast, not a cast of weights


@pytest.mark.slow
def test_compile_path_runs_on_cpu(fake_data, tmp_path):
    options = dataclasses.replace(CPU, compile=True)
    base = models.build("vae", "smoke")[1]
    cfg = dataclasses.replace(
        base, max_steps=4, batch_size=16, checkpoint_every=4, log_every=2, val_images=16
    )
    model, state, _ = _run(fake_data, tmp_path, cfg, options=options)
    assert state.step == 4


def test_learning_rate_warms_up_then_follows_the_schedule():
    cfg = models.build("vae", "smoke")[1]
    cosine = dataclasses.replace(cfg, schedule="cosine", warmup_steps=4)
    assert [lr_factor(cosine, s, 104) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(cosine, 54, 104) == pytest.approx(0.5)  # half way through the decay
    assert lr_factor(cosine, 104, 104) == pytest.approx(0.0)
    assert lr_factor(dataclasses.replace(cfg, warmup_steps=2), 50, 104) == 1.0  # constant after warm-up


def test_loop_applies_schedule_clipping_and_records_them(fake_data, tmp_path):
    base = models.build("vae", "smoke")[1]
    cfg = dataclasses.replace(
        base, max_steps=8, batch_size=16, checkpoint_every=8, log_every=1, val_images=16,
        schedule="cosine", warmup_steps=4, grad_clip=0.5,
    )  # fmt: skip
    _, state, _ = _run(fake_data, tmp_path, cfg)
    rows = [r for r in state.history if r["split"] == "train"]
    assert [r["lr"] for r in rows[:4]] == pytest.approx([cfg.lr * f for f in (0.25, 0.5, 0.75, 1.0)])
    assert rows[-1]["lr"] < rows[3]["lr"]
    assert all("grad_norm_main" in r and r["grad_norm_main"] > 0 for r in rows)


def test_ema_weights_are_what_the_run_ends_with(fake_data, tmp_path):
    base = models.build("vae", "smoke")[1]
    cfg = dataclasses.replace(
        base, max_steps=6, batch_size=16, checkpoint_every=3, log_every=3, val_images=16, ema_decay=0.5
    )
    model, state, _ = _run(fake_data, tmp_path, cfg)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["ema"]["updates"] == 6
    for key, value in model.state_dict().items():  # evaluation sees the averaged weights
        assert torch.equal(value, ckpt["ema"]["shadow"][key]), key
    own = ckpt["model"]
    assert any(not torch.equal(own[k], ckpt["ema"]["shadow"][k]) for k in own if own[k].is_floating_point())


def test_ema_average_matches_its_definition():
    layer = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(0.0)
    ema = EMA(layer, decay=0.9)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    ema.update(layer)  # warm-up decay min(0.9, 2/11)
    assert float(ema.shadow["weight"]) == pytest.approx(1 - 2 / 11)
    with ema.applied(layer):
        assert float(layer.weight.detach()) == pytest.approx(1 - 2 / 11)
    assert float(layer.weight.detach()) == 1.0


def test_a_finished_run_resumes_straight_to_evaluation(fake_data, tmp_path, monkeypatch):
    """The final checkpoint says training is complete: resuming it trains nothing more and keeps
    the throughput measured when it trained."""
    _, state, summary = _run(fake_data, tmp_path)
    assert state.finished
    calls = []
    monkeypatch.setattr(Trainer, "_step", lambda self, x: calls.append(1))
    _, again, resumed = _run(fake_data, tmp_path, resume=True)
    assert not calls and again.step == state.step
    assert resumed["train_images_per_s"] == summary["train_images_per_s"]
    assert resumed["peak_memory_mb"] == summary["peak_memory_mb"]


def test_checkpoint_is_written_before_the_final_validation(fake_data, tmp_path, monkeypatch):
    seen = {}

    def spy(self):
        seen["step"] = torch.load(tmp_path / "last.pt", weights_only=True)["state"]["step"]
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_validate", spy)
    with pytest.raises(KeyboardInterrupt):
        _run(fake_data, tmp_path)
    assert seen["step"] == 12  # the training done so far is safe when validation starts


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_compile_turns_each_training_step_into_whole_graphs(name, fake_data):
    """--compile compiles what train_step calls, once, with no graph break: whole graphs (one per
    family; the GAN's generator, D's loss and G's loss) that later steps reuse without recompiling.
    Counted with dynamo's eager backend, which traces what inductor would compile, without codegen."""
    from model_utils import optimizers_for
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model, cfg = models.build(name, "smoke")
    prepare_model(model, torch.device("cpu"), compile=True, compile_backend="eager")
    optimizers = optimizers_for(model, config=cfg)
    x = fake_data.train[: min(cfg.batch_size, 16)]
    model.train()
    for step in range(3):
        model.train_step(x, optimizers, step)
    graphs = counters["stats"]["unique_graphs"]
    for step in range(3, 6):
        model.train_step(x, optimizers, step)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert 1 <= graphs <= 3 and counters["stats"]["unique_graphs"] == graphs


def test_validations_spread_over_the_run_leave_training_unchanged(fake_data, tmp_path):
    """validations=4 over 12 steps: validation at steps 3, 6, 9 and at the end; the weights are those
    of a run validated at the end only (validation draws from its own random stream)."""
    base = models.build("vae", "smoke")[1]
    cfg = dataclasses.replace(
        base, max_steps=12, batch_size=16, checkpoint_every=4, log_every=2, val_images=32
    )
    once, _, _ = _run(fake_data, tmp_path / "once", cfg)
    spread, state, _ = _run(fake_data, tmp_path / "spread", dataclasses.replace(cfg, validations=4))
    assert [r["step"] for r in state.history if r["split"] == "val"] == [3, 6, 9, 12]
    for a, b in zip(once.state_dict().values(), spread.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_quick_profile_validates_at_least_five_times():
    from genbench.bench.planning.plan import plan

    for name in models.MODELS:
        assert plan(name, "quick", 0).train_config.validations >= 5, name
