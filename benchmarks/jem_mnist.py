"""JEM vs the same network trained as a plain classifier, on the real MNIST test split.

The official 10,000 test images are carved by ``MNISTDataModule(source="test-split")`` into 8,000
training and 2,000 held-out images (seeded). Both models use the same small conv net
(``ConvClassifier``), seed, optimiser and epochs; the plain classifier is JEM with the generative
weight 0 (no SGLD). Printed and written as JSON:

* held-out accuracy, ECE (20 equal-width bins), mean confidence and the reliability bins of both
  (``--reliability X.png`` also draws the diagrams);
* mean energy ``E(x) = -logsumexp f(x)`` of held-out data, of samples drawn from the replay buffer,
  of fresh chains started from the restart distribution (uniform noise or the class Gaussians), and
  of uniform noise itself;
* conditional samples ``sample(n, y=c)`` for every class: the share classified as ``c`` by JEM
  itself and by the independently trained plain classifier;
* OOD AUROC of the scores log p(x), max p(y|x) and -||grad_x log p(x)|| (held-out images as
  positives) against upside-down, inverted (white-background) held-out images and uniform noise;
* JEM's ECE minus the plain net's with a paired bootstrap over the evaluation images (95% interval,
  share of resamples in which JEM's is the lower);
* training time, training examples per second, SGLD samples per second.

The defaults are the recipe of ``jem_mnist.yaml`` on this split: 100 epochs, Adam 1e-3 with the
paper's x0.3 decay at 80% and 90% of training, the paper's SGLD and buffer projected onto [-1, 1],
chains restarted from per-class Gaussians of the training images (JEM++; ``--reinit-from uniform``
is the paper's U(-1, 1)), no energy regulariser (docs/jem.md; about 60 minutes on one CPU
thread). ``--progress N`` prints the energies every N steps and held-out
metrics after each epoch. ``--val-size N`` trains on all but N of the 8,000 training images and
reports on those N instead of the held-out images (``"evaluated_on"`` in the JSON says which).
``--save F`` keeps both trained models and JEM's buffer; ``--load F`` evaluates them again without
training (give the settings they were trained with).

    python benchmarks/jem_mnist.py --data-dir ../shared/data/mnist --seed 0 \
        --grid benchmarks/results/jem_mnist_gaussian_100epochs/seed0_conditional_samples.png \
        --reliability benchmarks/results/jem_mnist_gaussian_100epochs/seed0_reliability.png \
        --out benchmarks/results/jem_mnist_gaussian_100epochs/seed0.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_ebm.callbacks import DivergenceGuard  # noqa: E402
from lightning_ebm.datamodules import MNISTDataModule  # noqa: E402
from lightning_ebm.evaluation import (  # noqa: E402
    OOD_SCORES,
    calibration_bins,
    expected_calibration_error,
    ood_auroc,
    ood_scores,
    reliability_diagram,
)
from lightning_ebm.models import JEM  # noqa: E402
from lightning_ebm.nn import ConvClassifier  # noqa: E402
from lightning_ebm.optim import spec  # noqa: E402

TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def mnist_module(source_dir: Path, work_dir: Path, batch_size: int, val_size: int = 0) -> MNISTDataModule:
    raw = work_dir / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in TEST_FILES:
        if not (source_dir / name).is_file():
            raise SystemExit(f"{source_dir / name} is missing: point --data-dir at the MNIST test files")
        shutil.copyfile(source_dir / name, raw / name)
    dm = MNISTDataModule(
        data_dir=str(work_dir), source="test-split", value_range="symmetric", val_size=val_size, test_size=2000,
        batch_size=batch_size,
    )  # fmt: skip
    dm.setup("fit")
    return dm


def evaluation_split(dm: MNISTDataModule, args: argparse.Namespace) -> tuple[str, torch.Tensor, torch.Tensor]:
    """The name and the images the results report on: the ``--val-size`` validation images when there
    are any (for choosing settings without looking at the 2,000 held-out ones), else the held-out ones."""
    return ("validation", dm.val_data, dm.val_labels) if args.val_size else ("held-out", dm.test_data, dm.test_labels)


def build(args: argparse.Namespace, px_weight: float, pxy_weight: float = 0.0) -> JEM:
    torch.manual_seed(args.seed)  # both models start from the same weights
    net = ConvClassifier(channels=args.channels, hidden=args.hidden, activation="leaky_relu")
    return JEM(
        net, num_classes=10, data_shape=[1, 28, 28], px_weight=px_weight, pxy_weight=pxy_weight,
        optimizer=spec("torch.optim.Adam", lr=args.lr, betas=[0.9, 0.999], weight_decay=0.0),
        lr_schedule=spec("lightning_ebm.optim.Schedule", warmup_steps=args.warmup, milestones=args.decay_epochs,
                         gamma=args.decay_rate),
        sgld_steps=args.sgld_steps,
        sgld_step_size=args.sgld_step_size, sgld_noise=args.sgld_noise, buffer_size=args.buffer_size,
        reinit_prob=args.reinit_prob, energy_l2=args.energy_l2, sgld_clamp=args.sgld_clamp,
        reinit_from=args.reinit_from,
    )  # fmt: skip


class Progress(L.Callback):
    """Prints the step's energies and how far the buffer has left the data's box every ``every`` steps,
    and after each epoch accuracy, ECE, mean confidence and mean energy on the images the results
    report on (held-out, or validation with ``--val-size``) and on as many training images (a gap
    between the two is the generative term fitting the training set; draws no random numbers)."""

    def __init__(
        self, name: str, x: torch.Tensor, y: torch.Tensor, x_train: torch.Tensor, y_train: torch.Tensor, every: int
    ) -> None:
        self.name, self.x, self.y, self.every = name, x, y, every
        self.x_train, self.y_train = x_train[: len(x)], y_train[: len(x)]

    def on_train_batch_end(self, trainer: L.Trainer, model: JEM, *_: object) -> None:
        if trainer.global_step % self.every == 0:
            line = {k: round(float(v), 2) for k, v in model.guard_metrics.items()}
            if model._buffer is not None:
                buffer = model.replay_buffer.samples
                line["buffer_max_abs"] = round(float(buffer.abs().max()), 2)
                line["buffer_outside_box"] = round(float((buffer.abs() > 1.05).float().mean()), 3)
            print(f"step {trainer.global_step} {line}", flush=True)

    def on_train_epoch_end(self, trainer: L.Trainer, model: JEM) -> None:
        model.eval()
        for name, x, y in ((self.name, self.x, self.y), ("training", self.x_train, self.y_train)):
            probabilities = model.log_class_probabilities(x).exp()
            metrics = {k: round(v, 4) for k, v in evaluate(probabilities, y).items() if k != "reliability"}
            with torch.no_grad():
                metrics["energy"] = round(float(torch.cat([model.energy(b) for b in x.split(500)]).mean()), 2)
            print(f"epoch {trainer.current_epoch} {name} {metrics}", flush=True)
        model.train()


def fit(model: JEM, dm: MNISTDataModule, args: argparse.Namespace, guard: DivergenceGuard | None) -> float:
    L.seed_everything(args.seed, verbose=False)
    callbacks = [guard] if guard else []
    if args.progress:
        callbacks.append(Progress(*evaluation_split(dm, args), dm.train_data, dm.train_labels, args.progress))
    trainer = L.Trainer(
        max_epochs=args.epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", callbacks=callbacks,
        limit_val_batches=0,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    return time.perf_counter() - start


def ece_difference(p_jem: torch.Tensor, p_plain: torch.Tensor, y: torch.Tensor, resamples: int = 2000,
                   seed: int = 0) -> dict[str, object]:  # fmt: skip
    """JEM's ECE minus the plain net's on the same images, with a paired bootstrap over the images:
    both ECEs on each resample of the evaluation set, the 2.5% and 97.5% quantiles of the difference,
    and the share of resamples in which JEM's ECE is the lower (how far the comparison is chance)."""
    generator = torch.Generator().manual_seed(seed)
    gap = lambda i: expected_calibration_error(p_jem[i], y[i], 20) - expected_calibration_error(p_plain[i], y[i], 20)  # noqa: E731
    differences = torch.tensor([gap(torch.randint(len(y), (len(y),), generator=generator)) for _ in range(resamples)])
    low, high = torch.quantile(differences, torch.tensor([0.025, 0.975])).tolist()
    observed = gap(torch.arange(len(y)))
    return {"jem_minus_plain": observed, "bootstrap_95": [low, high], "resamples": resamples,
            "share_jem_lower": float((differences < 0).float().mean())}  # fmt: skip


