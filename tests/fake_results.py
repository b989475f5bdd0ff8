"""Synthetic run folders in the layout of .notes/SCHEMA.md, for report tests and demos (no training).

``write_run`` writes status.json, config.json, metrics.json and, on request, history.csv,
samples.pt / samples.png and interpolation.png; ``write_floor`` writes results/floors/<net>_n<count>.json.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

# key -> (label, unit, higher_is_better), as the metrics write them.
SPEC: dict[str, tuple[str, str, bool | None]] = {
    "recon_mse": ("Recon MSE", "MSE/pixel", False),
    "recon_bce": ("Recon BCE", "nats/image", False),
    "nll_nats": ("NLL", "nats/image", False),
    "bpd": ("Bits/dim", "bits/dim", False),
    "iwae_nats": ("IWAE NLL", "nats/image", False),
    "iwae_bpd": ("IWAE bits/dim", "bits/dim", False),
    "fid_mnist": ("FID (mnist)", "-", False),
    "kid_mnist": ("KID (mnist)", "-", False),
    "is_mnist": ("IS (mnist)", "-", True),
    "precision_mnist": ("Precision (mnist)", "-", True),
    "recall_mnist": ("Recall (mnist)", "-", True),
    "train_images_per_s": ("Train img/s", "images/s", True),
    "sample_images_per_s": ("Sample img/s", "images/s", True),
    "peak_memory_mb": ("Peak memory", "MiB", False),
    "parameters": ("Parameters", "count", None),
    "wall_time_s": ("Train wall time", "s", False),
}
LIKELIHOOD = {"vae": "bound", "pixelcnn": "exact", "realnvp": "exact", "gan": None}
EVAL = {"n_test": 2000, "iwae_k": 100, "iwae_images": 500, "n_samples": 1000, "feature_networks": ["mnist"]}
CHECKSUM = "ab12cd34ef56" + "0" * 52


def entry(
    key: str, value: float | None, protocol: dict[str, Any] | None = None, na: str | None = None
) -> dict:
    label, unit, higher = SPEC.get(key, (key, "-", False))
    out: dict[str, Any] = {
        "value": value,
        "label": label,
        "unit": unit,
        "higher_is_better": higher,
        "protocol": protocol or {},
    }
    if value is None:
        out["na"] = na or "not measured"
    return out


def metric_entries(
    model: str, values: dict[str, float | None], evaluation: dict[str, Any], device: str
) -> dict:
    """metrics.json's "metrics" object: every SPEC key, null with a reason where the model lacks it."""
    kind = LIKELIHOOD.get(model, "exact")
    out = {}
    for key in SPEC:
        value = values.get(key)
        protocol: dict[str, Any] = {"device": device}
        if key in ("nll_nats", "bpd", "recon_mse", "recon_bce"):
            protocol |= {"split": "test", "n_images": evaluation["n_test"], "kind": kind}
        elif key.startswith("iwae"):
            protocol |= {
                "split": "test",
                "n_images": evaluation["iwae_images"],
                "k": evaluation["iwae_k"],
                "kind": "bound",
            }
        elif key.endswith("_mnist"):
            protocol |= {
                "n_samples": evaluation["n_samples"],
                "feature_network": "mnist",
                "reference": "test",
                "feature_network_sha256": CHECKSUM,
            }
        elif key == "peak_memory_mb":
            protocol |= {"kind": "rss" if device == "cpu" else "cuda_allocator"}
        na = None
        if value is None:
            if key in ("nll_nats", "bpd", "iwae_nats", "iwae_bpd") and kind is None:
                na = f"{model} has no likelihood"
            elif key.startswith("iwae"):
                na = f"{model} reports an exact likelihood, not a bound"
            elif key.startswith("recon"):
                na = f"{model} cannot reconstruct"
        out[key] = entry(key, value, protocol, na)
    return out


