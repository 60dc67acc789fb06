"""Maximum Entropy Generators for energy-based models (MEG).

R. Kumar, S. Ozair, A. Goyal, A. Courville and Y. Bengio, "Maximum Entropy Generators for
Energy-Based Models", arXiv:1901.08508, 2019.

An energy ``E_theta(x)`` (``p_theta(x) = exp(-E_theta(x)) / Z``) is trained by maximum likelihood
with the negative phase drawn from a neural generator ``x = G(z)``, ``z ~ N(0, I)``, instead of MCMC.
The generator is trained to minimise ``KL(p_G || p_theta) = E_z[E_theta(G(z))] - H[p_G] + log Z``;
since ``G`` is deterministic, its output entropy ``H[p_G]`` equals the mutual information between
``z`` and ``G(z)``, which a statistics network ``T(x, z)`` estimates (the Jensen-Shannon estimator of
Deep InfoMax, :func:`~lightning_ebm.models.objectives.jsd_mutual_information`). Three players:

* energy update (every batch): minimise
  ``mean E(x_data) - mean E(G(z)) + lambda * mean ||grad_x E(x_data)||^2``; the zero-centred gradient
  penalty on real data is the first term of score matching and keeps the energies from diverging;
* generator and statistics-network update (once every ``energy_steps`` energy updates): minimise
  ``mean E(G(z)) - I_JSD(G(z); z)``, ``G`` and ``T`` on the same objective.

Sampling (:meth:`MEG.sample`) is ``G(z)`` by default. ``mcmc="latent"`` refines ``z`` with the
Metropolis-adjusted Langevin algorithm on the composed energy ``E(G(z)) / T`` (plus the prior's
``||z||^2 / 2``), which walks on the flatter latent manifold; ``mcmc="visible"`` runs MALA (or
unadjusted Langevin) on ``E(x)`` from ``G(z)`` in data space, the paper's comparison. Anomalies are
scored by ``||grad_x E(x)||^2`` (:meth:`MEG.anomaly_score`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_ebm.evaluation.anomaly import SCORES, anomaly_scores
from lightning_ebm.models.base import EnergyBasedModel
from lightning_ebm.models.objectives import jsd_mutual_information, score_penalty
from lightning_ebm.samplers.langevin import langevin_dynamics, latent_mala, mala

MCMC_CHOICES = ("none", "latent", "visible")


class MEG(EnergyBasedModel):
    """Kumar et al. (2019): an energy trained against a maximum-entropy generator.

    Args:
        energy_net: ``E``, mapping a batch to one number per example (``(B,)`` or ``(B, 1)``).
        generator: ``G``, mapping ``(B, latent_dim)`` to ``(B, *data_shape)``.
        statistics_net: ``T(x, z)``, mapping a batch of pairs to one logit per pair.
        data_shape: shape of one example.
        latent_dim: size of ``z ~ N(0, I)``.
        gradient_penalty: weight ``lambda`` of the zero-centred gradient penalty on real data.
        energy_steps: energy updates per generator update (5 on toys and images, 1 on KDD99).
        energy_lr: Adam learning rate of the energy; ``generator_lr`` and ``statistics_lr`` likewise.
        betas: Adam's betas for the three networks (the paper: 0.5, 0.9).
        mi_weight: weight of ``I_JSD`` in the generator's loss (1 in the paper).
        lr_decay: ``none`` (the paper: constant rates) or ``linear``: the three learning rates stay
            constant, then fall linearly to 0 over the last ``1 - lr_decay_start`` of the run, so that
            a short run ends on a settled pair of players instead of wherever the game's oscillation
            happens to be.
        lr_decay_start: fraction of the run's batches after which the linear decay begins.
        mcmc: sampler refining ``G(z)`` in :meth:`sample`: ``none``, ``latent`` or ``visible``.
        mcmc_steps: MCMC steps per sample.
        mcmc_step_size: Langevin step ``alpha`` (proposal ``x' = x - alpha grad U + sqrt(2 alpha) eps``).
        mcmc_temperature: ``T`` of the target ``exp(-E / T)``. The authors' code multiplies the energy
            by its ``--temp`` instead, so their ``temp`` 0.01 is ``mcmc_temperature`` 100.
        mcmc_latent_prior: include the prior's ``||z||^2 / 2`` in the latent-space target, so that
            the chain targets ``N(z; 0, I) exp(-E(G(z)) / T)`` (the authors' code leaves it out).
        mcmc_metropolis: Metropolis-adjust the visible-space chain (MALA); off gives unadjusted
            Langevin. The latent chain is always adjusted.
        anomaly_score: default score of :meth:`anomaly_score`: ``gradient_norm`` or ``energy``.
    """

    ddp_find_unused_parameters = True  # each update's backward reaches only some of the networks

    def __init__(
        self,
        energy_net: nn.Module,
        generator: nn.Module,
        statistics_net: nn.Module,
        data_shape: Sequence[int] = (2,),
        latent_dim: int = 2,
        gradient_penalty: float = 0.1,
        energy_steps: int = 5,
        energy_lr: float = 1e-4,
        generator_lr: float = 1e-4,
        statistics_lr: float = 1e-4,
        betas: Sequence[float] = (0.5, 0.9),
        mi_weight: float = 1.0,
        lr_decay: str = "none",
        lr_decay_start: float = 0.0,
        mcmc: str = "none",
        mcmc_steps: int = 0,
        mcmc_step_size: float = 0.01,
        mcmc_temperature: float = 1.0,
        mcmc_latent_prior: bool = True,
        mcmc_metropolis: bool = True,
        anomaly_score: str = "gradient_norm",
    ) -> None:
        super().__init__(data_shape)
        self.save_hyperparameters()
        if mcmc not in MCMC_CHOICES:
            raise ValueError(f"mcmc must be one of {', '.join(MCMC_CHOICES)}, got {mcmc!r}")
        if anomaly_score not in SCORES:
            raise ValueError(f"anomaly_score must be one of {', '.join(SCORES)}, got {anomaly_score!r}")
        self.check_lr_decay(lr_decay, lr_decay_start)
        if energy_steps < 1:
            raise ValueError(f"energy_steps must be at least 1, got {energy_steps}")
        if mcmc_temperature <= 0 or mcmc_step_size <= 0:
            raise ValueError("mcmc_temperature and mcmc_step_size must be positive")
        self.automatic_optimization = False
        self.energy_net = energy_net
        self.generator = generator
        self.statistics_net = statistics_net
        self.energy_updates = 0  # energy updates so far; decides when the generator is updated
        self.last_acceptance_rate: Tensor | None = None

    # ------------------------------------------------------------------ the contract
    def energy(self, x: Tensor) -> Tensor:
        """``E(x)``, shape ``(batch,)``."""
        return self.energy_net(x).reshape(x.shape[0])

    def latent(self, num_samples: int) -> Tensor:
        """``z ~ N(0, I)``."""
        return torch.randn(num_samples, self.hparams.latent_dim, device=self.device)

    @torch.no_grad()
    def sample(self, num_samples: int, z: Tensor | None = None, mcmc: str | None = None) -> Tensor:
        """Samples ``G(z)``, refined by the configured MCMC (``mcmc`` overrides it for this call).

        The generator is in evaluation mode (batch norm uses its running statistics). With MCMC the
        mean acceptance rate of the chains is kept in :attr:`last_acceptance_rate`.
        """
        hp = self.hparams
        mode = hp.mcmc if mcmc is None else mcmc
        if mode not in MCMC_CHOICES:
            raise ValueError(f"mcmc must be one of {', '.join(MCMC_CHOICES)}, got {mode!r}")
        z = self.latent(num_samples) if z is None else z.to(self.device)
        was_training = self.generator.training
        self.generator.eval()
        try:
            if mode == "latent" and hp.mcmc_steps > 0:
                prior = "normal" if hp.mcmc_latent_prior else "none"
                z, accepted = latent_mala(
                    self.energy, self.generator, z, hp.mcmc_steps, hp.mcmc_step_size, hp.mcmc_temperature, prior
                )
                self.last_acceptance_rate = accepted.mean()
            x = self.generator(z)
            if mode == "visible" and hp.mcmc_steps > 0:
                if hp.mcmc_metropolis:
                    x, accepted = mala(self.energy, x, hp.mcmc_steps, hp.mcmc_step_size, hp.mcmc_temperature)
                    self.last_acceptance_rate = accepted.mean()
                else:
                    noise = (2 * hp.mcmc_step_size * hp.mcmc_temperature) ** 0.5  # invariant law ~ exp(-E / T)
                    x = langevin_dynamics(self.energy, x, hp.mcmc_steps, hp.mcmc_step_size, noise)
            return x
        finally:
            self.generator.train(was_training)

    def anomaly_score(self, x: Tensor, score: str | None = None) -> Tensor:
        """``||grad_x E(x)||^2`` (``gradient_norm``, the paper's score) or ``E(x)`` per example."""
        return anomaly_scores(self.energy, x, score or self.hparams.anomaly_score)

    # ------------------------------------------------------------------ the losses
    def energy_loss(self, x: Tensor, x_fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``mean E(x) - mean E(G(z)) + lambda * mean ||grad_x E(x)||^2``."""
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

    def mutual_information(self, x: Tensor, z: Tensor) -> Tensor:
        """``I_JSD(x; z)`` of generated pairs, with ``z`` shuffled across the batch for the negatives."""
        shuffled = z[torch.randperm(z.shape[0], device=z.device)]
        return jsd_mutual_information(self.statistics_net(x, z), self.statistics_net(x, shuffled))

    def generator_loss(self, z: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``mean E(G(z)) - mi_weight * I_JSD(G(z); z)``: the energy of the samples minus their entropy."""
        x_fake = self.generator(z)
        energy_fake = self.energy(x_fake).mean()
        information = self.mutual_information(x_fake, z)
        loss = energy_fake - self.hparams.mi_weight * information
        return loss, {"mutual_information": information.detach(), "energy_generated": energy_fake.detach()}

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> None:
        x = self.batch_data(batch)
        opt_energy, opt_generator, opt_statistics = self.optimizers()  # type: ignore[misc]
        log = self.should_log_step
        metrics: dict[str, Tensor] = {}

        if self.energy_updates % self.hparams.energy_steps == 0:
            # Generator and statistics network: one update on the same objective; E gets no gradient.
            self.energy_net.requires_grad_(False)
            loss_g, logs_g = self.generator_loss(self.latent(x.shape[0]))
            opt_generator.zero_grad(set_to_none=True)
            opt_statistics.zero_grad(set_to_none=True)
            self.manual_backward(loss_g)
            if log:
                metrics["grad_norm_generator"] = self.grad_norm(self.generator.parameters())
                metrics["grad_norm_statistics"] = self.grad_norm(self.statistics_net.parameters())
                metrics.update(loss_generator=loss_g.detach(), **logs_g)
            opt_generator.step()
            opt_statistics.step()
            self.energy_net.requires_grad_(True)

        # Energy: maximum likelihood with the generator's samples as the negative phase.
        with torch.no_grad():
            x_fake = self.generator(self.latent(x.shape[0]))
        loss_e, logs_e = self.energy_loss(x, x_fake)
        opt_energy.zero_grad(set_to_none=True)
        self.manual_backward(loss_e)
        if log:
            metrics["grad_norm_energy"] = self.grad_norm(self.energy_net.parameters())
        opt_energy.step()
        self.energy_updates += 1
        self.step_lr_schedulers()  # one step per batch for all three players

        if log:
            metrics.update(
                loss_energy=loss_e.detach(),
                energy_gap=logs_e["energy_samples"] - logs_e["energy_data"],
                **logs_e,
            )
            self.log_train_metrics(metrics, prog_bar=("energy_gap",))

    def configure_optimizers(self) -> Any:
        """Adam for each network; its fused kernel (one update per parameter tensor) on CPU and GPU,
        about 5% faster per KDD99 step on a CPU (``benchmarks/throughput.py``). With ``lr_decay:
        linear`` each gets a :class:`~lightning_ebm.optim.LinearDecay` stepped once per batch."""
        hp = self.hparams
        options = {"betas": tuple(hp.betas), "fused": self.device.type in ("cpu", "cuda") or None}
        optimizers = [
            torch.optim.Adam(self.energy_net.parameters(), lr=hp.energy_lr, **options),
            torch.optim.Adam(self.generator.parameters(), lr=hp.generator_lr, **options),
            torch.optim.Adam(self.statistics_net.parameters(), lr=hp.statistics_lr, **options),
        ]
        if hp.get("lr_decay", "none") == "none":
            return optimizers
        return self.linear_lr_decay(optimizers, hp.lr_decay_start)

    @property
    def optimizer_steps_per_batch(self) -> float:  # an energy step, and G and T every energy_steps batches
        return 1 + 2 / self.hparams.energy_steps

    # ------------------------------------------------------------------ resuming
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["energy_updates"] = self.energy_updates

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.energy_updates = int(checkpoint.get("energy_updates", 0))
