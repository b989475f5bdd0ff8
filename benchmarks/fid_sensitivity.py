"""How FID with each dataset's feature network responds to damaged test images: a Markdown table.

    python benchmarks/fid_sensitivity.py --data-dir ../shared/data [--n 1000] [--threads 2]

Each row scores the damaged test images (a subset of N, seed 0) against the same images undamaged;
the floor is N training images against them: what a perfect generator's samples would score at N.
The last row repeats the 2-pixel shift on the whole test set against a whole-test-set-sized floor
(the bar of the datasets issue: at least 10x the floor). tests/test_features.py asserts the
monotone rise and that bar; this script prints the numbers the README quotes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_features import blur, noise, shift  # noqa: E402  the damages the test asserts on

from genbench.bench.engine.data import load_dataset, resolve_data_dir  # noqa: E402
from genbench.metrics import fidelity  # noqa: E402
from genbench.metrics.base import subset_indices  # noqa: E402
from genbench.metrics.features import CLASSIFIERS  # noqa: E402

DAMAGES = ((shift, "shift {} px", (1, 2, 4)), (blur, "blur sigma {}", (0.5, 1.0, 2.0)),
           (noise, "noise std {}", (16, 32, 64)))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--n", type=int, default=1000, help="test images per row")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"FID against {args.n} test images (seed 0), {torch.get_num_threads()} threads, cpu\n")
    print("| network | damage | FID | x floor |\n|---|---|---|---|")
    for name in sorted(CLASSIFIERS):
        data = load_dataset(name, resolve_data_dir(args.data_dir), download_missing=False)
        network = fidelity.resolve_network(name)

        def fid(images: torch.Tensor, reference: torch.Tensor, network=network) -> float:
            out = fidelity.run_torch_fidelity(
                images, reference, network, fid=True, kid=False, prc=False, isc=False
            )
            return out["frechet_inception_distance"]

        test = fidelity.reference_images(data.test, args.n, 0)
        floor = fid(data.train[subset_indices(len(data.train), args.n, 0)], test)
        print(f"| {name} | floor: {args.n} training images | {floor:.3f} | 1 |")
        for damage, label, strengths in DAMAGES:
            for s in strengths:
                value = fid(damage(test, s), test)
                print(f"| {name} | {label.format(s)} | {value:.2f} | {value / floor:.1f} |")
        n = len(data.test)
        whole_floor = fid(data.train[subset_indices(len(data.train), n, 0)], data.test)
        value = fid(shift(data.test, 2), data.test)
        print(f"| {name} | whole test set: floor ({n} training images) | {whole_floor:.3f} | 1 |")
        print(f"| {name} | whole test set: shift 2 px | {value:.2f} | {value / whole_floor:.1f} |")


if __name__ == "__main__":
    main()
