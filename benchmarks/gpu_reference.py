"""The GPU reference run: every family at the full profile's size on one GPU, in one short slot.

    python benchmarks/gpu_reference.py --out results/reference/nvidia-h200    # on the GPU machine
    python benchmarks/gpu_reference.py --rehearsal --out /tmp/rehearsal       # CPU rehearsal (CI)

In order: each family of genbench.models.MODELS trains at the full profile's size for --budget
seconds (the loop's time budget: it stops at the first step past it, checkpoints and records the
steps) and is evaluated in fp32 (no TF32) with --n-samples samples and both feature networks (mnist
and the offline Inception port); then the step benchmarks (GENBENCH_DEVICE=cuda pytest benchmarks/
--benchmark-only) and the loop comparison (benchmarks/compare_loop.py --device cuda). Everything is
written to a staging folder beside --out and renamed to --out at the end:

    runs/<run id>/    the run folders, without checkpoints and sample tensors
    report/           `bench report` of those runs (tables and figures)
    benchmarks.json   pytest-benchmark's JSON; compare_loop.txt: the loop comparison's table
    reference.json    settings, wall time of every phase, each family's steps and outcome
    README.md         the command, date, GPU, torch version and wall times

Budget (one H200; the slot is 8 minutes, 480 s). FLOPs per image counted with
torch.utils.flop_counter at the full sizes; evaluation is fp32 on CUDA cores (TF32 off), taken at
~40 TFLOP/s sustained (the H200's fp32 peak is ~67). Estimates until the first run's README
replaces them with measurements:

    start-up (imports, CUDA, MNIST resident on the GPU)                          ~15 s
    training: 5 families x --budget 40 s (+ ~2 s each: build, first-step autotune) 210 s
    evaluation, 10k samples each, likelihood on the 10k test images:              ~105 s
      PixelCNN  log p 15 GF/image -> 4 s; sampling is launch-bound (~150 kernels a pixel, ~2-3 s
                per 784-pixel sweep whatever the batch): 5 calls of EvalConfig.cuda_sample_batch_size
                2000 (the full profile's; ~11 GB of caches) -> 15 s, against 40 calls at batch 256
      RealNVP   log p and sampling 4.6 GF/image -> 2 + 2 s
      VAE, GAN  IWAE k=1000 on 1000 images 65 TF -> 2 s; the rest under 1 s
      diffusion the full profile's evaluation cannot fit: DDIM 100 steps (9.5 PF), ancestral 1000
                steps (95 PF) and the exact 1000-term bound (79 PF), ~75 min at 40 TFLOP/s. Here
                (MODEL_OVERRIDES, recorded in each run's config.json and metrics.json): DDIM only,
                20 steps (1.9 PF -> 48 s) and the bound estimated from 4 sampled terms a test image
                (0.57 PF -> 15 s; kind "estimate", its stderr stated)
      Inception features of ~6 sample sets + the 10k reference once (cached): 70k x 5.7 GF -> 10 s
      end-of-training validation: ~5 s
    step benchmarks (20 cases of <= 1 s calibrated timing, pytest start-up)         ~50 s
    loop comparison (vae, gan; 3 rounds of 30 steps both ways)                       ~30 s
    report with figures, copying                                                     ~20 s
    total                                                                           ~430 s

The model sizes are the full profile's; after 40 s of training the quality numbers say little about
a family's quality at convergence (that takes the full profile's epochs): the reference is of cost
(images/s, memory, steps in equal wall-clock) and of the whole path running on a GPU.

--rehearsal runs the same path on the CPU in about a minute: the smoke profile, --budget 5 s (the
smoke profile's 30 steps cap the fast families), 64 samples with the mnist network only
(--allow-few-samples), likelihoods on 64 test images, the report without figures, one step benchmark
and a two-step loop comparison. tests/test_gpu_reference.py runs it, so the script cannot break
before a GPU arrives.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
import torch

from genbench import models
from genbench.bench.engine.data import load_dataset, resolve_data_dir
from genbench.bench.engine.device import resolve_precision
from genbench.bench.engine.timing import device_name, hardware_name
from genbench.bench.engine.train import RunOptions, StopFlag, TrainingInterrupted
from genbench.bench.execute import run as runs
from genbench.bench.planning.plan import RunPlan
from genbench.bench.planning.plan import plan as make_plan
from genbench.bench.record import results
from genbench.bench.report import make_report
from genbench.core.errors import UsageError, UserError
from genbench.core.files import write_json, write_text
from genbench.metrics.fidelity import resolve_network

REPO = Path(__file__).resolve().parents[1]
SLOT_S = 480.0  # the GPU slot the full reference must fit, with its margin inside
RUN_NAME = "reference"
STRIPPED = ("checkpoints", "samples.pt", "run.lock")  # left out of the published run folders
# Evaluation settings of a family whose full-profile evaluation alone would overrun the slot (see the
# module docstring); model-config fields, so each run's config.json and metrics.json state them.
MODEL_OVERRIDES: dict[str, dict[str, Any]] = {
    "diffusion": {"samplers": ("ddim",), "sample_steps": 20, "bound_t_samples": 4},
}


@dataclasses.dataclass(frozen=True)
class Settings:
    profile: str
    device: str
    budget_s: float  # training seconds per family
    n_samples: int
    feature_networks: tuple[str, ...]
    allow_few_samples: bool
    benchmark_args: tuple[str, ...]  # pytest arguments after benchmarks/
    compare_args: tuple[str, ...]  # compare_loop.py arguments besides --device and --data-dir
    n_test: int | None = None  # test images for the likelihoods; None: the profile's
    figures: bool = True  # the report's figures (a minute of matplotlib on a CPU)

    @classmethod
    def make(cls, rehearsal: bool, budget_s: float | None, n_samples: int | None) -> Settings:
        if rehearsal:
            return cls(
                "smoke", "cpu", budget_s or 5.0, n_samples or 64, ("mnist",), True,
                ("-k", "test_train_step and smoke and gan"),
                ("--models", "gan", "--steps", "2", "--warmup", "1", "--repeats", "1", "--batch-size", "32",
                 "--threads", "1"),
                n_test=64, figures=False,
            )  # fmt: skip
        return cls(
            "full", "cuda", budget_s or 40.0, n_samples or 10_000, ("mnist", "inception"), False, (), ()
        )


def check_sample_count(settings: Settings) -> None:
    """FID needs at least as many samples as its network's feature dimensions (2048 for Inception)."""
    if settings.allow_few_samples:
        return
    for name in settings.feature_networks:
        dim = resolve_network(name).feature_dim
        if settings.n_samples < dim:
            raise UsageError(
                f"--n-samples {settings.n_samples}: FID with the {name} network needs at least {dim} samples "
                f"(its feature dimension); the reference uses 10000"
            )


