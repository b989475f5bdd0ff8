"""Data-parallel training with 2 gloo processes on the CPU, through the real loop.

One spawn of 2 ranks trains every family for a few steps on fake data and evaluates it; the tests
compare the ranks with each other and with a single process training on the whole global batch.
A DDP run draws each rank's noise from its own stream (bench.engine.distributed), so for the comparison
with a single process the noise is held equal: ``SharedNoise`` draws every batch-shaped random
tensor for the global batch from one generator, seeded alike in every process, and hands each
rank its rows, as the single process draws them. What is compared is then the engine itself:
sharding, gradient averaging, clipping, act norm's all-reduced initialization, the logged means.

The runs step with plain SGD where the profiles say Adam: Adam's first step has the same size
whatever a gradient's magnitude, and right after act norm's data-dependent initialization the
flow's loc gradients are zero up to rounding (the batch is centred), so rounding would pick the
direction of a few first steps; and Adam would not tell an averaged gradient from a summed one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import torch
from conftest import fake_mnist
from torch import nn
from torch.overrides import TorchFunctionMode

from genbench import models
from genbench.bench.engine import distributed
from genbench.bench.engine.train import RunOptions, Trainer, validate
from genbench.metrics.base import EvalConfig, EvalContext

FAMILIES = sorted(models.MODELS)
WORLD = 2
GLOBAL_BATCH = 8
STEPS = 4
CPU = RunOptions(device=torch.device("cpu"), progress=False, warmup_steps=1)
EVAL = EvalConfig(n_test=16, n_samples=16, batch_size=8, feature_networks=())  # two batches: one a rank


class SharedNoise(TorchFunctionMode):
    """Batch-shaped draws (leading dimension the rank's batch) of randn_like, rand_like, randn, rand
    and randint are drawn for the global batch from one generator; the rank keeps its rows."""

    LIKE = {torch.randn_like: torch.randn, torch.rand_like: torch.rand}

    def __init__(self, rank: int, world: int, local_batch: int) -> None:
        super().__init__()
        self.rank, self.world, self.local = rank, world, local_batch
        self.generator = torch.Generator().manual_seed(1234)

    def _draw(self, make, shape: tuple[int, ...]) -> torch.Tensor:
        if not shape or shape[0] != self.local:
            return make(tuple(shape))
        full = make((self.local * self.world, *shape[1:]))  # (global batch, ...)
        return full[self.rank * self.local : (self.rank + 1) * self.local]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        g = self.generator
        if func in self.LIKE:
            like, dtype = args[0], kwargs.get("dtype") or args[0].dtype
            return self._draw(lambda s: self.LIKE[func](s, generator=g, dtype=dtype), like.shape)
        if func in (torch.randn, torch.rand) and kwargs.get("generator") is None:
            shape = tuple(args[0]) if len(args) == 1 and not isinstance(args[0], int) else tuple(args)
            return self._draw(lambda s: func(s, generator=g, dtype=kwargs.get("dtype")), shape)
        if func is torch.randint and kwargs.get("generator") is None and len(args) == 3:
            low, high, size = args
            return self._draw(lambda s: torch.randint(low, high, s, generator=g), tuple(size))
        return func(*args, **kwargs)


class SGD(torch.optim.SGD):
    """Plain SGD built from the loop's Adam arguments."""

    def __init__(self, params, lr: float, betas=None, weight_decay: float = 0.0, **_) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay)


def train(name: str, rank: int, world: int, checkpoint: Path) -> dict:
    """A few steps of the family's smoke model at the global batch, this rank's share of it."""
    torch.manual_seed(0)
    model, smoke = models.build(name, "smoke")
    cfg = dataclasses.replace(
        smoke, max_steps=STEPS, batch_size=GLOBAL_BATCH, log_every=1, checkpoint_every=100, val_images=16,
        grad_clip=1.0,
    )  # fmt: skip
    noise = SharedNoise(rank, world, GLOBAL_BATCH // world)
    step = model.train_step

    def train_step(x, optim, i):
        with noise:
            return step(x, optim, i)

    model.train_step = train_step  # validation and evaluation draw their own seeded noise
    with mock.patch.object(torch.optim, "Adam", SGD):
        state, _ = Trainer(model, fake_mnist(), cfg, 0, CPU, checkpoint, {}).run()
    model.eval()
    ctx = EvalContext(model, fake_mnist(), EVAL, CPU.device, seed=0)
    train_rows = [r for r in state.history if r["split"] == "train"]
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "losses": [r["loss"] for r in train_rows],
        "grad_norms": [v for r in train_rows for k, v in r.items() if k.startswith("grad_norm")],
        "val": [r for r in state.history if r["split"] == "val"],
        "nll": ctx.per_image(model.log_prob, ctx.test_images()) if model.likelihood else None,
        "samples": ctx.samples(),
    }


