"""genbench's training loop against the usual PyTorch-examples loop, same models, same steps.

    python benchmarks/compare_loop.py --data-dir ../shared/data
    python benchmarks/compare_loop.py --models vae --steps 60 --repeats 5 --threads 1

Both ways train a fresh quick-profile model (models.build(name, "quick"), same seed, the profile's
batch size unless --batch-size is given) for --warmup untimed then --steps timed steps, in one
process, with the thread count `bench run` would pick now (--threads forces one): the settings the
quick profile runs with (the quick VAE and DCGAN do not compile on the CPU, see the README):

  plain     torchvision.datasets.MNIST(transform=ToTensor()) through a DataLoader(shuffle=True), each
            float batch turned back into the uint8 the model interface takes, then model.train_step.
            num_workers defaults to 0: on two shared cores a worker process takes its CPU time from
            the same cores as the step's intra-op threads and adds pickling and IPC per batch, so it
            can only hide the data cost where a core would otherwise idle (a GPU machine).
  genbench  bench.engine.train.Trainer itself: load_mnist's resident uint8 tensors, index slices of a seeded
            permutation, the quick profile's log_every (host syncs), with max_steps = warmup + steps,
            checkpoint_every beyond the run and val_images = one batch, so the validation and the one
            checkpoint it writes at the end (both after the timed span) cost little.

The timed span is the same for both: from the return of step --warmup to the return of the last
step, so it holds exactly --steps batches (fetch, step and the loop's own work). Two clocks: wall
time (images/s) and this process's CPU time per batch, which other processes on the machine do not
inflate. A third row times the data path alone (DataLoader + ToTensor + uint8 conversion against
index slices). The plain loop reads all 60k training images, genbench its 55k split.

Other processes make single runs noisy: the ways alternate (plain first, then genbench first, ...)
for --repeats rounds; the table shows the best of each way and every run's images/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision import transforms

from genbench import models
from genbench.bench.engine import threads
from genbench.bench.engine.data import Dataset, batches, epoch_order, load_mnist, raw_dir, resolve_data_dir
from genbench.bench.engine.device import prepare_model, resolve_device
from genbench.bench.engine.timing import device_name, synchronize
from genbench.bench.engine.train import RunOptions, Trainer
from genbench.core.errors import UserError

PROFILE = "quick"


@dataclasses.dataclass(frozen=True)
class Plan:
    steps: int = 30  # timed steps
    warmup: int = 5  # untimed steps before them
    batch_size: int = 128  # the data-path row's; each model row uses its profile's unless forced
    seed: int = 0
    num_workers: int = 0


@dataclasses.dataclass(frozen=True)
class Timing:
    images_per_s: float  # wall clock
    cpu_ms_per_batch: float  # this process's CPU time (all its threads)
    batch_size: int


class Span:
    """Clocks read when batch number ``warmup`` and batch ``warmup + steps`` are done."""

    def __init__(self, plan: Plan, device: torch.device) -> None:
        self.plan, self.device = plan, device
        self.count = 0
        self.marks: list[tuple[float, float]] = []

    def tick(self) -> None:
        self.count += 1
        if self.count in (self.plan.warmup, self.plan.warmup + self.plan.steps):
            synchronize(self.device)
            self.marks.append((time.perf_counter(), time.process_time()))

    @property
    def done(self) -> bool:
        return len(self.marks) == 2

    def timing(self) -> Timing:
        if not self.done:
            raise RuntimeError(
                f"only {self.count} batches ran; expected {self.plan.warmup + self.plan.steps}"
            )
        (wall0, cpu0), (wall1, cpu1) = self.marks
        return Timing(
            self.plan.steps * self.plan.batch_size / (wall1 - wall0),
            (cpu1 - cpu0) / self.plan.steps * 1e3,
            self.plan.batch_size,
        )


def torchvision_mnist(data_dir: Path) -> torchvision.datasets.MNIST:
    """The training set as a plain user loads it: PIL images through ToTensor, floats in [0, 1]."""
    raw = raw_dir(data_dir)
    root = raw.parent.parent  # torchvision reads <root>/MNIST/raw
    if raw != root / "MNIST" / "raw":
        raise UserError(f"torchvision needs MNIST in <data-dir>/MNIST/raw/, found it in {raw}; pass its root")
    return torchvision.datasets.MNIST(str(root), train=True, transform=transforms.ToTensor(), download=False)


def _loader(dataset, plan: Plan) -> DataLoader:
    generator = torch.Generator().manual_seed(plan.seed)
    return DataLoader(
        dataset, batch_size=plan.batch_size, shuffle=True, num_workers=plan.num_workers, generator=generator
    )


def _to_uint8(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return (x * 255).round().to(torch.uint8).to(device)  # (B, 1, 28, 28) float [0, 1] -> uint8


class PlainOptimizers:
    """What a plain PyTorch loop does: one Adam per parameter group, zero_grad, backward, step."""

    def __init__(self, model, cfg) -> None:
        self.groups = {
            name: torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas)
            for name, params in model.parameter_groups().items()
        }

    def step(self, group: str, loss: torch.Tensor) -> None:
        self.groups[group].zero_grad(set_to_none=True)
        loss.backward()
        self.groups[group].step()


def plain_loop(name: str, dataset, plan: Plan, device: torch.device) -> Timing:
    torch.manual_seed(plan.seed)
    model, cfg = models.build(name, PROFILE)
    model.to(device).train()
    optimizers = PlainOptimizers(model, cfg)
    span = Span(plan, device)
    for step, (x, _) in enumerate(_loader(dataset, plan)):
        model.train_step(_to_uint8(x, device), optimizers, step)
        span.tick()
        if span.done:
            break
    return span.timing()


def genbench_loop(name: str, data: Dataset, plan: Plan, device: torch.device) -> Timing:
    torch.manual_seed(plan.seed)
    model, cfg = models.build(name, PROFILE)
    options = RunOptions(device=device, progress=False, warmup_steps=plan.warmup)
    prepare_model(model, device)
    span = Span(plan, device)
    inner = model.train_step

    def counted_step(x, optimizers, step):
        terms = inner(x, optimizers, step)
        span.tick()
        return terms

    model.train_step = counted_step  # the harness calls this instance attribute once per step
    total = plan.warmup + plan.steps
    cfg = dataclasses.replace(
        cfg,
        batch_size=plan.batch_size,
        max_steps=total,
        checkpoint_every=total + 1,
        val_images=plan.batch_size,
    )
    with tempfile.TemporaryDirectory() as tmp:
        Trainer(model, data, cfg, plan.seed, options, Path(tmp) / "last.pt", {"model": name}).run()
    return span.timing()


def _data_only(batch_iter, plan: Plan, device: torch.device, convert) -> Timing:
    span = Span(plan, device)
    for batch in batch_iter:
        convert(batch)
        span.tick()
        if span.done:
            break
    return span.timing()


def plain_data(dataset, plan: Plan, device: torch.device) -> Timing:
    return _data_only(_loader(dataset, plan), plan, device, lambda batch: _to_uint8(batch[0], device))


def genbench_data(data: Dataset, plan: Plan, device: torch.device) -> Timing:
    order = epoch_order(len(data.train), plan.seed, 0, device)
    return _data_only(batches(data.train, plan.batch_size, order, drop_last=True), plan, device, lambda x: x)


Runs = dict[str, tuple[list[Timing], list[Timing]]]  # row -> (plain runs, genbench runs)


def profile_batch(name: str) -> int:
    return models.get_model_class(name).profiles[PROFILE]()[1].batch_size


def compare(
    names: list[str],
    data_dir: Path,
    plan: Plan,
    device: torch.device,
    repeats: int,
    forced_batch: bool = False,
) -> Runs:
    """Rows are the models (at their profile's batch size unless ``forced_batch``) and "data" (the data
    path alone, at ``plan.batch_size``)."""
    dataset = torchvision_mnist(data_dir)
    data = load_mnist(data_dir, device=device, download_missing=False)
    largest = max([plan.batch_size] + ([] if forced_batch else [profile_batch(n) for n in names]))
    per_epoch = min(len(dataset), len(data.train)) // largest
    if plan.warmup + plan.steps > per_epoch:
        raise UserError(f"--warmup + --steps must fit in one epoch ({per_epoch} batches of {largest})")
    ways = {}
    for name in names:
        own = plan if forced_batch else dataclasses.replace(plan, batch_size=profile_batch(name))
        ways[name] = (
            lambda n=name, p=own: plain_loop(n, dataset, p, device),
            lambda n=name, p=own: genbench_loop(n, data, p, device),
        )
    ways["data"] = (lambda: plain_data(dataset, plan, device), lambda: genbench_data(data, plan, device))
    runs: Runs = {row: ([], []) for row in ways}
    for r in range(repeats):
        for row, pair in ways.items():
            first = r % 2  # alternate which way goes first, so neither always runs on a warmer machine
            for index in (first, 1 - first):
                runs[row][index].append(pair[index]())
    return runs


def format_table(runs: Runs) -> str:
    """Best wall-clock images/s and least CPU ms per batch of each way, and their ratios."""
    lines = [
        f"{'':16} {'images/s (wall, best)':>32} {'CPU ms/batch (least)':>30}   images/s of every run",
        f"{'':16} {'plain':>10} {'genbench':>10} {'ratio':>10} {'plain':>9} {'genbench':>9} {'ratio':>10}"
        "   plain | genbench",
    ]
    for row, (plain, ours) in runs.items():
        label = "data path only" if row == "data" else f"{row} ({PROFILE}, batch {plain[0].batch_size})"
        fast_plain, fast_ours = max(t.images_per_s for t in plain), max(t.images_per_s for t in ours)
        cpu_plain, cpu_ours = min(t.cpu_ms_per_batch for t in plain), min(t.cpu_ms_per_batch for t in ours)
        every = " ".join(f"{t.images_per_s:.0f}" for t in plain) + " | "
        every += " ".join(f"{t.images_per_s:.0f}" for t in ours)
        lines.append(
            f"{label:16} {fast_plain:10.0f} {fast_ours:10.0f} {fast_ours / fast_plain:9.2f}x "
            f"{cpu_plain:9.2f} {cpu_ours:9.2f} {cpu_plain / max(cpu_ours, 1e-9):9.2f}x   {every}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="vae,gan", help="comma-separated model names (default: vae,gan)")
    parser.add_argument("--steps", type=int, default=Plan.steps, help="timed steps per run (default: 30)")
    parser.add_argument("--warmup", type=int, default=Plan.warmup, help="untimed steps first (default: 5)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="(default: each profile's; 128 for the data path)"
    )
    parser.add_argument(
        "--data-dir", default=None, help="holds MNIST/raw/ (default: $GENBENCH_DATA, else ./data)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds (default: 3)")
    parser.add_argument(
        "--num-workers", type=int, default=0, help="DataLoader workers of the plain loop (default: 0)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: as bench run picks them)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default: cpu)")
    parser.add_argument("--seed", type=int, default=Plan.seed)
    args = parser.parse_args(argv)
    try:
        for option in ("steps", "warmup", "batch_size", "repeats"):
            if getattr(args, option) is not None and getattr(args, option) < 1:
                raise UserError(f"--{option.replace('_', '-')} must be at least 1")
        names = [models.get_model_class(n.strip()).name for n in args.models.split(",") if n.strip()]
        choice = threads.apply(threads.decide(args.threads))  # bench run's own choice unless forced
        device = resolve_device(args.device)
        forced = args.batch_size is not None
        plan = Plan(args.steps, args.warmup, args.batch_size or Plan.batch_size, args.seed, args.num_workers)
        batch = f"batch {plan.batch_size}" if forced else "each profile's batch"
        print(
            f"{plan.steps} timed steps after {plan.warmup} warm-up, {batch}, "
            f"{args.repeats} alternating rounds, DataLoader num_workers={plan.num_workers}, "
            f"{device_name(device)}, {choice.threads} threads ({choice.reason})",
            flush=True,
        )
        runs = compare(names, resolve_data_dir(args.data_dir), plan, device, args.repeats, forced)
    except (UserError, KeyError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 1
    print(format_table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
