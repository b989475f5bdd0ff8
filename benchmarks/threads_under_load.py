"""Training speed of the quick-profile VAE step with 0, 1 and 3 competing busy processes, for fixed
thread counts and for bench.engine.threads' adaptive choice, and what two such runs cost each other when
the second starts during the first's timed steps: two Markdown tables.

    python benchmarks/threads_under_load.py [--steps 40] [--busy 0,1,3] [--share-steps 20]

Each cell is a fresh process that builds the quick VAE, warms up 5 steps and times --steps steps of
batch 128 on fake MNIST-like data, in wall-clock images/s. The competing processes are pure-Python
busy loops, one core each, started before and stopped after each row. "adaptive" is what `bench
run` does without --threads (bench.engine.threads.decide(): usable cores minus busy ones).

Sharing (--share-steps > 0): a first run steps until told to stop; after its warm-up and
ALONE_STEPS steps alone, a second run starts (a fresh process, as a second `bench run` would), warms up and
times --share-steps steps. Each run's images/s beside the other is set against its own alone: the
first's steps before the second started, the second's from a run of its own on the idle machine.
Both orders of adaptive and forced (all usable cores) threads.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import time

BUSY_LOOP = "while True: pass"
ALONE_STEPS = 3  # steps the first run takes alone before the second starts


def _stop_asked() -> bool:
    return bool(select.select([sys.stdin], [], [], 0)[0])  # the parent wrote a line or closed stdin


def worker(threads: str, steps: int, until_told: bool = False) -> None:
    """``steps`` timed steps, or with ``until_told`` steps until stdin has a line, printing each
    step's end (time.time(), comparable across processes)."""
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
    print(json.dumps({"warm": time.time()}), flush=True)
    start, ends = time.time(), []
    while (len(ends) < steps) if not until_told else not _stop_asked():
        model.train_step(x, optimizers, 5 + len(ends))
        ends.append(time.time())
        if until_told:
            print(json.dumps({"end": ends[-1]}), flush=True)
    img_s = len(ends) * 128 / (ends[-1] - start) if ends else float("nan")
    print(json.dumps({"threads": choice.threads, "img_s": img_s, "start": start, "ends": ends}))


def _command(threads: str, steps: int, until_told: bool = False) -> list[str]:
    told = ["--until-told"] if until_told else []
    return [sys.executable, __file__, "--worker", threads, "--steps", str(steps), *told]


ENV = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}


def measure(threads: str, steps: int) -> dict:
    out = subprocess.run(_command(threads, steps), env=ENV, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _rate(ends: list[float], start: float, stop: float) -> float:
    """images/s of the steps that ended in (start, stop], from the step end before the first."""
    inside = [t for t in ends if start < t <= stop]
    before = [t for t in ends if t <= start]
    t0 = before[-1] if before else start
    return len(inside) * 128 / (inside[-1] - t0) if inside else float("nan")


def share(first: str, second: str, steps: int) -> dict:
    """The first run's images/s alone and beside the second, and the second's beside the first."""
    lead = subprocess.Popen(_command(first, 0, True), env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        for _ in range(1 + ALONE_STEPS):  # the warm-up's line, then those of the steps alone
            lead.stdout.readline()
        joined = time.time()
        late = measure(second, steps)
        lead.stdin.write("stop\n")
        lead.stdin.flush()
        out = json.loads(lead.stdout.read().strip().splitlines()[-1])
    finally:
        lead.kill()
        lead.wait()
    return {
        "first_threads": out["threads"],
        "second_threads": late["threads"],
        "first_alone": _rate(out["ends"], out["start"], joined),
        "first_beside": _rate(out["ends"], late["start"], late["ends"][-1]),
        "second_beside": late["img_s"],
    }


def sharing_table(cores: int, steps: int) -> None:
    forced = str(cores)
    alone = {p: measure(p, steps)["img_s"] for p in ("auto", forced)}
    name = {"auto": "adaptive", forced: f"--threads {forced}"}
    start = f"the second starts after the first's warm-up and {ALONE_STEPS} steps"
    print(f"\ntwo runs: {start}, {steps} timed steps\n")
    print("| first | second | threads | first: alone -> beside | second: alone -> beside |")
    print("|---|---|---|---|---|")
    for first, second in (("auto", "auto"), (forced, forced), ("auto", forced), (forced, "auto")):
        r = share(first, second, steps)
        a, b = r["first_beside"] / r["first_alone"], r["second_beside"] / alone[second]
        print(
            f"| {name[first]} | {name[second]} | {r['first_threads']} + {r['second_threads']} "
            f"| {r['first_alone']:,.0f} -> {r['first_beside']:,.0f} img/s ({a:.2f}x) "
            f"| {alone[second]:,.0f} -> {r['second_beside']:,.0f} img/s ({b:.2f}x) |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--busy", default="0,1,3")
    parser.add_argument("--share-steps", type=int, default=20, help="0: no sharing table")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--until-told", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        return worker(args.worker, args.steps, args.until_told)
    cores = len(os.sched_getaffinity(0))
    policies = [str(cores), "1", "auto"] if cores > 1 else ["1", "auto"]
    print(f"quick VAE train_step, batch 128, {args.steps} timed steps, {cores} usable cores\n")
    busy = [int(b) for b in args.busy.split(",") if b]
    if busy:
        print("| busy processes | " + " | ".join(p if p != "auto" else "adaptive" for p in policies) + " |")
        print("|---" * (len(policies) + 1) + "|")
    for n_busy in busy:
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
    if args.share_steps > 0 and cores > 1:
        sharing_table(cores, args.share_steps)


if __name__ == "__main__":
    main()