def _worker(rank: int, world: int, port: int, out: Path) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    with distributed.process_group(torch.device("cpu")):
        results = {name: train(name, rank, world, out / f"{name}.pt") for name in FAMILIES}
        results["noise"] = [(distributed.seed_step(0, step), torch.rand(4))[1] for step in (5, 6, 5)]
    torch.save(results, out / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    torch.multiprocessing.spawn(_worker, args=(WORLD, _free_port(), out), nprocs=WORLD)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("single")
    return {name: train(name, 0, 1, out / f"{name}.pt") for name in FAMILIES}


def _has_batch_statistics(name: str) -> bool:
    """Normalization by each rank's own batch (BatchNorm): its steps differ from one process's."""
    model = models.build(name, "smoke")[0]
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_each_rank_draws_its_own_training_noise_from_its_step(ranks):
    """No two ranks share noise; a rank's noise at a step is a function of the step (a resumed run
    draws what an uninterrupted one would)."""
    first, second = ranks[0]["noise"], ranks[1]["noise"]
    assert not torch.equal(first[0], second[0]) and not torch.equal(first[0], first[1])
    assert torch.equal(first[0], first[2]) and torch.equal(second[0], second[2])


@pytest.mark.parametrize("name", FAMILIES)
def test_ranks_hold_identical_parameters_and_buffers(ranks, name):
    """Averaged gradients (both of the GAN's optimizers), act norm's global initialization and the
    buffers broadcast from rank 0 keep every rank's model the same, bit for bit."""
    first, second = ranks[0][name], ranks[1][name]
    assert first["state"].keys() == second["state"].keys()
    for key in first["state"]:
        assert torch.equal(first["state"][key], second["state"][key]), key
    assert first["losses"] == second["losses"]  # the logged loss is the global batch's mean


@pytest.mark.parametrize("name", FAMILIES)
def test_two_ranks_train_as_one_process_on_the_global_batch(ranks, single, name):
    """2 ranks x batch B: the loss trajectory, validation and final weights of 1 process x batch 2B."""
    if _has_batch_statistics(name):
        pytest.skip(f"{name} normalizes by each rank's batch statistics (BatchNorm)")
    ddp, one = ranks[0][name], single[name]
    assert len(ddp["losses"]) == STEPS
    assert ddp["losses"] == pytest.approx(one["losses"], rel=1e-5, abs=1e-5)
    assert ddp["grad_norms"] == pytest.approx(one["grad_norms"], rel=1e-4)  # averaged, not summed
    assert [r["loss"] for r in ddp["val"]] == pytest.approx([r["loss"] for r in one["val"]], rel=1e-5)
    for key, value in one["state"].items():
        if value.is_floating_point():
            torch.testing.assert_close(ddp["state"][key], value, rtol=1e-4, atol=1e-5, msg=key)
        else:
            assert torch.equal(ddp["state"][key], value), key


# Evaluation split across ranks runs the same batches, seeded alike, as one process: the same
# arithmetic up to the order of floating-point reductions, which CPU kernels choose by thread count
# (each rank runs 1 thread, this process as many as the machine gives it) and instruction set. So
# "equal" is: samples (integers, drawn at the same batch shapes) bit for bit once the thread count
# is the ranks' own; losses and per-image log-likelihoods within float32 rounding of their size, a
# relative sqrt(D) * eps(float32), where D is the number of per-pixel terms a value sums (a random
# walk of D roundings of one ulp; the worst case is D ulps). At D = 784 that is 3.3e-6 of the value,
# about 0.015 nats of an image's ~4,370; two ranks seen on a 2-core EPYC differed by 5e-4 nats.
# A batch evaluated with another batch's noise moves an image by tenths of a nat or more.
RTOL = float(torch.finfo(torch.float32).eps) * 784**0.5


@contextlib.contextmanager
def _one_thread():
    """The ranks' thread count, for this process's evaluation; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name", FAMILIES)
def test_evaluation_gathered_from_two_ranks_is_one_process_evaluation(ranks, name):
    """Validation (at the last step, with rank 0's buffers), per-image likelihoods (seeded
    dequantization and posterior noise per batch) and samples, split across 2 ranks and gathered,
    equal one process's with rank 0's weights (equal as RTOL says)."""
    ddp = ranks[0][name]
    model = models.build(name, "smoke")[0]
    model.load_state_dict(ddp["state"])  # the weights it validated with: training ended there
    val = validate(model, fake_mnist().val[:16], GLOBAL_BATCH, CPU, seed=0)
    assert val == pytest.approx({k: v for k, v in ddp["val"][-1].items() if k in val}, rel=RTOL)
    model.eval()
    ctx = EvalContext(model, fake_mnist(), EVAL, CPU.device, seed=0)
    with _one_thread():
        samples = ctx.samples()
    assert torch.equal(samples, ddp["samples"]) and torch.equal(ranks[1][name]["samples"], ddp["samples"])
    if model.likelihood is not None:
        nll = ctx.per_image(model.log_prob, ctx.test_images())  # (16,)
        assert nll.shape == (EVAL.n_test,)
        torch.testing.assert_close(nll, ddp["nll"], rtol=RTOL, atol=0)


def _descendants(pid: int) -> list[int]:
    """The processes started under ``pid`` (torchrun starts its workers in sessions of their own, so a
    process group does not reach them)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    children = [p for p, parent in parents.items() if parent == pid]
    return children + [d for c in children for d in _descendants(c)]


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (dead, waiting for whoever adopted it to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.slow
def test_killed_ddp_run_resumes_to_the_end_of_an_uninterrupted_one(tmp_path, mnist_dir):
    """`bench run --nproc 2` SIGKILLed after a checkpoint (the launcher: both ranks die with it, and the
    run is left "running", not marked done by ranks training on), then resumed with `--resume --nproc
    2`: the weights and numbers of the same run never interrupted."""
    bench = [sys.executable, "-m", "genbench.bench.commands.cli", "run"]
    common = ["--models", "vae", "--profile", "smoke", "--max-steps", "120", "--nproc", "2", "--threads", "1",
              "--data-dir", str(mnist_dir), "--out", str(tmp_path), "--n-samples", "32",
              "--allow-few-samples", "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = subprocess.run(
        [*bench, *common, "--name", "straight"], env=env, capture_output=True, text=True
    )
    assert straight.returncode == 0, straight.stderr

    run_dir = tmp_path / "vae-smoke-s0-killed"
    killed = subprocess.Popen([*bench, *common, "--name", "killed"], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    workers = _descendants(killed.pid)
    killed.send_signal(signal.SIGKILL)  # the launcher alone: its workers die with it (PR_SET_PDEATHSIG)
    killed.wait()
    deadline = time.monotonic() + 30
    while any(_running(pid) for pid in workers):
        assert time.monotonic() < deadline, "workers outlived their SIGKILLed launcher"
        time.sleep(0.05)
    held = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["state"]["step"]
    assert 0 < held < 120 and json.loads((run_dir / "status.json").read_text())["status"] == "running"

    resumed = subprocess.run(
        [*bench, "--resume", str(run_dir), "--nproc", "2", "--threads", "1", "--no-progress"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    ends = [torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=True)
            for name in ("vae-smoke-s0-straight", "vae-smoke-s0-killed")]  # fmt: skip
    assert ends[0]["state"]["step"] == ends[1]["state"]["step"] == 120
    for key, value in ends[0]["model"].items():
        assert torch.equal(value, ends[1]["model"][key]), key
    numbers = [json.loads((tmp_path / name / "metrics.json").read_text())["metrics"]
               for name in ("vae-smoke-s0-straight", "vae-smoke-s0-killed")]  # fmt: skip
    for key in ("bpd", "iwae_bpd", "fid_mnist"):
        assert numbers[0][key]["value"] == numbers[1][key]["value"], key
