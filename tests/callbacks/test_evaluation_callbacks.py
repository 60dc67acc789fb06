"""The callbacks built on the shared bases of ``lightning_ebm.callbacks.utils``: OOD detection and
calibration (scores collected over a split), the AIS log-likelihood (evaluated on rank 0) in
validation and test, and their choices, checked by the command line and for Python callers."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from helpers.boltzmann import TensorData
from jsonargparse import ArgumentParser
from torch import Tensor

from lightning_ebm.callbacks import AISLogLikelihood, AnomalyDetection, Calibration, ImageQuality, OODDetection
from lightning_ebm.errors import UserError
from lightning_ebm.evaluation import expected_calibration_error, ood_scores
from lightning_ebm.models import EnergyBasedModel


class GaussianClassifier(EnergyBasedModel):
    """Fixed class logits ``x @ W``; ``E(x) = ||x||^2 / 2`` (a standard Gaussian density, so the
    examples near the origin are the in-distribution ones)."""

    def __init__(self) -> None:
        super().__init__((2,))
        self.weight = torch.nn.Parameter(torch.tensor([[2.0, -1.0, 0.0], [0.5, 1.0, -3.0]]))

    def logits(self, x: Tensor) -> Tensor:
        return x @ self.weight

    def energy(self, x: Tensor) -> Tensor:
        return 0.5 * x.pow(2).sum(1) + 0 * self.weight.sum()

    def sample(self, num_samples: int) -> Tensor:
        return torch.randn(num_samples, 2)


def _trainer(tmp_path, callback: L.Callback) -> L.Trainer:  # noqa: ANN001
    """A trainer for ``validate`` and ``test`` (the hooks are those of a fit's validation epochs)."""
    return L.Trainer(
        max_epochs=1, default_root_dir=tmp_path, callbacks=[callback], logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip


def test_ood_detection_over_all_batches_in_validation_and_test(tmp_path) -> None:
    torch.manual_seed(0)
    inside, outside = torch.randn(120, 2) * 0.5, torch.randn(90, 2) * 0.5 + 5.0
    callback = OODDetection(TensorData(outside, batch_size=20), max_examples=1000)
    trainer = _trainer(tmp_path, callback)
    model, dm = GaussianClassifier(), TensorData(inside, batch_size=25)
    trainer.validate(model, dm, verbose=False)
    for score in ("log_px", "neg_grad_norm"):  # both separate the two sets perfectly
        assert callback.last[f"val/ood/{score}/auroc"] == pytest.approx(1.0)
        assert trainer.callback_metrics[f"val/ood/{score}/auroc"] == pytest.approx(1.0)
    # every in- and out-of-distribution example counts, not only one batch of them
    scores = {
        name: ood_scores(model.energy, model.logits, x, "max_prob") for name, x in (("in", inside), ("out", outside))
    }
    expected = float((scores["in"][:, None] > scores["out"][None]).double().mean())
    assert callback.last["val/ood/max_prob/auroc"] == pytest.approx(expected, abs=1e-6)
    trainer.test(model, dataloaders=torch.utils.data.DataLoader(inside, batch_size=25), verbose=False)
    assert set(callback.last) == {f"test/ood/{s}/auroc" for s in ("log_px", "max_prob", "neg_grad_norm")}
    assert callback.last["test/ood/max_prob/auroc"] == pytest.approx(expected, abs=1e-6)


def test_calibration_over_all_batches_in_validation_and_test(tmp_path) -> None:
    torch.manual_seed(0)
    x = torch.randn(150, 2)
    y = torch.randint(0, 3, (150,))
    callback = Calibration(num_bins=5)
    trainer = _trainer(tmp_path, callback)
    model = GaussianClassifier()
    trainer.validate(model, TensorData(x, batch_size=40, val_data=(x, y)), verbose=False)
    probabilities = model.logits(x).detach().softmax(1)
    accuracy = float((probabilities.argmax(1) == y).float().mean())
    ece = expected_calibration_error(probabilities, y, 5)
    assert callback.last == {
        "val/calibration/accuracy": pytest.approx(accuracy),
        "val/calibration/ece": pytest.approx(ece),
    }
    assert callback.last_path is not None and callback.last_path.is_file()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=40)
    trainer.test(model, dataloaders=loader, verbose=False)
    assert callback.last == {
        "test/calibration/accuracy": pytest.approx(accuracy),
        "test/calibration/ece": pytest.approx(ece),
    }


class PretrainingPhase(GaussianClassifier):
    likelihood_ready = False


@pytest.mark.parametrize("ready", [True, False])
def test_ais_callback_names_splits_and_schedules_per_stage(tmp_path, ready: bool) -> None:
    """Validation: ``val/...`` and ``train/log_likelihood`` of ``val_data`` with ``num_betas`` (not while a
    model has no likelihood yet); test: ``test/...`` of ``test_data`` with ``test_num_betas``."""
    calls = []
    callback = AISLogLikelihood(every_n_epochs=1, num_betas=7, test_num_betas=11)
    callback.evaluate = lambda trainer, pl_module, split, num_betas: (
        calls.append((split, num_betas)) or torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    )
    trainer = _trainer(tmp_path, callback)
    model = GaussianClassifier() if ready else PretrainingPhase()
    trainer.validate(model, TensorData(torch.randn(20, 2), batch_size=10), verbose=False)
    metrics = trainer.callback_metrics
    val = ["val/log_likelihood", "train/log_likelihood", "val/log_partition", "val/log_partition_interval"]
    val.append("val/ais_effective_sample_size")
    if ready:
        assert calls == [("val_data", 7)]
        assert [float(metrics[name]) for name in val] == [1.0, 2.0, 3.0, 4.0, 5.0]
    else:
        assert calls == [] and not set(val) & set(metrics)
    trainer.test(model, dataloaders=torch.utils.data.DataLoader(torch.randn(10, 2)), verbose=False)
    assert calls[-1] == ("test_data", 11)
    test = ["test/log_likelihood", "test/train_log_likelihood", "test/log_partition", "test/log_partition_interval"]
    test.append("test/ais_effective_sample_size")
    assert [float(trainer.callback_metrics[name]) for name in test] == [1.0, 2.0, 3.0, 4.0, 5.0]


@pytest.mark.parametrize(
    ("callback", "argument", "wrong", "choices"),
    [
        (AnomalyDetection, "scores", "[likelihood]", ["gradient_norm", "energy"]),
        (OODDetection, "scores", "[likelihood]", ["log_px", "max_prob", "neg_grad_norm"]),
        (ImageQuality, "reference", "imagenet", ["cifar10-train", "cifar10-test", "train", "val", "test"]),
    ],
)
def test_the_command_line_checks_and_lists_the_choices(callback, argument: str, wrong: str, choices) -> None:  # noqa: ANN001
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(callback, "callback", skip={"ood_data"})
    with pytest.raises(Exception, match="Literal") as info:
        parser.parse_args([f"--callback.{argument}", wrong])
    assert all(c in str(info.value) for c in choices)
    assert all(c in parser.format_help() for c in choices)


def test_python_callers_get_the_same_checks() -> None:
    outside = TensorData(torch.randn(10, 2), batch_size=5)
    with pytest.raises(ValueError, match="score must be one of 'log_px', 'max_prob', 'neg_grad_norm'; got 'energy'"):
        OODDetection(outside, scores=["log_px", "energy"])
    with pytest.raises(UserError, match="at least one score of log_px, max_prob, neg_grad_norm"):
        OODDetection(outside, scores=[])
    model = GaussianClassifier()
    with pytest.raises(ValueError, match="score must be one of 'log_px', 'max_prob', 'neg_grad_norm'; got 'energy'"):
        ood_scores(model.energy, model.logits, torch.randn(3, 2), "energy")
