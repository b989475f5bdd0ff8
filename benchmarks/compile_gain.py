"""Does `--compile` pay on the CPU within a quick run? Per family, one process, side by side.

    python benchmarks/compile_gain.py [--models vae,gan,flow,glow] [--threads 2] [--rounds 4]

For each family: an eager and a compiled copy of the quick model (same seed, each with its own
optimizers), each at the quick profile's batch size on a fake uint8 batch of MNIST's ink density.
The compiled copy's first --first steps are timed together: they hold the compile (and the
recompiles torch.compile makes when the step number changes), so their time less --first steady
compiled steps is the compile cost. Then --rounds alternating blocks of --block steps (eager first,
then compiled first, ...) give the steady ms per step of each. The whole-run estimate is the quick
run's training steps (bench.engine.budget.planned_steps) times the steady step, plus the compile cost for
the compiled way; "pays" when that is smaller. Wall-clock, so other processes on the machine
distort the absolute numbers; the alternation keeps the ratio fair.
"""

from __future__ import annotations

import argparse
import time

import torch

from genbench import models
from genbench.bench.engine.budget import planned_steps
from genbench.bench.engine.device import prepare_model
from genbench.bench.engine.optim import Optimizers

INK = 0.19
TRAIN_IMAGES = 55_000  # MNIST's training split as bench run uses it


def _copy(name: str, compile: bool):
    torch.manual_seed(0)
    model, cfg = models.build(name, "quick")
    prepare_model(model, torch.device("cpu"), compile=compile)
    model.train()
    return model, cfg, Optimizers(model, cfg, total_steps=10_000, device=torch.device("cpu"))


def _timed(model, optimizers, x, start: int, steps: int) -> float:
    t0 = time.perf_counter()
    for step in range(start, start + steps):
        model.train_step(x, optimizers, step)
    return time.perf_counter() - t0


def measure(name: str, first: int, block: int, rounds: int) -> dict:
    eager, cfg, eager_opt = _copy(name, False)
    compiled, _, compiled_opt = _copy(name, True)
    x = torch.rand(cfg.batch_size, *eager.image_shape, generator=torch.Generator().manual_seed(0)) < INK
    x = x.to(torch.uint8) * 255  # (B, C, H, W)
    _timed(eager, eager_opt, x, 0, first)  # the same warm-up steps, untimed
    first_s = _timed(compiled, compiled_opt, x, 0, first)
    done = first
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    ways = {"eager": (eager, eager_opt), "compiled": (compiled, compiled_opt)}
    for r in range(rounds):
        for way in ("eager", "compiled") if r % 2 == 0 else ("compiled", "eager"):
            times[way].append(_timed(*ways[way], x, done, block) / block)
        done += block
    eager_s, compiled_s = min(times["eager"]), min(times["compiled"])
    steps = planned_steps(cfg, TRAIN_IMAGES // cfg.batch_size, 1)
    compile_s = max(0.0, first_s - first * compiled_s)
    return {
        "model": name,
        "batch": cfg.batch_size,
        "eager_ms": eager_s * 1e3,
        "compiled_ms": compiled_s * 1e3,
        "compile_s": compile_s,
        "steps": steps,
        "run_eager_s": steps * eager_s,
        "run_compiled_s": compile_s + steps * compiled_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(sorted(models.MODELS)))  # every registered family
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--first", type=int, default=4, help="first compiled steps, holding the compile")
    parser.add_argument("--block", type=int, default=3, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=4, help="alternating blocks of each way")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    blocks = f"best of {args.rounds} alternating blocks of {args.block}"
    print(f"quick profile, fp32, {args.threads} threads, {blocks}")
    print(
        "| model | batch | eager ms/step | compiled ms/step | step speed-up | compile s | quick steps "
        "| run eager s | run compiled s | pays |"
    )
    print("|---" * 10 + "|")
    for name in args.models.split(","):
        r = measure(name, args.first, args.block, args.rounds)
        print(
            f"| {r['model']} | {r['batch']} | {r['eager_ms']:.0f} | {r['compiled_ms']:.0f} "
            f"| {r['eager_ms'] / r['compiled_ms']:.2f}x | {r['compile_s']:.0f} | {r['steps']} "
            f"| {r['run_eager_s']:.0f} | {r['run_compiled_s']:.0f} "
            f"| {'yes' if r['run_compiled_s'] < r['run_eager_s'] else 'no'} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
