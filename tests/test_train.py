"""The loop: checkpoints, bit-identical resume, non-finite stop, precision and compile paths."""

import dataclasses

import pytest
import torch
from genbench import models
from genbench.bench.train import NonFiniteLoss, RunOptions, load_checkpoint, prepare_model, train, validate
from genbench.core.errors import UserError

CPU = RunOptions(device=torch.device("cpu"), progress=False, warmup_steps=1)


def _run(fake_data, tmp_path, cfg=None, options=CPU, resume=None, name="vae", checkpoint="last.pt"):
    torch.manual_seed(0)
    model, smoke = models.build(name, "smoke")
    cfg = cfg or dataclasses.replace(
        smoke, max_steps=12, batch_size=16, checkpoint_every=4, log_every=2, val_images=32
    )
    identity = {"model": name, "seed": 0}
    prepare_model(model, options)
    ckpt = load_checkpoint(tmp_path / checkpoint, identity) if resume else None
    state, summary = train(model, fake_data, cfg, 0, options, tmp_path / checkpoint, identity, resume=ckpt)
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
    import genbench.bench.train

    base = models.build("vae", "smoke")[1]
    cfg16 = dataclasses.replace(
        base, max_steps=16, batch_size=16, checkpoint_every=4, log_every=2, val_images=32
    )
    straight, _, _ = _run(fake_data, tmp_path / "a", cfg16)

    class Killed(Exception):
        pass

    original = genbench.bench.train.save_checkpoint

    def save_then_die(path, model, optimizers, state, identity):
        original(path, model, optimizers, state, identity)
        if state.step == 8:
            raise Killed

    monkeypatch.setattr(genbench.bench.train, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        _run(fake_data, tmp_path / "b", cfg16)
    monkeypatch.setattr(genbench.bench.train, "save_checkpoint", original)
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
            if calls["n"] == 7:
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