def plans(settings: Settings, names: list[str]) -> list[RunPlan]:
    """Each family's plan at the settings' profile, with the time budget, this evaluation and
    MODEL_OVERRIDES."""
    eval_overrides = {
        "n_samples": settings.n_samples,
        "feature_networks": settings.feature_networks,
        "allow_few_samples": settings.allow_few_samples,
    }
    if settings.n_test is not None:
        eval_overrides["n_test"] = settings.n_test
    out = []
    for name in names:
        plan = make_plan(name, settings.profile, 0, {"time_budget_s": settings.budget_s}, eval_overrides)
        model_config = dataclasses.replace(plan.model_config, **MODEL_OVERRIDES.get(plan.model, {}))
        out.append(dataclasses.replace(plan, model_config=model_config))
    return out


def train_and_evaluate(
    plan: RunPlan, options: RunOptions, data, work: Path, data_dir: Path
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One family through `bench run`'s own start and execute; (its row, metrics.json or None)."""
    start = time.perf_counter()
    report, error = None, None
    try:
        with StopFlag() as stop:
            run_dir = runs.start(plan, options, work / "runs", RUN_NAME, data_dir=data_dir)
            report = runs.execute(run_dir, data, options, cache_dir=work / ".cache", stop=stop)
    except TrainingInterrupted:  # Ctrl-C or SIGTERM stops the whole reference
        raise
    except UserError as exc:  # one family's failure is recorded; the others still run
        error = str(exc).splitlines()[0]
        print(f"error: {plan.model}: {error}", file=sys.stderr)
    metrics = (report or {}).get("metrics", {})
    value = lambda key: (metrics.get(key) or {}).get("value")  # noqa: E731
    row = {
        "model": plan.model,
        "status": "done" if report else f"failed: {error}",
        "steps": value("steps"),
        "stopped_by": ((metrics.get("steps") or {}).get("protocol") or {}).get("stopped_by"),
        "train_s": value("wall_time_s"),
        "train_images_per_s": value("train_images_per_s"),
        "total_s": round(time.perf_counter() - start, 1),
    }
    if report:
        print(runs.summary_line(report))
    return row, report


def run_tool(args: list[str], env: dict[str, str], log: Path) -> int:
    """A benchmark in a subprocess from the repository root; its output to ``log`` and the terminal."""
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    write_text(log, proc.stdout + proc.stderr)
    print(proc.stdout[-2000:], end="")
    if proc.returncode:
        print(f"error: {' '.join(args[:4])}... exited {proc.returncode}; see {log.name}", file=sys.stderr)
    return proc.returncode


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


README = jinja2.Template(
    """\
# genbench reference run: {{ hardware }}

- Command: `{{ command }}`
- Date: {{ date }}
- Device: {{ device }}; torch {{ torch }} (CUDA {{ cuda or "none" }}); genbench {{ genbench }} \
(git {{ git or "unknown" }})
- Protocol: every family at the {{ s.profile }} profile's size, {{ s.budget_s | round(1) }} s of \
training each (time budget, stopped at a step boundary); evaluation in fp32 without TF32, \
{{ s.n_samples }} samples, feature networks {{ s.feature_networks | join(", ") }}
{%- for name, o in overrides.items() %}; for the slot, {{ name }} with {{ o }}{% endfor %}.
- Wall time: {{ total_s | round(1) }} s in all
{%- if over %} (over the {{ slot_s | int }} s slot: lower --budget){% endif %}.

## Phases

{{ phases }}

## Families

{{ families }}

Steps and training wall time are each run's own (metrics.json); `--max-steps STEPS` repeats a run's
training without a clock on any machine. Quality numbers after this little training say little about
a family at convergence: the reference is of cost and of the whole path on this device.

## Files

- `runs/`: run folders (config.json, metrics.json, history.csv, samples.png); no checkpoints or sample tensors
- `report/`: `bench report` of those runs (summary.md, index.html, figures)
- `benchmarks.json`: `GENBENCH_DEVICE={{ s.device }} pytest benchmarks/ --benchmark-only{{ bench_args }}`
- `compare_loop.txt`: `python benchmarks/compare_loop.py --device {{ s.device }}{{ compare_args }}`
- `reference.json`: all of the above as data
"""
)


def write_readme(folder: Path, doc: dict[str, Any]) -> None:
    phases = pd.DataFrame(list(doc["phases"].items()), columns=["phase", "seconds"])
    families = pd.DataFrame(doc["families"])
    settings = doc["settings"]
    write_text(
        folder / "README.md",
        README.render(
            **doc["environment"],
            s=settings,
            overrides=doc["model_overrides"],
            total_s=doc["phases"]["total"],
            over=doc["phases"]["total"] > SLOT_S and settings["profile"] == "full",
            slot_s=SLOT_S,
            phases=phases.to_markdown(index=False, floatfmt=".1f"),
            families=families.to_markdown(index=False, floatfmt=".4g"),
            bench_args="".join(f" {a}" for a in settings["benchmark_args"]),
            compare_args="".join(f" {a}" for a in settings["compare_args"]),
        ),
    )


def publish(staging: Path, out: Path, overwrite: bool) -> None:
    """Replace ``out`` by the finished folder in one rename (a previous reference only with --overwrite)."""
    if out.exists():
        if not (overwrite and (out / "reference.json").is_file()):
            raise UserError(f"{out} exists; pass --overwrite to replace a reference folder, or another --out")
        shutil.rmtree(out)
    (staging / "final").rename(out)
    shutil.rmtree(staging)


def reference(args: argparse.Namespace) -> int:
    settings = Settings.make(args.rehearsal, args.budget, args.n_samples)
    check_sample_count(settings)  # before anything runs
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise UserError("no CUDA device here: the reference run is for a GPU; --rehearsal runs it on the CPU")
    device = torch.device(settings.device)
    if args.rehearsal:
        torch.set_num_threads(1)
    names = [n.strip() for n in args.models.split(",")] if args.models else sorted(models.MODELS)
    family_plans = plans(settings, names)
    where = "rehearsal" if args.rehearsal else "reference"  # a rehearsal never lands among references
    out = Path(args.out or REPO / "results" / where / slug(hardware_name(device)))
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it, or another --out")
    results.check_writable_folder(out.parent, "--out")
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)  # a previous attempt's
    work, final = staging / "work", staging / "final"
    final.mkdir(parents=True)
    data_dir = resolve_data_dir(args.data_dir).resolve()
    phases: dict[str, float] = {}
    clock = time.perf_counter()

    options = RunOptions(device=device, precision=resolve_precision("auto", device), progress=False)
    data = load_dataset("mnist", data_dir, device=device, download_missing=False)
    phases["start-up"] = time.perf_counter() - clock
    rows = []
    for plan in family_plans:
        row, _ = train_and_evaluate(plan, options, data, work, data_dir)
        rows.append(row)
        phases[f"{plan.model}: train + evaluate"] = row["total_s"]
    del data
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the benchmarks run in their own processes on the same GPU

    started = time.perf_counter()
    done = [row for row in rows if row["status"] == "done"]
    if done:
        make_report(work / "runs", final / "report", data_dir=data_dir, figures=settings.figures)
    phases["report"] = time.perf_counter() - started

    env = {**os.environ, "GENBENCH_DEVICE": settings.device, "GENBENCH_DATA": str(data_dir)}
    started = time.perf_counter()
    bench_rc = run_tool(
        [sys.executable, "-m", "pytest", "benchmarks/", "--benchmark-only", "-p", "no:cacheprovider", "-q",
         f"--benchmark-json={final / 'benchmarks.json'}", *settings.benchmark_args],
        env, final / "benchmarks.txt",
    )  # fmt: skip
    phases["step benchmarks"] = time.perf_counter() - started
    started = time.perf_counter()
    compare_rc = run_tool(
        [sys.executable, "benchmarks/compare_loop.py", "--device", settings.device,
         "--data-dir", str(data_dir), *settings.compare_args],
        env, final / "compare_loop.txt",
    )  # fmt: skip
    phases["loop comparison"] = time.perf_counter() - started

    for run_dir in sorted((work / "runs").iterdir()) if (work / "runs").is_dir() else ():
        shutil.copytree(run_dir, final / "runs" / run_dir.name, ignore=shutil.ignore_patterns(*STRIPPED))
    phases["total"] = time.perf_counter() - clock
    phases = {k: round(v, 1) for k, v in phases.items()}
    doc = {
        "environment": {
            "command": shlex.join(["python", "benchmarks/gpu_reference.py", *args.argv]),
            "date": dt.datetime.now(dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
            "hardware": hardware_name(device),
            "device": device_name(device),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "genbench": results.versions().get("genbench"),
            "git": results.git_commit(),
        },
        "settings": dataclasses.asdict(settings),
        "model_overrides": {n: o for n, o in MODEL_OVERRIDES.items() if n in [p.model for p in family_plans]},
        "phases": phases,
        "families": rows,
        "benchmarks_rc": bench_rc,
        "compare_loop_rc": compare_rc,
    }
    write_json(final / "reference.json", doc)
    write_readme(final, doc)
    publish(staging, out, args.overwrite)
    print(f"-> {out} ({phases['total']:.0f} s)", file=sys.stderr)
    if settings.profile == "full" and phases["total"] > SLOT_S:
        print(
            f"warning: {phases['total']:.0f} s is over the {SLOT_S:.0f} s slot; lower --budget",
            file=sys.stderr,
        )
    failed = [row["model"] for row in rows if row["status"] != "done"]
    if failed or bench_rc or compare_rc:
        print(f"error: not everything ran: failed families {failed or 'none'}, benchmarks exit {bench_rc}, "
              f"loop comparison exit {compare_rc}", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default=None, help="reference folder (default: results/reference/<device>; rehearsal/)"
    )
    parser.add_argument("--rehearsal", action="store_true", help="the same path on the CPU, smoke sized")
    parser.add_argument(
        "--budget", type=float, default=None, help="training seconds per family (40; rehearsal 5)"
    )
    parser.add_argument(
        "--n-samples", type=int, default=None, help="samples per family (10000; rehearsal 64)"
    )
    parser.add_argument("--models", default=None, help="comma-separated families (default: all)")
    parser.add_argument("--data-dir", default=None, help="holds MNIST/raw/ (default: $GENBENCH_DATA)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing reference folder")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.argv = argv  # for the README
    if args.budget is not None and args.budget <= 0 or args.n_samples is not None and args.n_samples < 1:
        parser.error("--budget and --n-samples must be positive")
    try:
        return reference(args)
    except (KeyboardInterrupt, TrainingInterrupted) as exc:
        print(f"interrupted ({exc}); nothing was published", file=sys.stderr)
        return 130
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (UserError, KeyError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