def write_run(
    results: Path,
    model: str,
    seed: int,
    values: dict[str, float | None],
    profile: str = "quick",
    device: str = "cpu",
    status: str = "done",
    created: dt.datetime | None = None,
    evaluation: dict[str, Any] | None = None,
    history: bool = False,
    samples: np.ndarray | None = None,
    samples_png: bool = False,
    interpolation: np.ndarray | None = None,
    name: str | None = None,
) -> Path:
    """One run folder. ``samples``: uint8 (N, 28, 28) written as samples.pt (and samples.png if asked)."""
    evaluation = {**EVAL, **(evaluation or {})}
    created = created or dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=seed)
    run_id = name or f"{model}-{profile}-s{seed}-{created:%Y%m%d-%H%M%S}"
    run = results / run_id
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run / "status.json").write_text(
        json.dumps({"status": status, "reason": None, "updated": created.isoformat()})
    )
    config = {
        "run_id": run_id,
        "model": model,
        "profile": profile,
        "seed": seed,
        "device": device,
        "device_name": "NVIDIA H200" if device == "cuda" else "Test CPU",
        "precision": "fp32",
        "created": created.isoformat(),
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "versions": {
            "python": "3.11.7",
            "torch": "2.14.1",
            "torchvision": "0.29.1",
            "torch_fidelity": "0.4.0",
            "genbench": "0.1.0",
        },
        "model_config": {},
        "train_config": {},
        "eval_config": {**evaluation, "batch_size": 256},
    }
    (run / "config.json").write_text(json.dumps(config, indent=2))
    if status == "done":
        doc = {
            "run_id": run_id,
            "model": model,
            "profile": profile,
            "seed": seed,
            "device": device,
            "metrics": metric_entries(model, values, evaluation, device),
        }
        (run / "metrics.json").write_text(json.dumps(doc, indent=2))
    if history:
        write_history(run / "history.csv", model, seed)
    if samples is not None:
        import torch

        torch.save(torch.from_numpy(samples[:, None].copy()), run / "samples.pt")
        if samples_png:
            write_png(run / "samples.png", grid(samples))
    if interpolation is not None:
        write_png(run / "interpolation.png", interpolation)
    return run


def write_history(path: Path, model: str, seed: int, steps: int = 300, log_every: int = 20) -> None:
    """Decaying losses on each model's own scale; val rows (every 100 steps) carry bpd where there is one."""
    rng = np.random.default_rng(seed)
    scale = {"vae": 110.0, "gan": 1.4, "pixelcnn": 600.0, "realnvp": 800.0}.get(model, 10.0)
    speed = {"vae": 2800.0, "gan": 800.0, "pixelcnn": 40.0, "realnvp": 55.0}.get(model, 100.0)
    rows = ["step,epoch,split,wall_time_s,images_per_s,loss,bpd"]
    for step in range(log_every, steps + 1, log_every):
        loss = scale * (0.6 + 1.5 * math.exp(-step / 60)) * (1 + 0.03 * rng.standard_normal())
        wall = step * 128 / speed * (1 + 0.05 * seed)
        rows.append(f"{step},0,train,{wall:.3f},{speed:.1f},{loss:.4f},")
        if step % 100 == 0:
            val = scale * (0.62 + 1.5 * math.exp(-step / 60))
            target = {"vae": 0.18, "pixelcnn": 0.155, "realnvp": 0.21}.get(model)
            bpd = (
                ""
                if target is None
                else f"{target * (1 + 1.2 * math.exp(-step / 60)) * (1 + 0.01 * seed):.4f}"
            )
            rows.append(f"{step},0,val,{wall:.3f},,{val:.4f},{bpd}")
    path.write_text("\n".join(rows) + "\n")


def grid(images: np.ndarray, ncols: int = 8, pad: int = 2) -> np.ndarray:
    n, h, w = images.shape
    nrows = math.ceil(n / ncols)
    out = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad), 128, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, ncols)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = (
            image
        )
    return out


def write_png(path: Path, image: np.ndarray) -> None:
    import matplotlib.image as mpimg

    mpimg.imsave(path, image, cmap="gray", vmin=0, vmax=255)


