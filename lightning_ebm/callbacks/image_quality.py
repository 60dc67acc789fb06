"""Fréchet Inception Distance and Inception Score of model samples, with torchmetrics.

Paper-comparable defaults (Heusel et al. 2017's TTUR code, Salimans et al. 2016): 50,000 samples,
the statistics of all 50,000 CIFAR-10 training images as the reference, the 2,048-d pool features
and the 1,008 unbiased logits of the TensorFlow Inception-v3 graph of 2015-12-05 (torch-fidelity's
port, ``weights-inception-2015-12-05-6726825d.pth``), images quantised to uint8 and resized to
299 x 299 by TensorFlow 1's bilinear resize **without antialiasing**: torchmetrics >= 1.8 resizes with
antialiasing by default (``antialias=True`` of ``FrechetInceptionDistance``), which changes the
numbers; here the network is built with ``antialias=False`` unless the callback's ``antialias``
says otherwise. (torchmetrics' ``InceptionScore`` has no such option, nor a weights path: the
callback builds the network itself and feeds both metrics its features.) Inception Score: 10 splits.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import pickle
import socket
import typing
import warnings
from collections.abc import Iterator
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn

from lightning_ebm.callbacks.utils import RankZeroEvaluation, log_rank_zero_values, named_value_range
from lightning_ebm.errors import UserError
from lightning_ebm.utils import check_choices

INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
Reference = Literal["cifar10-train", "cifar10-test", "train", "val", "test"]
CIFAR10_REFERENCES = {"cifar10-train": True, "cifar10-test": False}  # read from CIFAR-10's files: train=True/False
SPLIT_REFERENCES = tuple(r for r in typing.get_args(Reference) if r not in CIFAR10_REFERENCES)
DOWNLOAD_TIMEOUT_S = 60.0
#: what loading a truncated, empty or foreign ``.pth`` file raises: torch's zip reader (``RuntimeError``,
#: also ``load_state_dict``'s for missing or unexpected keys), the unpickler, the end of the file.
UNREADABLE_FILE_ERRORS = (RuntimeError, pickle.UnpicklingError, EOFError)
#: what a failed download raises: no network, a timeout, an HTTP error status (``URLError`` and
#: ``socket.timeout`` are ``OSError``), a connection dropped mid-file, a full disk.
DOWNLOAD_ERRORS = (OSError, http.client.HTTPException)


def default_inception_weights() -> str:
    """Where torch.hub (and so torch-fidelity) keeps the Inception weights: ``<torch hub dir>/checkpoints/``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", INCEPTION_FILE)


class InceptionFeatures(nn.Module):
    """torchmetrics' Inception-v3 (torch-fidelity's port): uint8 images -> (2048-d pool features, 1008 logits).

    Args:
        weights: path of ``weights-inception-2015-12-05-6726825d.pth``.
        antialias: resize to 299 x 299 with antialiasing (torchmetrics' default since 1.8) instead of
            TensorFlow 1's bilinear resize (the original, paper-comparable one).
    """

    def __init__(self, weights: str, antialias: bool = False) -> None:
        super().__init__()
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
            from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE
        except ImportError as exc:  # pragma: no cover - torchmetrics is a dependency
            raise UserError(f"torchmetrics' image metrics cannot be imported ({exc})") from None
        if not _TORCH_FIDELITY_AVAILABLE:
            raise UserError(
                "the Inception network of FID / IS needs torch-fidelity: pip install torch-fidelity "
                '(or "lightning-ebm[image]"), or pass your own feature_extractor'
            )
        try:
            self.net = NoTrainInceptionV3(
                name="inception-v3-compat",
                features_list=["2048", "logits_unbiased"],
                feature_extractor_weights_path=weights,
                antialias=antialias,
            )
        except UNREADABLE_FILE_ERRORS as exc:
            raise UserError(
                f"Inception weights {weights} are corrupt or not torch-fidelity's {INCEPTION_FILE} "
                f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); download {INCEPTION_URL} again"
            ) from None
        self.identity = f"inception-v3-compat/{INCEPTION_FILE}/antialias={antialias}"

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        features, logits = self.net._torch_fidelity_forward(images)
        return features, logits