#: Out-of-distribution sets made from the held-out images (no other image data set is on this machine).
OOD_SETS = {
    "vertical_flip": lambda x, g: x.flip(-2),  # upside-down digits (0, 1 and 8 stay nearly in-distribution)
    "inverted": lambda x, g: -x,  # black digits on white: the background on the data range's other face
    "uniform_noise": lambda x, g: torch.rand(x.shape, generator=g) * 2 - 1,
}


def ood_table(model: JEM, x: torch.Tensor, seed: int) -> dict[str, dict[str, float]]:
    """AUROC (held-out images as positives) of each OOD score against each set of :data:`OOD_SETS`."""
    model.eval()
    score = lambda v, s: torch.cat([ood_scores(model.energy, model.logits, b, s) for b in v.split(500)])  # noqa: E731
    inside = {s: score(x, s) for s in OOD_SCORES}
    generator = torch.Generator().manual_seed(seed)
    outside = {name: make(x, generator) for name, make in OOD_SETS.items()}
    return {name: {s: ood_auroc(inside[s], score(v, s)) for s in OOD_SCORES} for name, v in outside.items()}


def evaluate(probabilities: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Accuracy, ECE, mean confidence and the occupied reliability bins of class probabilities."""
    confidence, prediction = probabilities.max(1)
    bins = calibration_bins(probabilities, y, num_bins=20)
    occupied = bins["count"] > 0
    return {
        "accuracy": float((prediction == y).float().mean()),
        "ece": expected_calibration_error(probabilities, y, num_bins=20),
        "mean_confidence": float(confidence.mean()),  # above the accuracy: over-confident; below: under-
        "reliability": {  # the occupied bins of the reliability diagram
            "lower_edge": bins["edges"][:-1][occupied].tolist(),
            "count": bins["count"][occupied].int().tolist(),
            "accuracy": [round(v, 4) for v in bins["accuracy"][occupied].tolist()],
            "confidence": [round(v, 4) for v in bins["confidence"][occupied].tolist()],
        },
    }


def run(args: argparse.Namespace) -> dict[str, object]:
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        dm = mnist_module(Path(args.data_dir), Path(tmp), args.batch_size, args.val_size)
        split, x_test, y_test = evaluation_split(dm, args)
        n_train = dm.train_data.shape[0]

        jem, plain = build(args, args.px_weight, args.pxy_weight), build(args, px_weight=0.0)
        guard = DivergenceGuard(max_energy=args.guard_max_energy, lr_factor=args.guard_lr_factor)
        if args.load:  # evaluate the models a --save run trained
            state = torch.load(args.load)
            jem.load_state_dict(state["jem"])
            jem.load_per_rank_state({"replay_buffer": state["buffer"]})
            plain.load_state_dict(state["plain"])
            times = {}
        else:
            times = {"jem": fit(jem, dm, args, guard=guard), "plain": fit(plain, dm, args, guard=None)}

    results: dict[str, object] = {"settings": vars(args), "train_size": n_train, "held_out_size": int(y_test.numel()),
                                  "evaluated_on": split}  # fmt: skip
    if times:
        results["guard"] = {"recoveries": guard.recoveries, "events": guard.events}
    models = {"jem": jem.eval(), "plain": plain.eval()}
    probabilities = {name: model.log_class_probabilities(x_test).exp() for name, model in models.items()}
    for name in models:
        results[name] = evaluate(probabilities[name], y_test)
        if times:
            results[name].update(train_time_s=times[name], train_examples_per_s=args.epochs * n_train / times[name])
    results["ece_difference"] = ece_difference(probabilities["jem"], probabilities["plain"], y_test)

    torch.manual_seed(args.seed)
    n = args.num_samples
    with torch.no_grad():
        energy = lambda v: float(torch.cat([jem.energy(b) for b in v.split(500)]).mean())  # noqa: E731
        noise = torch.rand(n, 1, 28, 28) * 2 - 1
        start = time.perf_counter()
        buffer_samples = jem.sample(n)
        sampling_time = time.perf_counter() - start
        fresh = jem.sample(n, from_buffer=False, steps=args.fresh_steps)
        labels = torch.arange(10).repeat_interleave(args.per_class)
        conditional = jem.sample(labels.numel(), y=labels, steps=args.cond_steps)
        results["energy"] = {
            "held_out_data": energy(x_test),
            "buffer_samples": energy(buffer_samples),
            f"fresh_chains_{args.fresh_steps}_steps": energy(fresh),
            "uniform_noise": energy(noise),
        }
        results["sgld_samples_per_s"] = n / sampling_time
        results["conditional"] = {
            "steps": args.cond_steps,
            "classified_as_requested_by_jem": float((jem.logits(conditional).argmax(1) == labels).float().mean()),
            "classified_as_requested_by_plain": float((plain.logits(conditional).argmax(1) == labels).float().mean()),
        }
        if args.grid:
            from torchvision.utils import save_image

            save_image((conditional + 1) / 2, args.grid, nrow=args.per_class)
    if args.save:
        state = {"jem": jem.state_dict(), "buffer": jem.replay_buffer.samples, "plain": plain.state_dict()}
        torch.save(state, args.save)
    results["ood_auroc"] = {name: ood_table(model, x_test, args.seed) for name, model in models.items()}
    if args.reliability:
        for name, p in probabilities.items():
            figure = reliability_diagram(calibration_bins(p, y_test, 20), f"{name}, held-out MNIST")
            figure.savefig(args.reliability.replace(".png", f"_{name}.png"), dpi=80, bbox_inches="tight")
    return results


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("LIGHTNING_EBM_MNIST", "../shared/data/mnist"))
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--decay-epochs", type=int, nargs="*", default=[80, 90])
    parser.add_argument("--decay-rate", type=float, default=0.3)
    parser.add_argument("--px-weight", type=float, default=1.0, help="weight of the p(x) term (JEM: 1)")
    parser.add_argument("--pxy-weight", type=float, default=0.0, help="weight of the class-conditional p(x|y) term")
    parser.add_argument("--sgld-steps", type=int, default=20)
    parser.add_argument("--sgld-step-size", type=float, default=1.0)
    parser.add_argument("--sgld-noise", type=float, default=0.01)
    parser.add_argument("--reinit-prob", type=float, default=0.05)
    parser.add_argument("--reinit-from", choices=["uniform", "class_gaussian"], default="class_gaussian",
                        help="chains restart from U(-1, 1) (JEM) or per-class data Gaussians (JEM++)")  # fmt: skip
    parser.add_argument("--sgld-clamp", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--energy-l2", type=float, default=0.0)
    parser.add_argument("--guard-max-energy", type=float, default=1e3)
    parser.add_argument("--guard-lr-factor", type=float, default=0.5)
    parser.add_argument("--buffer-size", type=int, default=10_000)
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--fresh-steps", type=int, default=100)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--cond-steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-size", type=int, default=0,
                        help="hold out N training images and report on them instead of the held-out split")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--grid", default="", help="PNG of the conditional samples (one row per class)")
    parser.add_argument("--reliability", default="", help="reliability diagrams: X.png gives X_jem.png, X_plain.png")
    parser.add_argument("--progress", type=int, default=0, help="print energies every N steps and held-out metrics")
    parser.add_argument("--out", default="", help="write the results as JSON here")
    parser.add_argument("--save", default="", help="save both trained models here (state dicts, with JEM's buffer)")
    parser.add_argument("--load", default="", help="evaluate the models of a --save file instead of training")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    outcome = run(arguments)
    text = json.dumps(outcome, indent=2)
    print(text)
    if arguments.out:
        Path(arguments.out).write_text(text + "\n")
