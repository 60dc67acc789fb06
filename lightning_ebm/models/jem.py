"""Joint Energy-based Model (JEM): a classifier read as an energy-based model.

W. Grathwohl, K.-C. Wang, J.-H. Jacobsen, D. Duvenaud, M. Norouzi and K. Swersky, "Your Classifier is
Secretly an Energy Based Model and You Should Treat it Like One", ICLR 2020. Notation and equation
numbers from J. M. Tomczak, "Deep Generative Modeling", Sec. 6.2-6.4 (``NN_theta = f``).

A classifier ``f: x -> R^K`` (logits) defines the joint ``p(x, y) = exp(f(x)[y]) / Z``, i.e. the
energy ``E(x, y) = -f(x)[y]`` (6.5-6.7). Its marginal is ``p(x) = exp(LogSumExp_y f(x)[y]) / Z``, so

    E(x) = -LogSumExp_y f(x)[y]                                             (6.10-6.13)

and the conditional ``p(y | x) = softmax(f(x))[y]`` is the usual classifier (6.14-6.16): ``Z`` cancels.
Training maximises ``log p(x, y) = log p(y | x) + log p(x)`` (6.17-6.19); the gradient of ``log p(x)``
is ``-grad E(x_data) + E_{x' ~ p}[grad E(x')]`` (6.20-6.23), the expectation estimated by samples of
stochastic-gradient Langevin dynamics (SGLD)

    x_{t+1} = x_t + alpha * grad_x LogSumExp_y f(x_t)[y] + sigma * eps,    eps ~ N(0, I)   (6.24)

with the step ``alpha`` (1) and the noise ``sigma`` (0.01) decoupled: a biased but fast sampler. The
loss minimised here (6.29-6.31, with weights) is

    L = w_clf * CE(f(x), y) + w_px * (mean E(x_data) - mean E(x_sgld))
        [+ w_pxy * (mean E(x_data, y) - mean E(x_sgld_y, y))]

where the optional third term is the class-conditional ``log p(x | y)`` with chains sampling
``E(x, y)`` from class-labelled buffer slots, and the optional last one the energy-magnitude
regulariser of Du & Mordatch (2019) (not in JEM; off by default). The chains start from a replay buffer
(:class:`~lightning_ebm.samplers.ReplayBuffer`: 10,000 states, each draw restarted from ``U(-1, 1)``
with probability 0.05, final states written back), run with the classifier in evaluation mode, and
the data gets ``N(0, 0.03^2)`` noise. Adam with a linear warm-up and a step decay, as in the paper.
Optionally (``sgld_clamp``, not in the paper's code) every SGLD step and the noised data are projected
onto the data's box ``init_range``: where the data sit on the box's faces (MNIST's background is
exactly -1) unprojected chains walk off it into regions the data never constrain, and diverge.
Optionally (``reinit_from="class_gaussian"``, JEM++: X. Yang and S. Ji, ICCV 2021) chains start and
restart from per-class Gaussians of the training data instead of uniform noise, so that restarted
chains begin near the data and keep up with the model (docs/jem.md, the MNIST runs).

The buffer is this process's state (:meth:`per_rank_state`): it is in every checkpoint and a resumed
run continues with it. The original training diverges now and then and was restarted by hand; here
:class:`~lightning_ebm.callbacks.DivergenceGuard` does that, reading :attr:`JEM.guard_metrics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_ebm.errors import UserError
from lightning_ebm.models.base import EnergyBasedModel
from lightning_ebm.optim import LRSchedulerCallable, OptimizerCallable, build_optimizer, spec
from lightning_ebm.samplers.langevin import langevin_dynamics
from lightning_ebm.samplers.replay import ReplayBuffer
from lightning_ebm.utils import check_bounds, eval_mode

#: The paper's optimiser and schedule: Adam at 1e-4, a linear warm-up over 1,000 iterations, the rate
#: multiplied by 0.3 at epochs 160 and 180.
ADAM = spec("torch.optim.Adam", lr=1e-4, betas=[0.9, 0.999], weight_decay=0.0)
WARMUP_STEP_DECAY = spec("lightning_ebm.optim.Schedule", warmup_steps=1000, milestones=[160, 180], gamma=0.3)


class JEM(EnergyBasedModel):
    """Grathwohl et al. (2020): classifier ``f`` with ``E(x) = -logsumexp_y f(x)[y]``, trained by SGLD.

    Args:
        classifier: ``f``, mapping a batch ``(B, *data_shape)`` to logits ``(B, num_classes)``.
        num_classes: number of classes ``K``.
        data_shape: shape of one example.
        clf_weight: weight of the cross-entropy ``-log p(y|x)``.
        px_weight: weight of the generative term ``mean E(x_data) - mean E(x_sgld)`` (0: a plain classifier).
        pxy_weight: weight of the class-conditional term ``mean E(x, y) - mean E(x_sgld_y, y)``.
        optimizer: the classifier's optimiser (the paper: Adam, 1e-4).
        lr_schedule: its schedule (the paper: linear warm-up over 1,000 iterations, x0.3 at epochs 160
            and 180; :class:`~lightning_ebm.optim.Schedule`).
        sgld_steps: SGLD steps per training step (20).
        sgld_step_size: ``alpha`` of (6.24) (1).
        sgld_noise: ``sigma`` of (6.24) (0.01).
        buffer_size: states in the replay buffer (10,000); a multiple of ``num_classes``.
        reinit_prob: probability that a chain restarts from noise (0.05).
        init_range: ``(low, high)`` of the uniform noise the chains start from (data range, [-1, 1]).
        data_noise: standard deviation of the Gaussian noise added to training data (0.03).
        sample_steps: SGLD steps of :meth:`sample` (default ``sgld_steps``).
        energy_l2: weight ``lambda`` of the regulariser ``lambda * mean(E(x_data)^2 + E(x_sgld)^2)``
            of Du & Mordatch (2019), which keeps the energies from running away; 0 (JEM) leaves it out.
        sgld_clamp: project every SGLD step onto the data range ``init_range`` (Du & Mordatch 2019),
            so that ``p(x)`` lives on the data's box; off in JEM, needed where the data sit on the
            box's faces (MNIST's background is exactly the lower end: see docs/jem.md).
        reinit_from: where chains start and restart: ``"uniform"`` (JEM: ``U(init_range)``) or
            ``"class_gaussian"`` (JEM++, Yang & Ji 2021: a class drawn with the training set's class
            frequencies, then ``N(mean_y, diag(std_y^2))`` of that class's training examples, clamped
            to ``init_range``; fitted in one pass over the training data at the start of the first
            fit and kept in the checkpoint). Class-conditional chains restart from their own class.
        fused_step: run each training step as one captured CUDA graph on a GPU (:mod:`lightning_ebm.fused`);
            the eager step otherwise.
    """

    def __init__(
        self,
        classifier: nn.Module,
        num_classes: int = 10,
        data_shape: Sequence[int] = (3, 32, 32),
        clf_weight: float = 1.0,
        px_weight: float = 1.0,
        pxy_weight: float = 0.0,
        optimizer: OptimizerCallable = ADAM,
        lr_schedule: LRSchedulerCallable | None = WARMUP_STEP_DECAY,
        sgld_steps: int = 20,
        sgld_step_size: float = 1.0,
        sgld_noise: float = 0.01,
        buffer_size: int = 10_000,
        reinit_prob: float = 0.05,
        init_range: Sequence[float] = (-1.0, 1.0),
        data_noise: float = 0.03,
        sample_steps: int | None = None,
        energy_l2: float = 0.0,
        sgld_clamp: bool = False,
        reinit_from: Literal["uniform", "class_gaussian"] = "uniform",
        fused_step: bool = False,
    ) -> None:
        super().__init__(data_shape, fused_step)
        self.save_hyperparameters()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        check_bounds(
            positive=dict(buffer_size=buffer_size, sgld_step_size=sgld_step_size),
            non_negative=dict(clf_weight=clf_weight, px_weight=px_weight, pxy_weight=pxy_weight, energy_l2=energy_l2,
                              sgld_steps=sgld_steps, sgld_noise=sgld_noise, data_noise=data_noise,
                              sample_steps=sample_steps),
            probability=dict(reinit_prob=reinit_prob),
        )  # fmt: skip
        if buffer_size % num_classes:
            raise ValueError(f"buffer_size ({buffer_size}) must be a multiple of num_classes ({num_classes})")
        if sgld_steps < 1 and (px_weight > 0 or pxy_weight > 0):
            raise ValueError(f"sgld_steps must be at least 1 when a generative term is trained, got {sgld_steps}")
        if len(init_range) != 2 or not init_range[0] < init_range[1]:
            raise ValueError(f"init_range must be (low, high) with low < high, got {list(init_range)}")
        self.automatic_optimization = False
        self.classifier = classifier
        with torch.no_grad(), eval_mode(classifier):  # no random numbers drawn: the run is unchanged
            try:
                width = classifier(torch.zeros(2, *self.data_shape)).shape[1:]
            except RuntimeError as exc:
                reason = str(exc).strip().splitlines()[0][:200]
                raise ValueError(f"the classifier does not take examples shaped data_shape {list(self.data_shape)} "
                                 f"({reason}): make its input fit") from None  # fmt: skip
        if tuple(width) != (num_classes,):
            raise ValueError(f"the classifier gives {list(width)} logits per example, not num_classes ({num_classes})")
        if reinit_from == "class_gaussian":  # the restart distribution, in the checkpoint with the weights
            self.register_buffer("restart_mean", torch.zeros(num_classes, *self.data_shape))
            self.register_buffer("restart_std", torch.zeros(num_classes, *self.data_shape))
            self.register_buffer("restart_class_prob", torch.zeros(num_classes))
        self.num_classes = num_classes
        self.per_rank_granule = num_classes  # slot i of the buffer is labelled i % num_classes
        self._restart_fitted = False
        self._buffer: ReplayBuffer | None = None
        #: The last training step's loss and energies, read by :class:`~lightning_ebm.callbacks.DivergenceGuard`.
        self.guard_metrics: dict[str, Tensor] = {}

    # ------------------------------------------------------------------ the model: f, E(x), E(x, y), p(y|x)
    def logits(self, x: Tensor) -> Tensor:
        """``f(x)``, shape ``(batch, num_classes)``; ``softmax(f(x))`` is ``p(y|x)`` (6.16)."""
        return self.classifier(x)

    def energy(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """``E(x) = -logsumexp_y f(x)[y]`` (6.13), or with ``y`` the joint ``E(x, y) = -f(x)[y]`` (6.5)."""
        return self.energy_from_logits(self.logits(x), y)

    @staticmethod
    def energy_from_logits(logits: Tensor, y: Tensor | None = None) -> Tensor:
        if y is None:
            return -torch.logsumexp(logits, dim=1)
        return -logits.gather(1, y.long().view(-1, 1)).squeeze(1)

    # ------------------------------------------------------------------ sampling: SGLD from a replay buffer
    @property
    def replay_buffer(self) -> ReplayBuffer:
        """This process's buffer of chain states (created on first use, on the model's device)."""
        if self._buffer is None:
            self._buffer = self._make_buffer()
        return self._buffer

    def _make_buffer(self, samples: Tensor | None = None) -> ReplayBuffer:
        hp = self.hparams
        size = hp.buffer_size if samples is None else samples.shape[0]
        restart = self.restart_states if hp.get("reinit_from", "uniform") == "class_gaussian" else None
        return ReplayBuffer(
            size, self.data_shape, hp.reinit_prob, *hp.init_range, hp.num_classes, device=self.device,
            samples=samples, restart=restart,
        )  # fmt: skip

    def restart_states(self, n: int, y: Tensor | None = None) -> Tensor:
        """``n`` states of the restart distribution: ``U(init_range)``, or with ``class_gaussian`` a
        class ``y`` (given, or drawn with the class frequencies) and ``N(mean_y, diag(std_y^2))``
        clamped to ``init_range``."""
        low, high = self.hparams.init_range
        if self.hparams.get("reinit_from", "uniform") != "class_gaussian":
            return torch.rand(n, *self.data_shape, device=self.device) * (high - low) + low
        if not self._restart_fitted:  # checked once: reading the device here would stall every chain
            if not bool(self.restart_class_prob.sum() > 0):
                raise RuntimeError("the class Gaussians are fitted at the start of training (fit_restart_gaussians)")
            self._restart_fitted = True
        if y is None:
            y = torch.multinomial(self.restart_class_prob, n, replacement=True)
        y = y.to(self.device).long()
        return (self.restart_mean[y] + self.restart_std[y] * torch.randn_like(self.restart_mean[y])).clamp(low, high)

    @torch.no_grad()
    def fit_restart_gaussians(self, batches: Any) -> None:
        """Per-class mean, standard deviation and frequency of the labelled ``batches`` (an iterable
        of ``(x, y)``), summed over all processes under DDP (sums and counts alike, so a loader that
        is not sharded gives the same result)."""
        k = self.num_classes
        count = torch.zeros(k, device=self.device, dtype=torch.float64)
        total = torch.zeros(k, *self.data_shape, device=self.device, dtype=torch.float64)
        square = torch.zeros_like(total)
        for batch in batches:
            x = self.batch_data(batch).to(self.device, torch.float64).reshape(-1, *self.data_shape)
            y = self._labels(batch).to(self.device)
            count += torch.bincount(y, minlength=k).double()
            total.index_add_(0, y, x)
            square.index_add_(0, y, x * x)
        if self._trainer is not None and self.trainer.world_size > 1 and torch.distributed.is_initialized():
            for t in (count, total, square):
                torch.distributed.all_reduce(t)
        n = count.clamp_min(1).view(-1, *([1] * len(self.data_shape)))
        mean = total / n
        self.restart_mean.copy_(mean)
        self.restart_std.copy_((square / n - mean * mean).clamp_min(0).sqrt())
        self.restart_class_prob.copy_(count / count.sum())

    def on_fit_start(self) -> None:
        """With ``class_gaussian`` restarts, fit the class Gaussians once (a resumed run has them)."""
        super().on_fit_start()
        if self.hparams.get("reinit_from", "uniform") != "class_gaussian" or bool(self.restart_class_prob.sum() > 0):
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            raise UserError("JEM's reinit_from='class_gaussian' fits its Gaussians on a data module's training set: "
                            "pass datamodule=... to fit, or use reinit_from='uniform'")  # fmt: skip
        self.fit_restart_gaussians(datamodule.train_dataloader())

    def langevin(self, x: Tensor, y: Tensor | None = None, steps: int | None = None) -> Tensor:
        """SGLD (6.24) from ``x`` on ``E(x)`` (or ``E(x, y)``), with ``f`` in evaluation mode."""
        hp = self.hparams
        steps = hp.sgld_steps if steps is None else steps
        bounds = tuple(hp.init_range) if hp.get("sgld_clamp", False) else None
        with eval_mode(self.classifier):
            return langevin_dynamics(
                lambda v: self.energy(v, y), x, steps, hp.sgld_step_size, hp.sgld_noise, bounds=bounds
            )

    @torch.no_grad()
    def log_class_probabilities(self, x: Tensor, batch_size: int = 500) -> Tensor:
        """``log p(y | x)`` for every class, shape ``(len(x), num_classes)``, in batches, ``f`` in eval mode."""
        with eval_mode(self.classifier):
            return torch.cat([self.logits(b).log_softmax(1) for b in x.split(batch_size)])

    def negative_samples(self, n: int, y: Tensor | None = None) -> Tensor:
        """Training negatives: ``n`` chains drawn from the buffer (slots of classes ``y`` if given),
        run for ``sgld_steps`` and written back."""
        x0, slots = self.replay_buffer.draw(n, y)
        x = self.langevin(x0, y)
        self.replay_buffer.write(slots, x)
        return x

    def sample(
        self,
        num_samples: int,
        y: Tensor | int | Sequence[int] | None = None,
        steps: int | None = None,
        from_buffer: bool = True,
    ) -> Tensor:
        """Samples of ``p(x)``, or of ``p(x | y)`` with labels ``y`` (an int, or one label per sample).

        Chains start from the replay buffer, with its restart probability, or, with
        ``from_buffer=False`` or before training, from the restart distribution (``U(init_range)``,
        or the class Gaussians of ``reinit_from="class_gaussian"``), and run ``steps`` SGLD steps
        (default ``sample_steps``, else ``sgld_steps``) on ``E(x)``, or on ``E(x, y)`` for ``y``. For
        ``y``, a buffer trained by the ``p(x|y)`` term gives its class slots; one trained by ``p(x)``
        alone holds samples of ``p(x)`` in every slot, and slot ``i`` is drawn for label ``y`` with
        probability proportional to ``p(y | x_i)``, which makes the start states samples of
        ``p(x | y) = p(y | x) p(x) / p(y)`` (sampling-importance-resampling; the authors' code instead
        groups the buffer by predicted class). The buffer is not modified.
        """
        hp = self.hparams
        if y is not None:
            y = torch.as_tensor(y, device=self.device).long().reshape(-1)
            y = y.expand(num_samples) if y.numel() == 1 else y
            if y.numel() != num_samples:
                raise ValueError(f"{num_samples} samples but {y.numel()} labels")
            if int(y.min()) < 0 or int(y.max()) >= self.num_classes:
                raise ValueError(f"labels must be in 0..{self.num_classes - 1}")
        if steps is None:
            steps = hp.sample_steps if hp.sample_steps is not None else hp.sgld_steps
        if from_buffer and self._buffer is not None:
            # slots of p(x) samples (no p(x|y) term trained): resample them by p(y | x)
            unlabelled = y is not None and not hp.pxy_weight > 0
            log_weights = self.log_class_probabilities(self._buffer.samples) if unlabelled else None
            x0, _ = self.replay_buffer.draw(num_samples, y, log_weights=log_weights)
        else:
            x0 = self.restart_states(num_samples, y if hp.get("reinit_from", "uniform") == "class_gaussian" else None)
        return self.langevin(x0, y, steps)

    # ------------------------------------------------------------------ the loss (6.29-6.31)
    def objective(
        self, x: Tensor, y: Tensor, x_sgld: Tensor | None = None, x_sgld_y: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``w_clf CE + w_px (mean E(x) - mean E(x_sgld)) + w_pxy (mean E(x, y) - mean E(x_sgld_y, y))``;
        the terms whose samples are None are left out."""
        hp = self.hparams
        logits = self.logits(x)
        cross_entropy = F.cross_entropy(logits, y)
        loss = hp.clf_weight * cross_entropy
        energy_data = self.energy_from_logits(logits).mean()
        logs = {
            "cross_entropy": cross_entropy.detach(),
            "accuracy": (logits.argmax(1) == y).float().mean(),
            "energy_data": energy_data.detach(),
        }
        if x_sgld is not None:
            energies_samples = self.energy(x_sgld)
            energy_samples = energies_samples.mean()
            loss = loss + hp.px_weight * (energy_data - energy_samples)
            logs["energy_samples"] = energy_samples.detach()
            if hp.energy_l2 > 0:
                square = (self.energy_from_logits(logits).pow(2) + energies_samples.pow(2)).mean()
                loss = loss + hp.energy_l2 * square
                logs["energy_l2"] = square.detach()
        if x_sgld_y is not None:
            energy_data_y = self.energy_from_logits(logits, y).mean()
            energy_samples_y = self.energy(x_sgld_y, y).mean()
            loss = loss + hp.pxy_weight * (energy_data_y - energy_samples_y)
            logs.update(energy_data_y=energy_data_y.detach(), energy_samples_y=energy_samples_y.detach())
        return loss, logs

    # ------------------------------------------------------------------ training
    train_progress_bar = ("accuracy", "energy_gap")

    def update(self, batch: Any, key: tuple, log: bool) -> dict[str, Tensor]:
        """Noised data, chains from the buffer (written back), the loss of (6.29-6.31) and Adam's step."""
        hp = self.hparams
        x, y = self.batch_data(batch), self._labels(batch)
        if hp.data_noise > 0:
            x = x + hp.data_noise * torch.randn_like(x)
            if hp.get("sgld_clamp", False):  # data and samples on the same box
                x = x.clamp(*hp.init_range)
        x_sgld = self.negative_samples(x.shape[0]) if hp.px_weight > 0 else None
        x_sgld_y = self.negative_samples(x.shape[0], y) if hp.pxy_weight > 0 else None

        (optimizer,) = self.update_optimizers()
        loss, logs = self.objective(x, y, x_sgld, x_sgld_y)
        optimizer.zero_grad(set_to_none=True)
        self.backward_loss(loss)
        if log:
            logs["grad_norm"] = self.grad_norm(self.classifier.parameters())
        optimizer.step()

        energies = ("energy_data", "energy_samples", "energy_data_y", "energy_samples_y")
        self.guard_metrics = {"loss": loss.detach(), **{k: logs[k] for k in energies if k in logs}}
        if not log:
            return {}
        if "energy_samples" in logs:
            logs["energy_gap"] = logs["energy_samples"] - logs["energy_data"]
        return {**logs, "loss": loss.detach()}

    def host_metrics(self) -> dict[str, Any]:
        return {"lr": self.update_optimizers()[0].param_groups[0]["lr"]}

    def _labels(self, batch: Any) -> Tensor:
        if isinstance(batch, (list, tuple)) and len(batch) >= 2 and isinstance(batch[1], Tensor):
            return batch[1].long()
        raise UserError(
            "JEM trains a classifier and needs labelled batches (x, y): use a data module that yields labels "
            "(MNISTDataModule, CIFAR10DataModule, Toy2DDataModule with labels: true)"
        )

    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(self.hparams.optimizer, self.classifier.parameters())
        return self.with_schedules([(optimizer, self.hparams.lr_schedule)])

    # ------------------------------------------------------------------ evaluation
    progress_bar_metrics = ("accuracy",)

    @torch.no_grad()
    def evaluation_metrics(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """Mean energy, and with labels accuracy and cross-entropy, of held-out data; on the first
        batch, the mean energy of as many samples (``energy_samples``)."""
        x = self.batch_data(batch)
        logits = self.logits(x)
        metrics = {"energy_data": self.energy_from_logits(logits).mean()}
        if isinstance(batch, (list, tuple)) and len(batch) >= 2:
            y = batch[1].long()
            metrics["accuracy"] = (logits.argmax(1) == y).float().mean()
            metrics["cross_entropy"] = F.cross_entropy(logits, y)
        if batch_idx == 0:
            metrics["energy_samples"] = self.energy(self.sample(x.shape[0])).mean()
        return metrics

    # ------------------------------------------------------------------ the buffer in checkpoints
    def per_rank_state(self) -> dict[str, Tensor]:
        """This process's replay buffer; the checkpoint holds every process's."""
        return {} if self._buffer is None else {"replay_buffer": self._buffer.samples}

    def load_per_rank_state(self, state: dict[str, Tensor]) -> None:
        if "replay_buffer" in state:
            self._buffer = self._make_buffer(state["replay_buffer"].to(self.device, torch.float32).clone())
