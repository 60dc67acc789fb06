"""ImageQuality: FID and Inception Score with a stand-in feature extractor, the reference cache, the
missing-weights error, logging through a Trainer and under two-process DDP."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import urllib.error
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torchmetrics.image.fid
import torchmetrics.utilities.imports
from helpers.data import write_cifar10
from helpers.image_quality import RandomConvFeatures, ShiftedImages, build, random_inception_weights

from lightning_ebm.callbacks import ImageQuality
from lightning_ebm.callbacks.image_quality import INCEPTION_FILE, INCEPTION_URL, InceptionFeatures
from lightning_ebm.datamodules import CIFAR10DataModule
from lightning_ebm.errors import UserError

TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture
def cifar(tmp_path: Path) -> CIFAR10DataModule:
    write_cifar10(tmp_path / "data", per_batch=24)
    dm = CIFAR10DataModule(str(tmp_path / "data"), batch_size=8, val_size=60)
    dm.setup()
    return dm


def trainer_with(dm: L.LightningDataModule) -> SimpleNamespace:
    """What ImageQuality.evaluate reads of a trainer: its data module."""
    return SimpleNamespace(datamodule=dm)


def test_fid_is_zero_against_itself_and_grows_with_a_shift(cifar: CIFAR10DataModule, tmp_path: Path) -> None:
    trainer = trainer_with(cifar)
    callback = ImageQuality(
        num_samples=60, reference="val", feature_extractor=RandomConvFeatures(), cache_dir=str(tmp_path / "cache"),
        inception_score=False,
    )  # fmt: skip
    fids = [callback.evaluate(trainer, ShiftedImages(cifar.val_data, shift))["fid"] for shift in (0, 0.1, 0.3, 0.6)]
    assert abs(fids[0]) < 1e-6
    assert all(b > a for a, b in zip(fids, fids[1:])) and fids[1] > 1e-3, fids
    assert callback.reference_computations == 1  # one reference, computed once for the four evaluations


class Classifier(torch.nn.Module):
    """Stand-in classifier: the class of a constant image is its value / 25; logits ``peak * one_hot``."""

    def __init__(self, peak: float) -> None:
        super().__init__()
        self.peak = peak

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        classes = (images.float().mean((1, 2, 3)) / 25).round().long()
        logits = self.peak * torch.nn.functional.one_hot(classes, 10).float()
        return logits, logits


class ConstantImages(L.LightningModule):
    def sample(self, n: int) -> torch.Tensor:
        return (torch.arange(n) % 10 * 25.0).view(n, 1, 1, 1).expand(n, 3, 8, 8)


@pytest.mark.parametrize("peak", [0.0, 2.0, 30.0])
def test_inception_score_matches_the_closed_form(peak: float, tmp_path: Path) -> None:
    callback = ImageQuality(
        num_samples=200, fid=False, reference="val", feature_extractor=Classifier(peak), value_range=(0.0, 255.0),
        splits=1, batch_size=50, cache_dir=None,
    )  # fmt: skip
    score = callback.evaluate(None, ConstantImages())["inception_score"]
    # balanced classes: p(y) uniform, so IS = exp(log 10 - H(p(y|x))) with p(y|x) = softmax(peak * one_hot)
    p = torch.softmax(torch.tensor([peak] + [0.0] * 9, dtype=torch.float64), 0)
    expected = math.exp(math.log(10) + float((p * p.log()).sum()))
    assert score == pytest.approx(expected, rel=1e-5)
    if peak == 0.0:
        assert score == pytest.approx(1.0)
    if peak == 30.0:
        assert score == pytest.approx(10.0, rel=1e-6)


def test_reference_statistics_are_cached_per_data_set(cifar: CIFAR10DataModule, tmp_path: Path) -> None:
    trainer = trainer_with(cifar)
    cache = tmp_path / "cache"

    def run(**kwargs) -> tuple[ImageQuality, RandomConvFeatures, float]:
        features = RandomConvFeatures()
        kwargs = {"reference": "val", "num_samples": 30, "batch_size": 16, "splits": 2, **kwargs}
        callback = ImageQuality(feature_extractor=features, cache_dir=str(cache), **kwargs)
        return callback, features, callback.evaluate(trainer, ShiftedImages(cifar.train_data, 0.1))["fid"]

    first, features, fid = run()
    assert first.reference_computations == 1 and features.images == 30 + 60
    assert len(list(cache.iterdir())) == 1
    second, features, again = run()  # a new callback (a new run) finds the file
    assert second.reference_computations == 0 and features.images == 30 and again == fid
    third, _, _ = run(num_reference=50)  # fewer reference images: another key
    assert third.reference_computations == 1
    fourth, _, _ = run(reference="train")
    assert fourth.reference_computations == 1
    other_net = ImageQuality(
        reference="val", num_samples=30, feature_extractor=RandomConvFeatures(seed=1), cache_dir=str(cache)
    )
    other_net.evaluate(trainer, ShiftedImages(cifar.train_data, 0.1))
    assert other_net.reference_computations == 1  # another feature extractor: another key
    names = sorted(p.name.split("-")[0] for p in cache.iterdir())
    assert names == ["train", "val", "val", "val"]
    # CIFAR-10's own training statistics, read from the files (all 120 fake training images here)
    cifar10 = ImageQuality(reference="cifar10-train", num_samples=30, feature_extractor=features, cache_dir=str(cache))
    cifar10.evaluate(trainer, ShiftedImages(cifar.train_data, 0.1))
    assert cifar10.reference_computations == 1 and int(cifar10._reference["num_samples"]) == 120


def test_logged_through_a_trainer(cifar: CIFAR10DataModule, tmp_path: Path) -> None:
    callback = ImageQuality(
        num_samples=40, every_n_epochs=1, reference="val", feature_extractor=RandomConvFeatures(),
        cache_dir=str(tmp_path / "cache"), batch_size=16, splits=2,
    )  # fmt: skip
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
    )  # fmt: skip
    model = ShiftedImages(cifar.val_data, shift=0.2)
    trainer.fit(model, datamodule=cifar)
    metrics = trainer.callback_metrics
    assert float(metrics["val/fid"]) > 0 and float(metrics["val/inception_score"]) >= 1.0
    assert "val/fid" in trainer.progress_bar_metrics


def test_missing_inception_weights_name_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    callback = ImageQuality(download_weights=False)
    with pytest.raises(UserError) as info:
        callback.setup(None, None, "fit")
    message = str(info.value)
    assert str(tmp_path / "hub" / "checkpoints" / INCEPTION_FILE) in message and INCEPTION_URL in message
    assert "inception_weights" in message and "\n" not in message
    with pytest.raises(UserError, match=f"no file {tmp_path / 'elsewhere.pth'}"):
        ImageQuality(inception_weights=str(tmp_path / "elsewhere.pth")).setup(None, None, "fit")


def test_corrupt_inception_weights_are_reported(tmp_path: Path) -> None:
    pytest.importorskip("torch_fidelity")
    weights = tmp_path / INCEPTION_FILE
    weights.write_bytes(b"this is not a checkpoint")
    with pytest.raises(UserError, match="corrupt or not torch-fidelity's"):
        InceptionFeatures(str(weights))


class FidelityStandIn(torch.nn.Linear):
    """Loads its weights file as torch-fidelity's Inception does (``torch.load`` + ``load_state_dict``)."""

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str, antialias: bool):
        super().__init__(2, 2)
        self.load_state_dict(torch.load(feature_extractor_weights_path, weights_only=False))


