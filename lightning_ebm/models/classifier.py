"""A plain supervised classifier: the MNIST digit classifier that mode counting relies on.

StackedMNIST mode counting (Metz et al. 2017, Srivastava et al. 2017, Kumar et al. 2019) classifies
each channel of a generated image with a pretrained MNIST classifier. This module trains that
classifier with the same conventions as the methods (networks injected as constructor arguments,
``save_hyperparameters``, checkpoints loadable by path alone, the command line with a shipped config:
``python -m lightning_ebm fit --config mnist_classifier.yaml``), but it is not an energy-based model.

Training minimises the cross-entropy of the logits with the injected optimiser (Adam by default), optionally on
images translated at random by up to ``augment_shift`` pixels (one vectorised resampling per batch,
on the batch's device; the background is filled with the lowest pixel value).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ebm.errors import UserError
from lightning_ebm.models.base import NetworkModule
from lightning_ebm.optim import OptimizerCallable, build_optimizer, spec
from lightning_ebm.utils import eval_mode

ADAM = spec("torch.optim.Adam", lr=1e-3)
_NAMED_RANGES = {"unit": (0.0, 1.0), "symmetric": (-1.0, 1.0)}


class Classifier(NetworkModule):
    """Cross-entropy training of ``net`` (images to logits); logs ``train/loss``, ``train/accuracy``,
    ``val/loss``, ``val/accuracy`` and ``test/accuracy``.

    Args:
        net: the network, e.g. :class:`lightning_ebm.nn.ConvClassifier`.
        optimizer: the optimiser (Adam at 1e-3 by default).
        augment_shift: translate training images by up to this many pixels in each direction (0: off).
        input_range: the pixel range of the training images, ``[low, high]`` (``[-1, 1]`` or ``[0, 1]``);
            :meth:`classify` maps images of another range into it. A data module whose ``value_range``
            disagrees is a configuration error.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerCallable = ADAM,
        augment_shift: int = 0,
        input_range: Sequence[float] = (-1.0, 1.0),
    ) -> None:
        super().__init__()
        if len(input_range) != 2 or not input_range[0] < input_range[1]:
            raise UserError(f"input_range must be [low, high] with low < high, got {list(input_range)}")
        if augment_shift < 0:
            raise UserError(f"augment_shift must be 0 or more, got {augment_shift}")
        self.save_hyperparameters()
        self.net = net
        self.input_range = (float(input_range[0]), float(input_range[1]))

    def forward(self, x: Tensor) -> Tensor:
        """The logits ``(batch, num_classes)``."""
        return self.net(x)

    @torch.no_grad()
    def classify(self, x: Tensor, value_range: Sequence[float] | None = None) -> Tensor:
        """Predicted classes ``(batch,)`` of images in ``value_range`` (default: ``input_range``), in eval mode."""
        if value_range is not None and tuple(value_range) != self.input_range:
            (low, high), (a, b) = value_range, self.input_range
            x = (x - low) * ((b - a) / (high - low)) + a
        with eval_mode(self.net):
            return self.net(x).argmax(1)

    # ------------------------------------------------------------------ training
    def augment(self, x: Tensor) -> Tensor:
        """Each image translated by its own random integer shift in ``[-augment_shift, augment_shift]``^2."""
        k = self.hparams.augment_shift
        if k == 0:
            return x
        b, _, h, w = x.shape
        shift = torch.randint(-k, k + 1, (b, 2), device=x.device).to(x.dtype)
        theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, 0, 2] = 2.0 * shift[:, 0] / w  # normalised coordinates: one pixel is 2 / size
        theta[:, 1, 2] = 2.0 * shift[:, 1] / h
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        low = self.input_range[0]
        return F.grid_sample(x - low, grid, mode="nearest", padding_mode="zeros", align_corners=False) + low

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        logits = self(self.augment(x))
        loss = F.cross_entropy(logits, y)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/accuracy", (logits.argmax(1) == y).float().mean(), on_step=True, on_epoch=False)
        return loss

    def _evaluate(self, batch: Any, stage: str) -> None:
        x, y = batch[0], batch[1]
        logits = self(x)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log(f"{stage}/accuracy", (logits.argmax(1) == y).float().mean(), sync_dist=True, prog_bar=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """The predicted class of each example."""
        return self(batch[0] if isinstance(batch, (list, tuple)) else batch).argmax(1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return build_optimizer(self.hparams.optimizer, self.parameters())

    def setup(self, stage: str) -> None:
        """A data module whose pixel range is not ``input_range`` is a config mistake: say so now."""
        dm = getattr(self.trainer, "datamodule", None)
        named = getattr(dm, "value_range", None)
        if getattr(dm, "binarize", "none") != "none":
            named = "unit"
        if named in _NAMED_RANGES and _NAMED_RANGES[named] != self.input_range:
            raise UserError(
                f"the data module's images are in {list(_NAMED_RANGES[named])} (value_range {named!r}) but the "
                f"classifier's input_range is {list(self.input_range)}: make them agree"
            )
