"""Data-parallel training of one run on N processes, on PyTorch's own engine (torchrun, c10d).

``torchrun --nproc-per-node N -m genbench.bench.commands.cli run ...`` (or ``bench run --nproc N``, which
starts torchrun through its own API) runs N copies of the same run: NCCL with one GPU per local
rank, gloo on CPUs. The protocol stays the one of a single process:

* ``batch_size`` is the global batch. Every rank computes the same seeded epoch order and the same
  global batch, and trains on its contiguous slice of it (``shard``: batch_size / N images), so the
  global batch, the steps per epoch and the learning rate are a single process's (no scaling rule).
* Gradients are averaged across ranks inside ``Optimizers.step`` after ``loss.backward()``: one
  coalesced all_reduce per optimizer step (``average_gradients``). torch's DistributedDataParallel
  wrapper is not used: it arms its gradient hooks in the wrapper's forward, and genbench's models
  step their optimizers inside ``train_step`` (the GAN twice per step, through ``Optimizers.step``)
  rather than through one forward of a wrapped module. Averaging in the one place every model's
  step passes through covers every family; what DDP would add (overlapping the all_reduce with the
  backward pass) is left out for clarity.
* Parameters and buffers are broadcast from rank 0 once, after the checkpoint is loaded (there is
  no wrapper to load it around; ``broadcast_module``), and buffers and EMA weights again before
  each validation, which follows the last step too: buffers that batches update on each rank (the
  GAN's BatchNorm running statistics) are then rank 0's, as its checkpoints hold them, for
  validation and evaluation.
* The GAN's BatchNorm normalizes each rank's slice by its own statistics, so its steps differ from
  a single process's at the same global batch; act norm's data-dependent initialization all-reduces
  its statistics (``models.realnvp.ActNorm``), so the flow starts as a single process would.
* Noise: each rank draws its training noise (latents, dequantization, timesteps) from its own
  stream, reseeded from (seed, step, rank) at every step (``seed_step``): no two ranks share noise,
  and a resumed run draws what an uninterrupted one would without storing N generator states. A
  DDP run therefore equals a single-process run in distribution, not bit for bit.
  Validation and evaluation draw per batch from (seed, batch) and are split across ranks and
  gathered (``genbench.core.distributed.map_batches``): their numbers and samples are a single
  process's exactly.
* Rank 0 alone creates run folders and writes checkpoints, history, status and results; every rank
  loads the same checkpoint to resume. Signals and the time budget are agreed on at every step
  (``any_rank``), so all ranks stop after the same step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from genbench.core.distributed import derive_seed, is_distributed, rank, world_size
from genbench.core.errors import UserError

T = TypeVar("T")
ENV_REQUEST = "GENBENCH_RUN_REQUEST"  # `bench run --nproc N` hands its parsed request to the workers here
_control: dist.ProcessGroup | None = None  # gloo group for host-side flags and objects (None: the default)


class DistributedError(UserError):
    """A data-parallel run was set up wrongly (devices, batch size, nested launch)."""

    exit_code = 2


def launched_world() -> int:
    """The number of processes torchrun started for this run (1 when not under torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) if "LOCAL_RANK" in os.environ else 1


def rank_device(name: str) -> torch.device:
    """This process's device under torchrun: GPU LOCAL_RANK for "cuda" (and for "auto" where there is
    a GPU), else the CPU. One process per GPU, so a numbered device cannot be shared by N ranks."""
    local_rank, world = int(os.environ["LOCAL_RANK"]), launched_world()
    kind = torch.device(
        "cuda" if name == "auto" and torch.cuda.is_available() else name if name != "auto" else "cpu"
    )
    if kind.type == "cpu":
        return torch.device("cpu")
    if kind.type != "cuda":
        raise DistributedError(f"--device {name}: data-parallel runs use CUDA GPUs (NCCL) or the CPU (gloo)")
    if kind.index is not None:
        raise DistributedError(
            f"--device {name}: with {world} processes each takes GPU LOCAL_RANK; use --device cuda"
        )
    if not torch.cuda.is_available() or torch.cuda.device_count() <= local_rank:
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise DistributedError(f"{world} processes need {world} GPUs, this machine has {have}; lower --nproc")
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """The default process group from torchrun's environment (NCCL for GPUs, gloo for the CPU) and a
    gloo group for the loop's per-step flags, for the block; nothing when torchrun started one process."""
    global _control
    if launched_world() <= 1:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
        _control = dist.new_group(backend="gloo")  # flags live on the host: no device sync to read them
    else:
        dist.init_process_group("gloo")
    try:
        yield
    finally:
        _control = None
        dist.destroy_process_group()