def test_unreadable_inception_weights_are_reported_and_other_errors_surface(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A damaged or foreign weights file is a UserError naming the fix; a programming error (here an
    Inception class that no longer takes the arguments given) is not disguised as one."""
    monkeypatch.setattr(torchmetrics.utilities.imports, "_TORCH_FIDELITY_AVAILABLE", True)
    monkeypatch.setattr(torchmetrics.image.fid, "NoTrainInceptionV3", FidelityStandIn)
    good = tmp_path / "good.pth"
    torch.save(torch.nn.Linear(2, 2).state_dict(), good)
    assert InceptionFeatures(str(good)).identity.endswith("antialias=False")
    torch.save(torch.nn.Linear(3, 2).state_dict(), foreign := tmp_path / "foreign.pth")
    (garbage := tmp_path / "garbage.pth").write_bytes(b"<html>404 Not Found</html>")
    (empty := tmp_path / "empty.pth").write_bytes(b"")
    (truncated := tmp_path / "truncated.pth").write_bytes(good.read_bytes()[:300])
    for path in (foreign, garbage, empty, truncated):
        with pytest.raises(UserError, match=f"corrupt or not torch-fidelity's {INCEPTION_FILE}.*{INCEPTION_URL}"):
            InceptionFeatures(str(path))

    def outdated(name: str, features_list: list[str], feature_extractor_weights_path: str) -> None:
        raise AssertionError("not reached")

    monkeypatch.setattr(torchmetrics.image.fid, "NoTrainInceptionV3", outdated)
    with pytest.raises(TypeError, match="antialias"):
        InceptionFeatures(str(good))


def test_a_failed_download_is_reported_and_other_errors_surface(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    timeout = socket.getdefaulttimeout()

    def offline(url: str, dst: str, progress: bool = True) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError, match="downloading them failed .*name resolution.*without internet, download"):
        ImageQuality().setup(None, None, "fit")
    assert socket.getdefaulttimeout() == timeout

    def buggy(url: str, dst: str, progress: bool = True) -> None:
        raise KeyError("a bug, not a network failure")

    monkeypatch.setattr(torch.hub, "download_url_to_file", buggy)
    with pytest.raises(KeyError, match="a bug"):
        ImageQuality().setup(None, None, "fit")
    assert socket.getdefaulttimeout() == timeout


def test_a_damaged_reference_cache_is_recomputed_and_other_errors_surface(
    cifar: CIFAR10DataModule, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer, cache = trainer_with(cifar), tmp_path / "cache"

    def reference() -> ImageQuality:
        callback = ImageQuality(reference="val", feature_extractor=RandomConvFeatures(), cache_dir=str(cache))
        callback.reference_statistics(trainer)
        return callback

    assert reference().reference_computations == 1
    (path,) = cache.iterdir()
    intact = path.read_bytes()
    torch.save(torch.zeros(3), foreign := tmp_path / "foreign.pt")
    for damaged in (intact[: len(intact) // 2], b"", b"not a torch file", foreign.read_bytes()):
        path.write_bytes(damaged)
        assert reference().reference_computations == 1  # recomputed ...
        assert reference().reference_computations == 0  # ... and the file rewritten

    def buggy(*args, **kwargs) -> None:
        raise AttributeError("a bug in reading the cache")

    monkeypatch.setattr(torch, "load", buggy)
    with pytest.raises(AttributeError, match="a bug in reading the cache"):
        reference()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="reference must be one of 'cifar10-train', .*'test'; got 'imagenet'"):
        ImageQuality(reference="imagenet")
    with pytest.raises(UserError, match="nothing to compute"):
        ImageQuality(fid=False, inception_score=False)


def test_two_process_ddp_logs_rank_zeros_result_on_both_ranks(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "data", per_batch=24)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, str(TESTS / "helpers" / "image_quality.py"), str(tmp_path / "data"), str(tmp_path / "out")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / "out" / f"metrics{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["_world_size"] == 2 and ranks[0] == ranks[1]
    # the same as one process computes (rank 0 alone samples, with the callback's own seeded stream)
    dm, model, callback = build(str(tmp_path / "data"), str(tmp_path / "single"))
    expected = callback.evaluate(trainer_with(dm), model)
    assert ranks[0]["val/fid"] == pytest.approx(expected["fid"], rel=1e-5)
    assert ranks[0]["val/inception_score"] == pytest.approx(expected["inception_score"], rel=1e-5)


def test_the_inception_network_runs_with_a_weights_file(cifar: CIFAR10DataModule, tmp_path: Path) -> None:
    """torchmetrics' Inception (random weights in torch-fidelity's file format): 2,048 features and 1,008
    logits per image, the original resize (no antialiasing) by default, and a finite FID and IS."""
    weights = random_inception_weights(tmp_path)
    callback = ImageQuality(
        num_samples=4, reference="val", num_reference=4, inception_weights=str(weights), cache_dir=None,
        batch_size=4, splits=1,
    )  # fmt: skip
    callback.setup(None, None, "fit")
    features, logits = callback.features(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert features.shape == (2, 2048) and logits.shape == (2, 1008)
    assert callback.feature_extractor.net.use_antialias is False
    results = callback.evaluate(trainer_with(cifar), ShiftedImages(cifar.val_data, 0.3))
    assert math.isfinite(results["fid"]) and results["inception_score"] >= 1.0