def blobs(n: int, seed: int) -> np.ndarray:
    """uint8 (n, 28, 28) images of a bright random ellipse stroke, enough to look at and to search."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    out = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(10, 18, 2)
        ry, rx = rng.uniform(4, 10), rng.uniform(3, 8)
        r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
        out[i] = (np.clip(1.0 - np.abs(r - 1.0) * 4, 0, 1) * 255).astype(np.uint8)
    return out


def write_floor(
    results: Path, net: str, n_samples: int, values: dict[str, float], checksum: str = CHECKSUM
) -> Path:
    floors = results / "floors"
    floors.mkdir(parents=True, exist_ok=True)
    protocol = {
        "n_samples": n_samples,
        "feature_network": net,
        "reference": "test",
        "compared": "train",
        "feature_network_sha256": checksum,
    }
    doc = {
        "feature_network": net,
        "n_samples": n_samples,
        "reference": "test",
        "compared": "train",
        "created": "2026-01-01T00:00:00+00:00",
        "metrics": {k: entry(k, v, protocol) for k, v in values.items()},
    }
    path = floors / f"{net}_n{n_samples}.json"
    path.write_text(json.dumps(doc, indent=2))
    return path


# Plausible quick-profile numbers per model (means); seeds jitter them by a few percent.
DEMO = {
    "vae": {
        "recon_mse": 0.012,
        "recon_bce": 62.0,
        "nll_nats": 98.0,
        "bpd": 0.18,
        "iwae_nats": 93.5,
        "iwae_bpd": 0.172,
        "fid_mnist": 24.0,
        "kid_mnist": 0.021,
        "is_mnist": 8.6,
        "precision_mnist": 0.71,
        "recall_mnist": 0.52,
        "train_images_per_s": 2800.0,
        "sample_images_per_s": 95000.0,
        "peak_memory_mb": 610.0,
        "parameters": 412_000.0,
        "wall_time_s": 130.0,
    },
    "gan": {
        "fid_mnist": 9.5,
        "kid_mnist": 0.006,
        "is_mnist": 9.3,
        "precision_mnist": 0.83,
        "recall_mnist": 0.41,
        "train_images_per_s": 780.0,
        "sample_images_per_s": 61000.0,
        "peak_memory_mb": 680.0,
        "parameters": 1_050_000.0,
        "wall_time_s": 150.0,
    },
    "pixelcnn": {
        "nll_nats": 84.0,
        "bpd": 0.155,
        "fid_mnist": 31.0,
        "kid_mnist": 0.03,
        "is_mnist": 8.1,
        "precision_mnist": 0.62,
        "recall_mnist": 0.66,
        "train_images_per_s": 39.0,
        "sample_images_per_s": 11.0,
        "peak_memory_mb": 1450.0,
        "parameters": 230_000.0,
        "wall_time_s": 165.0,
    },
    "realnvp": {
        "recon_mse": 2e-13,  # an invertible flow reconstructs up to float error
        "recon_bce": 55.0,
        "nll_nats": 112.0,
        "bpd": 0.206,
        "fid_mnist": 58.0,
        "kid_mnist": 0.061,
        "is_mnist": 6.9,
        "precision_mnist": 0.45,
        "recall_mnist": 0.58,
        "train_images_per_s": 55.0,
        "sample_images_per_s": 2400.0,
        "peak_memory_mb": 1890.0,
        "parameters": 2_400_000.0,
        "wall_time_s": 170.0,
    },
}


def write_demo(results: Path, digits: np.ndarray | None = None, seeds: tuple[int, ...] = (0, 1, 2)) -> None:
    """Four models x seeds in one quick/cpu group, one cuda run in another, floors and one running run.

    ``digits``: uint8 (N, 28, 28) real images used as stand-in samples (else blobs)."""
    rng = np.random.default_rng(0)
    for m, (model, means) in enumerate(DEMO.items()):
        for seed in seeds:
            values = {
                k: v * (1 + 0.04 * rng.standard_normal()) if k != "parameters" else v
                for k, v in means.items()
            }
            source = digits if digits is not None else blobs(512, m)
            picks = source[np.random.default_rng(100 * m + seed).choice(len(source), 64, replace=False)]
            samples = _degrade(picks, model, rng)
            interp = None
            if model in ("vae", "realnvp") and seed == seeds[0]:
                interp = grid(_interpolate(source[:8]), ncols=10)
            write_run(
                results,
                model,
                seed,
                values,
                history=True,
                samples=samples,
                samples_png=True,
                interpolation=interp,
            )
    write_run(results, "vae", 0, DEMO["vae"], device="cuda", history=True, name="vae-quick-s0-cuda")
    write_run(results, "gan", 3, {}, status="running")
    write_floor(
        results,
        "mnist",
        1000,
        {
            "fid_mnist": 1.9,
            "kid_mnist": 0.0004,
            "is_mnist": 9.8,
            "precision_mnist": 0.88,
            "recall_mnist": 0.87,
        },
    )


def _degrade(images: np.ndarray, model: str, rng: np.random.Generator) -> np.ndarray:
    x = images.astype(np.float64)
    if model == "vae":  # blur
        x = (x + np.roll(x, 1, 1) + np.roll(x, -1, 1) + np.roll(x, 1, 2) + np.roll(x, -1, 2)) / 5
    elif model in ("pixelcnn", "realnvp"):  # speckle
        x = x + rng.normal(0, 40 if model == "realnvp" else 20, x.shape) * (rng.random(x.shape) < 0.15)
    return np.clip(x, 0, 255).astype(np.uint8)


def _interpolate(images: np.ndarray, steps: int = 10) -> np.ndarray:
    """(pairs*steps, 28, 28): pixel blends between consecutive image pairs (stand-in for latent walks)."""
    out = []
    for a, b in zip(images[0::2], images[1::2], strict=True):
        for t in np.linspace(0, 1, steps):
            out.append(((1 - t) * a + t * b).astype(np.uint8))
    return np.stack(out)
