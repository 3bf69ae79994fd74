"""Tiny Lightning pieces for the callback tests: a model that trains in a second, and its data."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_cam.demo.data import ShapesConfig, make_shapes
from lightning_cam.demo.model import SmallCNN


class TinyClassifier(pl.LightningModule):
    """The demo CNN at width 4 on 32x32 images; batches are (x, y) tuples."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.net = SmallCNN(width=width)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def shapes_tensors(num: int, seed: int, with_masks: bool = False) -> list[Tensor]:
    data = make_shapes(ShapesConfig(num_samples=num, image_size=32, cue_size=4, seed=seed))
    tensors = [data["image"], data["label"]]
    if with_masks:
        tensors.append(data["object"])
    return tensors


def loaders(
    num_train: int = 64,
    num_val: int = 32,
    batch_size: int = 16,
    with_masks: bool = False,
    shuffle_val_seed: int | None = None,
) -> tuple[DataLoader, DataLoader]:
    train = DataLoader(TensorDataset(*shapes_tensors(num_train, 0, with_masks)), batch_size=batch_size)
    generator = None if shuffle_val_seed is None else torch.Generator().manual_seed(shuffle_val_seed)
    val = DataLoader(
        TensorDataset(*shapes_tensors(num_val, 1, with_masks)),
        batch_size=batch_size,
        shuffle=generator is not None,
        generator=generator,
    )
    return train, val


def trainer(tmp_path: object, callbacks: list, **kwargs: object) -> pl.Trainer:
    options = {
        "max_epochs": 2,
        "default_root_dir": str(tmp_path),
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "logger": False,
        "log_every_n_steps": 1,
        "accelerator": "cpu",
        "devices": 1,
    }
    options.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **options)


def ddp_trainer(out: object, callbacks: list, max_epochs: int, **kwargs: object) -> pl.Trainer:
    """A 2-process CPU DDP (gloo) Trainer without logger, progress bar or summary, for tests/scripts/."""
    options = {
        "accelerator": "cpu",
        "devices": 2,
        "strategy": "ddp",
        "max_epochs": max_epochs,
        "default_root_dir": str(out),
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return pl.Trainer(callbacks=callbacks, **(options | kwargs))


def read_tensorboard_images(log_dir: object, tag: str) -> list[tuple[int, object]]:
    """``(step, PIL image)`` for each image logged under ``tag`` in the event files of ``log_dir``."""
    import io

    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    if tag not in accumulator.Tags()["images"]:
        return []
    return [
        (event.step, Image.open(io.BytesIO(event.encoded_image_string))) for event in accumulator.Images(tag)
    ]


def read_tensorboard_scalars(log_dir: object, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    if tag not in accumulator.Tags()["scalars"]:
        return []
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def unpack_reversed(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, None]:
    """An ``unpack`` function for batches stored as (labels, images)."""
    labels, images = batch
    return images, labels, None


def tiny_vit(**options: object) -> torch.nn.Module:
    """A small timm ViT with random weights (patches of 8 px); ``options`` override its shape."""
    import timm

    shape = {"num_classes": 4, "img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 3}
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **(shape | options))


def run_ddp_script(script: str, out: object, pythonpath: str, timeout: float = 300) -> tuple[dict, dict]:
    """Run ``tests/scripts/<script>`` (a 2-process CPU DDP fit) with a timeout; each rank's record.

    The script runs in its own process group, killed whole (the ranks Lightning launched too) when
    it outlives ``timeout``: a hang fails the test instead of stalling the suite."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    environment = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(
        [sys.executable, str(root / "tests" / "scripts" / script), str(out)],
        env=environment,
        cwd=out,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    ) as process:
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
            raise AssertionError(
                f"{script} hung for {timeout} s; its output:\n{output.decode()[-4000:]}"
            ) from None
    if process.returncode != 0:
        raise AssertionError(f"{script} exited with {process.returncode}:\n{output.decode()[-4000:]}")
    return tuple(torch.load(Path(out) / f"rank{rank}.pt", weights_only=False) for rank in (0, 1))  # type: ignore[return-value]


def recording_check_maps() -> dict:
    """Patch the monitor's check to keep the maps of its last explaining pass (for tests/scripts/ that
    compare them with a single process); returns the dict it fills."""
    import lightning_cam.monitor.check as check_module

    last_maps: dict = {}
    explain_batch = check_module.explain_batch

    def recording_explain(*args: object, **kwargs: object) -> object:
        result = explain_batch(*args, **kwargs)
        last_maps.update(result.maps)
        return result

    check_module.explain_batch = recording_explain
    return last_maps
