"""`bench run --tensorboard`: live training curves under <run>/tensorboard/ (an optional extra,
``pip install -e ".[tensorboard]"``). It writes the same scalars as history.csv (one tag per split
and column: "train/loss", "val/bpd"), a sample grid at each validation, and the run's config.json
as text. history.csv stays the record; this is a view of it while the run trains:

    tensorboard --logdir results/      # every run of a sweep, live
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from genbench.core.errors import UserError

FOLDER = "tensorboard"
GRID = 16  # sample images per validation grid: 4 x 4
NOT_SCALARS = ("step", "epoch", "split")
INSTALL = 'bench run --tensorboard needs the tensorboard package: pip install -e ".[tensorboard]"'


def require() -> None:
    """A UserError before any run starts when tensorboard is not installed."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise UserError(INSTALL) from None


class Board:
    """One run's event files; written by rank 0 only."""

    def __init__(self, run_dir: Path) -> None:
        require()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / FOLDER))
        config = run_dir / "config.json"
        if config.is_file():
            text = json.dumps(json.loads(config.read_text()), indent=2)
            self.writer.add_text("config", f"```json\n{text}\n```", 0)

    def row(self, row: dict[str, Any]) -> None:
        """A history.csv row's numbers as scalars at its step."""
        for key, value in row.items():
            if key not in NOT_SCALARS and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"{row['split']}/{key}", value, row["step"])
        self.writer.flush()  # seen live

    def samples(self, model: Any, step: int, seed: int) -> None:
        """A grid of the model's samples at this step, drawn from their own generator so that the
        training's random stream is untouched."""
        from torchvision.utils import make_grid

        device = next(model.parameters()).device
        generator = torch.Generator(device).manual_seed(seed)
        training = model.training
        model.eval()
        try:
            with torch.no_grad():
                images = model.sample(GRID, generator=generator)  # (16, C, H, W) uint8
        finally:
            model.train(training)
        self.writer.add_image("samples", make_grid(images.cpu(), nrow=4), step)
        self.writer.flush()

    def validation(self, row: dict[str, Any], model: Any, seed: int) -> None:
        self.row(row)
        self.samples(model, row["step"], seed)

    def close(self) -> None:
        self.writer.close()
