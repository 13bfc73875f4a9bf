"""TensorBoard backend: event files under the run's `tensorboard/` folder (`tensorboard --logdir RUN_OR_PARENT`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medclf.errors import MedclfError
from medclf.runs.layout import RunDir


class TensorBoardBackend:
    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the tensorboard package
            raise MedclfError("TensorBoard logging needs the 'tensorboard' package: pip install tensorboard "
                              "(or turn it off with track.tensorboard=false)") from None
        self.writer = SummaryWriter(log_dir=str(RunDir(run_dir).tensorboard_dir))

    def log_params(self, params: dict[str, Any]) -> None:
        # TensorBoard has no parameter table outside its HParams plugin; one text entry keeps the recipe visible
        lines = [f"| {k} | {v} |" for k, v in params.items()]
        self.writer.add_text("config", "| key | value |\n|---|---|\n" + "\n".join(lines), 0)

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def log_image(self, name: str, path: Path, step: int) -> None:
        from PIL import Image

        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        self.writer.add_image(name, pixels, step, dataformats="HWC")
        self.writer.flush()

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        pass  # the files stay in the run folder, next to the event files

    def log_model(self, run_dir: Path) -> None:
        pass  # best.pt is in the run folder already

    def close(self, status: str) -> None:
        self.writer.close()