class _Features(nn.Module):
    """Pass-through 'network' for torchmetrics: the callback extracts the features itself, once for both metrics."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def module_identity(module: nn.Module) -> str:
    """A name for the cache key: the module's ``identity`` attribute or class, and a hash of its state."""
    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    kind = getattr(module, "identity", None) or f"{type(module).__module__}.{type(module).__qualname__}"
    return f"{kind}/{digest.hexdigest()[:16]}"


def to_uint8(images: Tensor, value_range: tuple[float, float]) -> Tensor:
    """Images in ``value_range`` -> uint8 RGB in [0, 255] (rounded as when saving PNGs; grey made 3-channel)."""
    if images.dtype == torch.uint8:
        x = images
    else:
        low, high = value_range
        x = ((images.float() - low) / (high - low) * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"ImageQuality needs images (B, 1 or 3, H, W), got shape {tuple(images.shape)}")
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class ImageQuality(RankZeroEvaluation):
    """Every ``every_n_epochs`` epochs (and at the last), FID and Inception Score of ``model.sample``.

    Logs ``val/fid`` and ``val/inception_score`` (and ``test/...`` in ``test``), on the progress bar too.
    The samples are drawn in batches of ``batch_size`` with their own seeded random stream (the
    training's random state is left as it was), mapped to uint8 and passed through the feature
    extractor; torchmetrics' ``FrechetInceptionDistance`` and ``InceptionScore`` compute the scores.

    Reference statistics (the feature sums of the reference images) are computed once and cached in
    ``cache_dir``, in a file whose key holds the data set (name and data-module arguments), the split, the
    number of images and the feature extractor's identity (class and a hash of its weights).

    DDP: the evaluation runs on rank 0 alone (sampling 50,000 images and the Inception passes), the
    other ranks wait for the result, which is broadcast so that every rank logs the same value; the
    metrics are built with ``sync_on_compute=False``.

    Args:
        num_samples: samples per evaluation (50,000 for published numbers; fewer bias FID upwards).
        every_n_epochs: evaluation period in epochs (0 for only in ``test``).
        fid: compute FID.
        inception_score: compute the Inception Score.
        reference: ``cifar10-train`` (all 50,000 CIFAR-10 training images, read from ``data_dir``),
            ``cifar10-test``, or ``train`` / ``val`` / ``test``: that split of the trainer's data module
            (its ``reference_dataset(split)`` if it has one, else its ``<split>_data`` tensor).
        num_reference: reference images used (None for all of them).
        data_dir: directory of the CIFAR-10 files for the ``cifar10-*`` references (default: the data
            module's ``data_dir``, else ``data``).
        feature_extractor: module mapping uint8 images ``(B, 3, H, W)`` to features ``(B, D)`` (used as
            logits too for IS) or to a tuple ``(features, logits)``; default: torchmetrics' Inception-v3.
        inception_weights: path of ``weights-inception-2015-12-05-6726825d.pth`` (default: torch.hub's
            ``checkpoints/`` folder, where torch-fidelity downloads it).
        download_weights: download the weights to torch.hub's folder if they are absent (needs internet).
        cache_dir: folder of the cached reference statistics (None: do not cache).
        batch_size: images per sampling call and per feature-extractor pass.
        value_range: range of the model's samples and the data (default: from the data module's
            ``value_range``, ``symmetric`` or ``unit``, else [-1, 1] when samples are negative).
        splits: splits of the Inception Score.
        antialias: resize for Inception with antialiasing (torchmetrics' default) instead of the original resize.
        seed: seed of the sampling.
    """

    def __init__(
        self,
        num_samples: int = 50_000,
        every_n_epochs: int = 5,
        fid: bool = True,
        inception_score: bool = True,
        reference: Reference = "cifar10-train",
        num_reference: int | None = None,
        data_dir: str | None = None,
        feature_extractor: nn.Module | None = None,
        inception_weights: str | None = None,
        download_weights: bool = True,
        cache_dir: str | None = "~/.cache/lightning_ebm/fid_statistics",
        batch_size: int = 200,
        value_range: tuple[float, float] | None = None,
        splits: int = 10,
        antialias: bool = False,
        seed: int = 0,
    ) -> None:
        check_choices(ImageQuality.__init__, {"reference": reference})
        if not fid and not inception_score:
            raise UserError("ImageQuality with fid: false and inception_score: false has nothing to compute")
        if num_samples < 2 or batch_size < 1 or splits < 1:
            raise UserError(
                f"ImageQuality needs num_samples >= 2, batch_size >= 1 and splits >= 1, got {num_samples}, "
                f"{batch_size} and {splits}"
            )
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self.fid = fid
        self.inception_score = inception_score
        self.reference = reference
        self.num_reference = num_reference
        self.data_dir = data_dir
        self.feature_extractor = feature_extractor
        self.inception_weights = inception_weights
        self.download_weights = download_weights
        self.cache_dir = os.path.expanduser(cache_dir) if cache_dir else None
        self.batch_size = batch_size
        self.value_range = value_range
        self.splits = splits
        self.antialias = antialias
        self.seed = seed
        self.reference_computations = 0  # how often reference statistics were computed (not loaded)
        self._reference: dict[str, Tensor] | None = None
        self._reference_key: str | None = None

    # ------------------------------------------------------------------------------ the network
    def weights_path(self) -> str:
        """The Inception weights file, checked (and downloaded if allowed and absent)."""
        path = os.path.expanduser(self.inception_weights) if self.inception_weights else default_inception_weights()
        if os.path.isfile(path):
            return path
        how = f"download {INCEPTION_URL} to {path}" + ("" if self.inception_weights else " (or set inception_weights)")
        if self.inception_weights or not self.download_weights:
            raise UserError(f"Inception weights for FID / IS not found: no file {path}; {how}")
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            torch.hub.download_url_to_file(INCEPTION_URL, path, progress=False)
        except DOWNLOAD_ERRORS as exc:
            raise UserError(
                f"Inception weights for FID / IS not found at {path} and downloading them failed "
                f"({' '.join(str(exc).split())[:200]}); without internet, {how}"
            ) from None
        finally:
            socket.setdefaulttimeout(previous)
        return path

    def extractor(self) -> nn.Module:
        """The feature extractor (built on first use)."""
        if self.feature_extractor is None:
            self.feature_extractor = InceptionFeatures(self.weights_path(), antialias=self.antialias)
        return self.feature_extractor

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.feature_extractor is None:
            self.weights_path()  # fail before training, on every rank, when the weights are missing

    @torch.no_grad()
    def features(self, images: Tensor, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """``(features, logits)`` of uint8 images, float64 on the CPU."""
        net = self.extractor().to(device).eval()
        out = net(images.to(device))
        features, logits = out if isinstance(out, (tuple, list)) else (out, out)
        return features.double().cpu(), logits.double().cpu()

    # ---------------------------------------------------------------------------- the reference
    def _value_range(self, trainer: L.Trainer | None, images: Tensor) -> tuple[float, float]:
        if self.value_range is not None:
            return tuple(self.value_range)
        return named_value_range(trainer) or ((-1.0, 1.0) if float(images.min()) < 0 else (0.0, 1.0))

    def _reference_batches(self, trainer: L.Trainer | None) -> tuple[dict[str, Any], Iterator[Tensor]]:
        """The reference data set's description (for the cache key) and its images in batches."""
        dm = getattr(trainer, "datamodule", None)
        limit = self.num_reference
        if self.reference in CIFAR10_REFERENCES:
            from lightning_ebm.datamodules.cifar10 import load_cifar10

            data_dir = self.data_dir or getattr(dm, "data_dir", None) or "data"
            images = load_cifar10(data_dir, train=CIFAR10_REFERENCES[self.reference])[0][:limit]
            description = {"dataset": "cifar10", "split": self.reference.split("-")[1], "num_images": len(images)}
            return description, iter(images.split(self.batch_size))
        if dm is None:
            raise UserError(f"reference {self.reference!r} is a split of the data module, but the trainer has none")
        hparams = {k: v for k, v in dict(getattr(dm, "hparams", {})).items() if k not in ("batch_size", "num_workers")}
        if "data_dir" in hparams:
            hparams["data_dir"] = os.path.realpath(os.path.expanduser(str(hparams["data_dir"])))
        dataset = dm.reference_dataset(self.reference) if hasattr(dm, "reference_dataset") else None
        if dataset is not None:
            n = len(dataset) if limit is None else min(limit, len(dataset))
            batches = self._dataset_batches(dataset, n)
        else:
            data = getattr(dm, f"{self.reference}_data", None)
            if not isinstance(data, Tensor):
                raise UserError(
                    f"reference {self.reference!r}: the data module {type(dm).__name__} has neither "
                    f"reference_dataset() nor a {self.reference}_data tensor"
                )
            data = data[:limit]
            n, batches = len(data), iter(data.split(self.batch_size))
        name = f"{type(dm).__module__}.{type(dm).__qualname__}"
        description = {"dataset": name, "arguments": hparams, "split": self.reference, "num_images": n}
        return description, batches

    def _dataset_batches(self, dataset: Any, n: int) -> Iterator[Tensor]:
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(n)), batch_size=self.batch_size)
        for batch in loader:
            yield batch[0] if isinstance(batch, (tuple, list)) else batch

    def reference_statistics(self, trainer: L.Trainer | None, device: torch.device | str = "cpu") -> dict[str, Tensor]:
        """Feature sums of the reference images (``sum``, ``cov_sum``, ``num_samples``), from the cache if there."""
        description, batches = self._reference_batches(trainer)
        description["feature_extractor"] = module_identity(self.extractor())
        key = hashlib.sha1(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()[:20]
        if self._reference is not None and self._reference_key == key:
            return self._reference
        path = os.path.join(self.cache_dir, f"{description['split']}-{key}.pt") if self.cache_dir else None
        if path and os.path.isfile(path):
            try:
                cached = torch.load(path, weights_only=True)
            except (*UNREADABLE_FILE_ERRORS, OSError):  # a damaged cache file is recomputed and rewritten
                cached = None
            if (
                isinstance(cached, dict)
                and cached.get("description") == json.loads(json.dumps(description, default=str))
                and isinstance(cached.get("statistics"), dict)
            ):
                self._reference, self._reference_key = cached["statistics"], key
                return self._reference
        total, cov, count = None, None, 0
        for batch in batches:
            if batch.dtype != torch.uint8:
                batch = to_uint8(batch, self._value_range(trainer, batch))
            features, _ = self.features(to_uint8(batch, (0, 255)), device)
            total = features.sum(0) if total is None else total + features.sum(0)
            cov = features.T @ features if cov is None else cov + features.T @ features
            count += features.shape[0]
        if count < 2:
            raise UserError(f"reference {self.reference!r} has {count} images; FID needs at least 2")
        stats = {"sum": total, "cov_sum": cov, "num_samples": torch.tensor(count)}
        self.reference_computations += 1
        if path:
            os.makedirs(self.cache_dir, exist_ok=True)
            tmp = f"{path}.tmp{os.getpid()}"
            torch.save({"description": json.loads(json.dumps(description, default=str)), "statistics": stats}, tmp)
            os.replace(tmp, path)
        self._reference, self._reference_key = stats, key
        return stats

    # ----------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer | None, pl_module: L.LightningModule) -> dict[str, float]:
        """``{"fid": ..., "inception_score": ...}`` (those enabled) of ``num_samples`` samples of ``pl_module``."""
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.inception import InceptionScore

        device = pl_module.device
        fid_metric = is_metric = None
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            done = 0
            while done < self.num_samples:
                n = min(self.batch_size, self.num_samples - done)
                samples = pl_module.sample(n).detach()
                features, logits = self.features(to_uint8(samples, self._value_range(trainer, samples)), device)
                if fid_metric is None:
                    if self.fid:
                        fid_metric = FrechetInceptionDistance(
                            feature=_Features(features.shape[1]), reset_real_features=False, sync_on_compute=False
                        )
                    if self.inception_score:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore", UserWarning)  # "saves all features in buffer": expected
                            is_metric = InceptionScore(
                                feature=_Features(logits.shape[1]), splits=self.splits, sync_on_compute=False
                            )
                if fid_metric is not None:
                    fid_metric.update(features, real=False)
                if is_metric is not None:
                    is_metric.update(logits.float())
                done += n
            results = {}
            if fid_metric is not None:
                stats = self.reference_statistics(trainer, device)
                fid_metric.real_features_sum = stats["sum"].clone()
                fid_metric.real_features_cov_sum = stats["cov_sum"].clone()
                fid_metric.real_features_num_samples = stats["num_samples"].clone()
                results["fid"] = float(fid_metric.compute())
            if is_metric is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # the std of a single split
                    results["inception_score"] = float(is_metric.compute()[0])
        return results

    def _evaluate_and_log(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        names = [name for name, on in (("fid", self.fid), ("inception_score", self.inception_score)) if on]

        def compute() -> list[float]:
            results = self.evaluate(trainer, pl_module)
            return [results[name] for name in names]

        log_rank_zero_values(trainer, pl_module, [f"{stage}/{name}" for name in names], compute, prog_bar=True)
