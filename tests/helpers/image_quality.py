"""Stand-ins for the image-quality tests: a fixed random conv net as feature extractor, a model whose
samples are a shifted copy of given images, and a two-process DDP run (``python image_quality.py OUT``)."""

from __future__ import annotations

import json
import os
import sys

import lightning as L
import torch
from torch import nn


class RandomConvFeatures(nn.Module):
    """A fixed random conv net: uint8 images (B, 3, H, W) -> 16 features. Counts its calls."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2), nn.Tanh(), nn.Conv2d(8, 16, 3, stride=2), nn.Tanh(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        for p in self.net.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.5
        self.requires_grad_(False)
        self.calls = 0
        self.images = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        assert images.dtype == torch.uint8 and images.shape[1] == 3
        self.calls += 1
        self.images += images.shape[0]
        return self.net(images.float() / 127.5 - 1)


def random_inception_weights(folder) -> str:  # noqa: ANN001
    """torch-fidelity's Inception-v3 with random weights, saved in its weights-file format under the
    real file's name in ``folder`` (the real weights cannot be downloaded on the test machines)."""
    import pytest

    fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    from lightning_ebm.callbacks.image_quality import INCEPTION_FILE

    empty = os.path.join(folder, "empty.pt")
    torch.save({}, empty)
    original = fidelity.FeatureExtractorInceptionV3.load_state_dict
    fidelity.FeatureExtractorInceptionV3.load_state_dict = lambda self, state: None
    try:
        net = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], empty)
    finally:
        fidelity.FeatureExtractorInceptionV3.load_state_dict = original
    weights = os.path.join(folder, INCEPTION_FILE)
    torch.save(net.state_dict(), weights)
    return weights


class ShiftedImages(L.LightningModule):
    """``sample(n)``: the first n of ``images`` plus ``shift`` (a stand-in generator); trains a dummy weight."""

    def __init__(self, images: torch.Tensor, shift: float = 0.0) -> None:
        super().__init__()
        self.images = images
        self.shift = shift
        self.weight = nn.Parameter(torch.zeros(1))

    def sample(self, n: int) -> torch.Tensor:
        return (self.images[:n] + self.shift).clamp(-1, 1).to(self.device)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        return (self.weight * batch[0].mean()).sum() + self.weight.square().sum()

    def validation_step(self, batch, batch_idx) -> None:  # noqa: ANN001
        pass

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.SGD(self.parameters(), lr=0.1)


class RecordMetrics(L.Callback):
    """Each rank writes the logged ``val/`` metrics to ``<dirpath>/metrics<R>.json`` at the end of fit."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        metrics["_world_size"] = trainer.world_size
        os.makedirs(self.dirpath, exist_ok=True)
        with open(os.path.join(self.dirpath, f"metrics{trainer.global_rank}.json"), "w") as f:
            json.dump(metrics, f)


def build(data_dir: str, cache_dir: str):  # noqa: ANN201
    """The data module, model and callback shared by the DDP run and the test's single-process check."""
    from lightning_ebm.callbacks import ImageQuality
    from lightning_ebm.datamodules import CIFAR10DataModule

    dm = CIFAR10DataModule(data_dir, batch_size=8, val_size=40)
    dm.setup()
    model = ShiftedImages(dm.val_data.flip(0), shift=0.2)
    callback = ImageQuality(
        num_samples=32, every_n_epochs=1, reference="val", feature_extractor=RandomConvFeatures(), cache_dir=cache_dir,
        batch_size=16, splits=2,
    )  # fmt: skip
    return dm, model, callback


if __name__ == "__main__":
    torch.set_num_threads(1)
    data_dir, out = sys.argv[1], sys.argv[2]
    dm, model, callback = build(data_dir, os.path.join(out, "cache"))
    trainer = L.Trainer(
        strategy="ddp", devices=2, accelerator="cpu", max_epochs=1, limit_train_batches=2, limit_val_batches=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[callback, RecordMetrics(out)],
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