def check_launch(device: torch.device, processes: int) -> None:
    """`bench run --nproc N` on this machine: N GPUs for CUDA (one each), any N on the CPU."""
    if processes <= 1 or launched_world() > 1:  # under torchrun rank_device has checked its own
        return
    if device.type not in ("cpu", "cuda"):
        raise DistributedError(
            f"--nproc {processes}: data-parallel runs use CUDA GPUs (NCCL) or the CPU (gloo)"
        )
    if device.type == "cuda" and device.index is not None:
        raise DistributedError(
            f"--device {device} --nproc {processes}: each process takes its own GPU; use --device cuda"
        )
    if device.type == "cuda" and torch.cuda.device_count() < processes:
        raise DistributedError(
            f"--nproc {processes} needs {processes} GPUs, this machine has "
            f"{torch.cuda.device_count()}; lower it"
        )
    check_resources(processes, device)


def check_resources(processes: int, device: torch.device) -> None:
    """`--nproc N` on this machine, before any worker starts: on the CPU no more processes than
    usable cores (each rank's thread pool needs one), and for any device no more workers than the
    available memory holds, at least this process's own resident size each (torch and the CLI loaded,
    before a worker adds its data and model: a lower estimate, so a refusal is certain)."""
    from genbench.bench.engine.threads import usable_cores
    from genbench.bench.engine.timing import available_memory_bytes, current_rss_bytes

    cores = usable_cores()
    if device.type == "cpu" and processes > cores:
        raise DistributedError(
            f"--nproc {processes} on {cores} usable CPU core(s): each process needs a core of its own; "
            f"use --nproc {cores} or fewer"
        )
    each, available = current_rss_bytes(), available_memory_bytes()
    if each is not None and available is not None and processes * each > available:
        fits = max(1, available // each)
        raise DistributedError(
            f"--nproc {processes}: {processes} workers need at least {processes * each / 2**30:.1f} GiB "
            f"(~{each / 2**20:.0f} MiB each before data and model), {available / 2**30:.1f} GiB is "
            f"available; use --nproc {fits} or fewer"
        )


ENV_PARENT = "GENBENCH_LAUNCHER_PID"  # the `bench run --nproc N` process whose workers these are
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """In a worker of `bench run --nproc N`: the kernel SIGKILLs this process when the launcher that
    started it dies, however it dies (SIGKILL included), so no worker trains on, holding memory, and
    marks the run done for a launcher that is gone. Linux only (prctl); elsewhere torchrun's own
    SIGTERM on a clean exit of the launcher is all there is."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return
    launcher = os.environ.get(ENV_PARENT)
    try:
        if launcher:
            os.kill(int(launcher), 0)
    except ProcessLookupError:  # it died before the prctl above took effect
        os._exit(128 + signal.SIGKILL)


def check_batch_size(batch_size: int, processes: int | None = None) -> None:
    """The global batch must split into equal slices (each rank's gradient weighs the same)."""
    n = processes or world_size()
    if batch_size % n:
        raise DistributedError(
            f"--batch-size {batch_size} is the global batch and must split evenly over {n} processes; "
            f"use a multiple of {n}"
        )


def shard(x: Tensor) -> Tensor:
    """This rank's contiguous slice of a global batch: rows [r B/N, (r+1) B/N)."""
    size = len(x) // world_size()
    return x[rank() * size : (rank() + 1) * size]


def seed_step(seed: int, step: int) -> None:
    """Reseed this rank's generators for loop step ``step`` (see the module docstring: noise)."""
    if is_distributed():
        torch.manual_seed(derive_seed("train", seed, step, rank()))


def _by_dtype(tensors: Iterable[Tensor]) -> dict[tuple[torch.dtype, torch.device], list[Tensor]]:
    groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    return groups


@torch.no_grad()
def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Replace each gradient by its mean over ranks: one all_reduce of a flat buffer per dtype. Every
    rank runs the same code on the same model, so the same parameters hold gradients on every rank."""
    if not is_distributed():
        return
    for grads in _by_dtype(p.grad for p in params if p.grad is not None).values():
        flat = _flatten_dense_tensors(grads)  # (sum of numels,)
        dist.all_reduce(flat)
        flat.div_(world_size())
        for grad, mean in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
            grad.copy_(mean)


@torch.no_grad()
def broadcast_(tensors: Iterable[Tensor]) -> None:
    """Overwrite the tensors with rank 0's, one broadcast of a flat buffer per dtype."""
    if not is_distributed():
        return
    for (dtype, _), group in _by_dtype(tensors).items():
        wire = [t.to(torch.uint8) for t in group] if dtype == torch.bool else group  # gloo has no bool
        flat = _flatten_dense_tensors(wire)
        dist.broadcast(flat, src=0)
        for t, value in zip(group, _unflatten_dense_tensors(flat, wire), strict=True):
            t.copy_(value)


def broadcast_module(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank."""
    broadcast_([*module.parameters(), *module.buffers()])


def any_rank(*flags: bool) -> tuple[bool, ...]:
    """Each flag, true where it is true on any rank: one small all_reduce on the host."""
    if not is_distributed():
        return flags
    values = torch.tensor([int(f) for f in flags], dtype=torch.int32)
    dist.all_reduce(values, op=dist.ReduceOp.MAX, group=_control)
    return tuple(bool(v) for v in values.tolist())


def on_rank_zero(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 alone (creating a run folder); its picklable result on every rank. Should
    rank 0 fail, its exit makes torchrun end the others."""
    if not is_distributed():
        return fn()
    box: list[Any] = [fn() if rank() == 0 else None]
    dist.broadcast_object_list(box, src=0, group=_control)
    return box[0]


@contextlib.contextmanager
def rank_zero_first() -> Iterator[None]:
    """Rank 0 runs the block (reading, possibly downloading, the data), then the others do."""
    if is_distributed() and rank() != 0:
        dist.barrier(group=_control)
    yield
    if is_distributed() and rank() == 0:
        dist.barrier(group=_control)


def launch(nproc: int, request: dict[str, Any]) -> None:
    """`bench run --nproc N`: torchrun (standalone, this machine) through its own API, starting N
    workers of the hidden command `bench run-worker`, which read ``request`` from the environment.
    Only rank 0's output reaches the console. A failed worker ends the command with its exit
    status (rank 0 has printed its one-line error; another rank's failure is named here)."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = torchrun.get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0", "--local-ranks-filter=0",
         "-m", "genbench.bench.commands.cli", "run-worker"]
    )  # fmt: skip
    os.environ[ENV_REQUEST] = json.dumps(request)
    os.environ[ENV_PARENT] = str(os.getpid())  # the workers die with this process (die_with_parent)
    # The agent's own log lines (rendezvous, "sending SIGTERM", a failure's exit code) repeat what
    # rank 0 has said; a failure of another rank is named below.
    agent_log = logging.getLogger("torch.distributed.elastic")
    agent_log.addHandler(logging.NullHandler())
    agent_log.propagate = False
    try:
        torchrun.run(args)
    except ChildFailedError as exc:
        failed_rank, failure = exc.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode  # -9: killed by SIGKILL
        if failed_rank != 0:
            print(
                f"Error: rank {failed_rank} of {nproc} failed (exit status {failure.exitcode}): "
                f"{failure.message or 'see its log'}",
                file=sys.stderr,
            )
        raise SystemExit(code) from None
    except SignalException:  # Ctrl-C or SIGTERM: the agent has passed it on; rank 0 has said what it stopped
        raise SystemExit(130) from None
    finally:
        os.environ.pop(ENV_REQUEST, None)
        os.environ.pop(ENV_PARENT, None)
