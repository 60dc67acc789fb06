"""Energy-based models whose negative phase is a generator's samples: the two-player scheme of
Kim & Bengio (2016, DEM + DGM) and Kumar et al. (2019, MEG), written once.

An energy ``E_theta(x)`` (``p_theta(x) = exp(-E_theta(x)) / Z``) is trained by maximum likelihood. The
model term of its gradient, an expectation under ``p_theta``, is estimated with samples of a
generator ``x = G(z)`` instead of MCMC:

    L_E = mean E(x_data) - mean E(G(z)) [+ lambda * mean ||grad_x E(x_data)||^2]

(the optional zero-centred gradient penalty on real data, Kumar et al. 2019, Eq. 8). The generator
is trained to follow ``p_theta``: it minimises ``KL(p_G || p_theta) = E_z[E(G(z))] - H(p_G) + log Z``;
the methods differ in how they estimate the entropy ``H(p_G)``, which is all a subclass writes
(:meth:`GeneratorEBM.generator_loss`), with any network of its own that the generator's update
trains (:meth:`GeneratorEBM.generator_players`). Each batch makes one generator update every
``generator_period`` batches, then ``energy_updates_per_batch`` energy updates with fresh samples.
Samples are ``G(z)`` with the generator in evaluation mode, optionally refined by MALA in its latent
space (Kumar et al. 2019, Sec. 2.2).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_ebm.models.base import EnergyBasedModel
from lightning_ebm.models.objectives import score_penalty
from lightning_ebm.optim import build_optimizer
from lightning_ebm.samplers.langevin import latent_mala
from lightning_ebm.utils import eval_mode


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


class GeneratorEBM(EnergyBasedModel):
    """Base of the methods that train an energy with a generator's samples (module docstring).

    A subclass sets ``self.energy_net`` (the energy player's network, whose parameters its optimiser
    updates) and ``self.generator`` in its constructor, and fills in :meth:`generator_loss`. Its
    hyper-parameters include ``latent_dim``, ``gradient_penalty``, ``energy_optimizer``,
    ``generator_optimizer`` and ``lr_schedule`` (one schedule for every player, stepped once per batch).
    """

    ddp_find_unused_parameters = True  # each update's backward pass reaches only some of the networks
    energy_net: nn.Module
    generator: nn.Module
    #: The latent prior: ``normal`` (``N(0, I)``) or ``uniform`` (``U(-1, 1)``).
    latent_distribution: Literal["normal", "uniform"] = "normal"

    def __init__(self, data_shape: Sequence[int], fused_step: bool = False) -> None:
        super().__init__(data_shape, fused_step)
        self.automatic_optimization = False
        self.energy_updates = 0  # energy updates so far; decides when the generator is updated
        self.last_acceptance_rate: Tensor | None = None

    # ------------------------------------------------------------------ the template hooks
    @abstractmethod
    def generator_loss(self, z: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The generator's loss for codes ``z`` (an estimate of ``KL(p_G || p_theta)`` up to constants)
        and the metrics to log with it."""

    def generator_players(self) -> list[tuple[str, nn.Module, Any]]:
        """``(name, network, optimiser)`` of every network the generator's loss trains: the generator,
        and for MEG its statistics network."""
        return [("generator", self.generator, self.hparams.generator_optimizer)]

    @property
    def energy_updates_per_batch(self) -> int:
        return 1

    @property
    def generator_period(self) -> int:
        """Batches between two generator updates."""
        return 1

    def train_metrics(self) -> dict[str, Tensor]:
        """Metrics of the method's own to log with the losses (none by default)."""
        return {}

    @torch.no_grad()
    def check_networks(self) -> None:
        """Run the networks once on two stand-in codes (evaluation mode, no random numbers drawn): sizes
        that do not fit ``latent_dim`` and ``data_shape`` are a clear error now, not a shape error deep
        inside the first training step."""
        dim = self.hparams.latent_dim
        with eval_mode(*[m for m in self.modules() if m is not self]):
            try:
                x = self.generator(torch.zeros(2, dim))
            except RuntimeError as exc:
                raise ValueError(f"the generator does not take codes of latent_dim {dim} ({_first_line(exc)}): "
                                 "make its input size latent_dim") from None  # fmt: skip
            if tuple(x.shape[1:]) != self.data_shape:
                raise ValueError(f"the generator makes examples shaped {list(x.shape[1:])}, not data_shape "
                                 f"{list(self.data_shape)}: make its output fit data_shape")  # fmt: skip
            try:
                energies = self.energy(x)
            except RuntimeError as exc:
                raise ValueError(f"the energy network does not take examples shaped data_shape {list(self.data_shape)} "
                                 f"({_first_line(exc)}): make its input fit data_shape") from None  # fmt: skip
            if energies.shape != (2,):
                raise ValueError(f"the energy network gives {list(energies.shape[1:])} numbers per example, not one")

    # ------------------------------------------------------------------ the contract
    def energy(self, x: Tensor) -> Tensor:
        """``E(x)``, shape ``(batch,)``."""
        return self.energy_net(x).reshape(x.shape[0])

    def latent(self, num_samples: int) -> Tensor:
        """``z`` from the generator's prior."""
        shape = (num_samples, self.hparams.latent_dim)
        if self.latent_distribution == "uniform":
            return torch.rand(shape, device=self.device) * 2 - 1
        return torch.randn(shape, device=self.device)

    def latent_chain(self, z: Tensor, steps: int, step_size: float, temperature: float, prior: str) -> Tensor:
        """``z`` after ``steps`` of MALA targeting the prior tilted by ``exp(-E(G(z)) / temperature)``;
        the acceptance rate goes to :attr:`last_acceptance_rate`. The generator should be in eval mode."""
        z, accepted = latent_mala(self.energy, self.generator, z, steps, step_size, temperature, prior)
        self.last_acceptance_rate = accepted.mean()
        return z

    @torch.no_grad()
    def sample(self, num_samples: int, z: Tensor | None = None) -> Tensor:
        """``G(z)`` with the generator in evaluation mode (batch norm uses its running statistics)."""
        with eval_mode(self.generator):
            return self.generator(self.latent(num_samples) if z is None else z.to(self.device))

    # ------------------------------------------------------------------ the energy's loss
    def energy_loss(self, x: Tensor, x_fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``mean E(x_data) - mean E(G(z))`` (+ ``gradient_penalty * mean ||grad_x E(x_data)||^2``)."""
        penalty_weight = self.hparams.gradient_penalty
        if penalty_weight > 0:
            x = x.detach().requires_grad_(True)
        energies = self.energy(x)
        energy_data, energy_fake = energies.mean(), self.energy(x_fake).mean()
        loss = energy_data - energy_fake
        logs = {"energy_data": energy_data.detach(), "energy_samples": energy_fake.detach()}
        if penalty_weight > 0:
            penalty = score_penalty(energies, x)
            loss = loss + penalty_weight * penalty
            logs["gradient_penalty"] = penalty.detach()
        return loss, logs

    # ------------------------------------------------------------------ training
    train_progress_bar = ("energy_gap",)

    def update_key(self) -> tuple:
        """Whether the generator's players are updated in this batch (every ``generator_period`` batches)."""
        return (self.energy_updates % (self.generator_period * self.energy_updates_per_batch) == 0,)

    def update(self, batch: Any, key: tuple, log: bool) -> dict[str, Tensor]:
        """The generator's players when due, then ``energy_updates_per_batch`` energy updates."""
        (generator_due,) = key
        x = self.batch_data(batch)
        energy_optimizer, *generator_optimizers = self.update_optimizers()
        metrics: dict[str, Tensor] = {}
        if generator_due:
            metrics.update(self.generator_update(x.shape[0], generator_optimizers, log))
        for _ in range(self.energy_updates_per_batch):
            metrics.update(self.energy_update(x, energy_optimizer, log))
        if log:
            metrics["energy_gap"] = metrics["energy_samples"] - metrics["energy_data"]
            metrics.update(self.train_metrics())
        return metrics

    def after_update(self) -> None:
        self.energy_updates += self.energy_updates_per_batch
        self.step_schedules()  # one step per batch for every player

    def generator_update(self, n: int, optimizers: Sequence[Any], log: bool) -> dict[str, Tensor]:
        """One update of the generator's players on ``n`` codes; the energy gets no gradient from it."""
        self.energy_net.requires_grad_(False)
        try:
            loss, logs = self.generator_loss(self.latent(n))
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            self.backward_loss(loss)
            if log:
                for name, network, _ in self.generator_players():
                    logs[f"grad_norm_{name}"] = self.grad_norm(network.parameters())
            for optimizer in optimizers:
                optimizer.step()
        finally:  # also when the update fails (a capture that falls back to eager steps)
            self.energy_net.requires_grad_(True)
        return {"loss_generator": loss.detach(), **logs}

    def energy_update(self, x: Tensor, optimizer: Any, log: bool) -> dict[str, Tensor]:
        """One update of the energy with fresh generator samples in the negative phase."""
        with torch.no_grad():
            x_fake = self.generator(self.latent(x.shape[0]))
        loss, logs = self.energy_loss(x, x_fake)
        optimizer.zero_grad(set_to_none=True)
        self.backward_loss(loss)
        if log:
            logs["grad_norm_energy"] = self.grad_norm(self.energy_net.parameters())
        optimizer.step()
        return {"loss_energy": loss.detach(), **logs}

    def configure_optimizers(self) -> Any:
        """The injected optimiser of every player (the energy first), each with the injected schedule."""
        hp = self.hparams
        players = [(self.energy_net, hp.energy_optimizer)] + [(net, opt) for _, net, opt in self.generator_players()]
        return self.with_schedules(
            [(build_optimizer(factory, network.parameters()), hp.lr_schedule) for network, factory in players]
        )

    @property
    def optimizer_steps_per_batch(self) -> float:  # energy updates, and every generator player's now and then
        return self.energy_updates_per_batch + len(self.generator_players()) / self.generator_period

    # ------------------------------------------------------------------ resuming
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["energy_updates"] = self.energy_updates

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.energy_updates = int(checkpoint.get("energy_updates", 0))
