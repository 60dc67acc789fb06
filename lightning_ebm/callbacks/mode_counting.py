"""StackedMNIST mode counting (Metz et al. 2017; Srivastava et al. 2017; Kumar et al. 2019, Table 1).

``num_samples`` samples of the model (26 * 10**n by default: 26,000 for three stacks, 260,000 for
four), each of their ``n`` channels classified by a pretrained MNIST classifier; a sample's mode is its
digit tuple. Logged: the number of distinct modes seen (``val/modes``, out of ``10**n``) and
``KL(mode histogram || uniform over 10**n)`` (``val/mode_kl``). Published: MEG 1,000 modes and KL
0.0313 with three stacks, 10,000 and 0.0480 with four (WGAN-GP 959 / 0.7276 and 9,538 / 0.9144).

The classifier is the project's own (``configs/mnist_classifier.yaml``), loaded by
:class:`~lightning_ebm.models.Classifier` from the checkpoint path alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import lightning as L
import torch

from lightning_ebm.callbacks.utils import RankZeroEvaluation, log_rank_zero_values, named_value_range
from lightning_ebm.datamodules.stacked_mnist import mode_ids
from lightning_ebm.errors import UserError
from lightning_ebm.evaluation.modes import mode_histogram_metrics

TRAIN_COMMAND = "python -m lightning_ebm fit --config mnist_classifier.yaml --data.data_dir PATH/TO/data"


def load_classifier(path: str, device: torch.device | str = "cpu") -> L.LightningModule:
    """The :class:`~lightning_ebm.models.Classifier` of a checkpoint, in eval mode; a clear error when the
    file is missing or is not such a checkpoint."""
    from lightning_ebm.models.classifier import Classifier

    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise UserError(
            f"MNIST classifier checkpoint for mode counting not found: no file {path}. Train one with "
            f"`{TRAIN_COMMAND}` and point classifier_checkpoint at its checkpoints/last.ckpt (or best-*.ckpt)"
        )
    try:
        model = Classifier.load_from_checkpoint(path, map_location=device)
    except Exception as exc:  # unpickling errors, a checkpoint of another model
        raise UserError(
            f"{path} is not a readable checkpoint of lightning_ebm.models.Classifier ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:200]}); train one with `{TRAIN_COMMAND}`"
        ) from None
    return model.eval()


class ModeCounting(RankZeroEvaluation):
    """Every ``every_n_epochs`` validation epochs (and at the last), the modes and mode KL of ``model.sample``.

    Uses only ``pl_module.sample(n)``, which must return ``(n, num_stacks, 28, 28)`` images. Samples are
    drawn in batches of ``batch_size`` with their own seeded random stream (the training's random state
    is left as it was). Under DDP rank 0 evaluates and broadcasts the result, so every rank logs the
    same values.

    Args:
        classifier_checkpoint: checkpoint of the MNIST classifier (``configs/mnist_classifier.yaml``).
        num_samples: samples per evaluation (default ``26 * 10**num_stacks``).
        every_n_epochs: evaluation period in validation epochs (0: only in ``test``).
        batch_size: samples per ``sample`` call and per classifier pass.
        num_stacks: channels per sample (default: the data module's ``num_stacks``, else the model's
            ``data_shape[0]``).
        value_range: range of the samples, ``[low, high]`` (default: the data module's ``value_range``,
            else the classifier's ``input_range``); mapped to the classifier's range.
        seed: seed of the sampling.
    """

    def __init__(
        self,
        classifier_checkpoint: str,
        num_samples: int | None = None,
        every_n_epochs: int = 1,
        batch_size: int = 1000,
        num_stacks: int | None = None,
        value_range: Sequence[float] | None = None,
        seed: int = 0,
    ) -> None:
        if (num_samples is not None and num_samples < 1) or batch_size < 1:
            raise UserError(f"ModeCounting needs num_samples >= 1 and batch_size >= 1, got {num_samples}, {batch_size}")
        self.classifier_checkpoint = classifier_checkpoint
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.batch_size = batch_size
        self.num_stacks = num_stacks
        self.value_range = value_range
        self.seed = seed
        self.classifier: L.LightningModule | None = None
        self.last: dict[str, float] = {}  # the metrics last logged, on every rank

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not os.path.isfile(os.path.expanduser(str(self.classifier_checkpoint))):
            load_classifier(self.classifier_checkpoint)  # fail before training, on every rank

    # ------------------------------------------------------------------ evaluation
    def _num_stacks(self, trainer: L.Trainer | None, pl_module: L.LightningModule) -> int:
        if self.num_stacks is not None:
            return self.num_stacks
        n = getattr(getattr(trainer, "datamodule", None), "num_stacks", None)
        if n is None:
            shape = getattr(pl_module, "data_shape", None)
            if not shape:
                raise UserError("ModeCounting cannot tell the number of stacks: set num_stacks")
            n = shape[0]
        return int(n)

    def _value_range(self, trainer: L.Trainer | None, classifier: L.LightningModule) -> tuple[float, float]:
        if self.value_range is not None:
            return (float(self.value_range[0]), float(self.value_range[1]))
        return named_value_range(trainer) or classifier.input_range

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer | None, pl_module: L.LightningModule) -> dict[str, float]:
        """``{"modes", "kl"}`` of ``num_samples`` samples of ``pl_module`` (any process, no communication)."""
        if self.classifier is None:
            self.classifier = load_classifier(self.classifier_checkpoint)
        device = pl_module.device
        classifier = self.classifier.to(device)
        n = self._num_stacks(trainer, pl_module)
        value_range = self._value_range(trainer, classifier)
        total = self.num_samples if self.num_samples is not None else 26 * 10**n
        ids = []
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            done = 0
            while done < total:
                b = min(self.batch_size, total - done)
                samples = pl_module.sample(b).detach()
                if samples.shape != (b, n, 28, 28):
                    raise UserError(
                        f"ModeCounting needs samples of shape (batch, {n}, 28, 28) (one MNIST digit per channel), "
                        f"got {tuple(samples.shape)}"
                    )
                digits = classifier.classify(samples.reshape(b * n, 1, 28, 28), value_range).view(b, n)
                ids.append(mode_ids(digits))
                done += b
        return mode_histogram_metrics(torch.cat(ids), 10**n)

    def _evaluate_and_log(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        def compute() -> list[float]:
            results = self.evaluate(trainer, pl_module)
            return [results["modes"], results["kl"]]

        names = (f"{stage}/modes", f"{stage}/mode_kl")
        self.last = log_rank_zero_values(trainer, pl_module, names, compute, prog_bar=True)
