"""Training speed of the quick-profile VAE step with 0, 1 and 3 competing busy processes, for fixed
thread counts and for bench.engine.threads' adaptive choice: a Markdown table.

    python benchmarks/threads_under_load.py [--steps 40] [--busy 0,1,3]

Each cell is a fresh process that builds the quick VAE, warms up 5 steps and times --steps steps of
batch 128 on fake MNIST-like data, in wall-clock images/s. The competing processes are pure-Python
busy loops, one core each, started before and stopped after each row. "adaptive" is what `bench
run` does without --threads (bench.engine.threads.decide(): usable cores minus busy ones).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

BUSY_LOOP = "while True: pass"


def worker(threads: str, steps: int) -> None:
    import torch

    from genbench import models
    from genbench.bench.engine import threads as policy
    from genbench.bench.engine.optim import Optimizers

    choice = policy.apply(policy.decide(None if threads == "auto" else int(threads)))
    torch.manual_seed(0)
    model, cfg = models.build("vae", "quick")
    x = (torch.rand(128, *model.image_shape) < 0.19).to(torch.uint8) * 255  # (128, 1, 28, 28)
    optimizers = Optimizers(model, cfg, total_steps=10_000, device=torch.device("cpu"))
    model.train()
    for step in range(5):
        model.train_step(x, optimizers, step)
    start = time.perf_counter()
    for step in range(steps):
        model.train_step(x, optimizers, 5 + step)
    seconds = time.perf_counter() - start
    print(json.dumps({"threads": choice.threads, "img_s": steps * 128 / seconds}))


def measure(threads: str, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run(
        [sys.executable, __file__, "--worker", threads, "--steps", str(steps)],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--busy", default="0,1,3")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        return worker(args.worker, args.steps)
    cores = len(os.sched_getaffinity(0))
    policies = [str(cores), "1", "auto"] if cores > 1 else ["1", "auto"]
    print(f"quick VAE train_step, batch 128, {args.steps} timed steps, {cores} usable cores\n")
    print("| busy processes | " + " | ".join(p if p != "auto" else "adaptive" for p in policies) + " |")
    print("|---" * (len(policies) + 1) + "|")
    for n_busy in (int(b) for b in args.busy.split(",")):
        loops = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(n_busy)]
        try:
            time.sleep(1.0)  # let them show in /proc/stat
            cells = []
            for p in policies:
                result = measure(p, args.steps)
                threads = f" ({result['threads']} thr)" if p == "auto" else ""
                cells.append(f"{result['img_s']:,.0f} img/s{threads}")
        finally:
            for loop in loops:
                loop.kill()
                loop.wait()
        print(f"| {n_busy} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
