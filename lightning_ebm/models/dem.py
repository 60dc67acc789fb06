"""Deep energy model trained with a deep generative model (DEM + DGM).

T. Kim and Y. Bengio, "Deep Directed Generative Models with Energy-Based Probability Estimation",
ICLR 2016 workshop, arXiv:1606.03439.

Two networks represent one distribution. The deep energy model (DEM) defines

    p(x) = exp(-E(x)) / Z,   E(x) = ||x||^2/sigma^2 - b^T x - sum_i softplus(w_i^T f(x) + c_i)      (Eq. 11)

and the deep generative model (DGM) ``x = G_phi(z)``, ``z ~ U(-1, 1)``, draws samples without MCMC.
Each batch makes two updates (the order of the authors' code: generator first):

* generator (Eq. 13-15): minimise KL(p_phi || p_theta) = E_z[E_theta(G(z))] - H(p_phi) + const, with
  the entropy H approximated from the generator's batch-norm scales, sum_a 1/2 log(2 pi e gamma_a^2);
* energy (Eq. 12): the maximum-likelihood gradient with the generator's samples in the negative
  phase, i.e. minimise mean E(x_data) - mean E(G(z)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_ebm.models.base import EnergyBasedModel
from lightning_ebm.models.objectives import score_penalty
from lightning_ebm.nn.energy import ProductOfExpertsEnergy
from lightning_ebm.nn.entropy import batchnorm_entropy
from lightning_ebm.samplers.langevin import latent_mala

_OPTIMIZERS = {"adagrad": torch.optim.Adagrad, "adam": torch.optim.Adam}


class DEM(EnergyBasedModel):
    """Kim & Bengio (2016) deep energy model + deep generative model.

    Args:
        feature_net: the energy's feature network ``f`` (e.g. ``MLP`` 2-128-128 or ``DCGANFeatureNet``).
        generator: ``G``, mapping ``(batch, latent_dim)`` to ``(batch, *data_shape)``; its affine
            batch-norm layers carry the entropy regulariser.
        data_shape: shape of one example.
        latent_dim: size of ``z``.
        num_experts: experts of the product-of-experts energy (Eq. 11).
        sigma: the ``sigma`` of the quadratic term; ``learn_sigma`` learns it.
        latent_distribution: ``uniform`` (U(-1, 1), the paper) or ``normal``.
        optimizer: ``adagrad`` (the paper) or ``adam`` (betas 0.5, 0.999).
        energy_lr: learning rate of the energy; ``generator_lr`` of the generator.
        lr_decay: ``none`` (the paper) or ``linear``: both learning rates stay constant, then fall
            linearly to 0 over the last ``1 - lr_decay_start`` of the run (as in :class:`MEG`).
        lr_decay_start: fraction of the run's batches after which the linear decay begins.
        energy_weight_decay: L2 penalty on the energy's parameters (authors' code: 1e-5).
        entropy_weight: weight of the entropy term of the generator loss (1 is the KL of Eq. 13).
        entropy_reduction: ``sum`` over batch-norm units (Eq. 15) or ``mean`` (authors' code).
        sample_noise_std: std of Gaussian noise added to generated samples before the energy in the
            generator update (the authors' later scripts use 0.01); 0 disables it.
        energy_steps: energy updates per generator update (each on the same data batch).
        gradient_penalty: weight of a zero-centred gradient penalty ``mean ||grad_x E(x_data)||^2`` in
            the energy loss (not in Kim & Bengio; the regulariser of Kumar et al. 2019, MEG), 0 = off.
        mcmc_steps: MALA steps in the generator's latent space refining ``z`` in :meth:`sample` (0, the
            paper: plain ``G(z)``). The target is the prior tilted by ``exp(-E(G(z)) / mcmc_temperature)``
            (:func:`~lightning_ebm.samplers.latent_mala`, the sampler of Kumar et al. 2019).
        mcmc_step_size: the Langevin step of those chains.
        mcmc_temperature: their temperature; below 1 sharpens the samples towards the energy's basins,
            above 1 widens basins that are sharper than the data's (``dem_toy.yaml``: 100, for an energy
            whose basins are 30-80 times as sharp as the modes, :func:`~lightning_ebm.evaluation.mode_sharpness`).
    """

    ddp_find_unused_parameters = True  # the generator's backward pass does not reach the energy

    def __init__(
        self,
        feature_net: nn.Module,
        generator: nn.Module,
        data_shape: Sequence[int] = (2,),
        latent_dim: int = 4,
        num_experts: int = 4,
        sigma: float = 1.0,
        learn_sigma: bool = False,
        latent_distribution: str = "uniform",
        optimizer: str = "adagrad",
        energy_lr: float = 1e-2,
        generator_lr: float = 1e-2,
        lr_decay: str = "none",
        lr_decay_start: float = 0.0,
        energy_weight_decay: float = 1e-5,
        entropy_weight: float = 1.0,
        entropy_reduction: str = "sum",
        sample_noise_std: float = 0.0,
        energy_steps: int = 1,
        gradient_penalty: float = 0.0,
        mcmc_steps: int = 0,
        mcmc_step_size: float = 1e-3,
        mcmc_temperature: float = 1.0,
    ) -> None:
        super().__init__(data_shape)
        self.save_hyperparameters()
        if latent_distribution not in ("uniform", "normal"):
            raise ValueError(f"latent_distribution must be 'uniform' or 'normal', got {latent_distribution!r}")
        if optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(_OPTIMIZERS)}, got {optimizer!r}")
        if entropy_reduction not in ("sum", "mean"):
            raise ValueError(f"entropy_reduction must be 'sum' or 'mean', got {entropy_reduction!r}")
        self.check_lr_decay(lr_decay, lr_decay_start)
        if mcmc_steps < 0 or mcmc_step_size <= 0 or mcmc_temperature <= 0:
            raise ValueError("mcmc_steps must be >= 0, mcmc_step_size and mcmc_temperature positive")
        self.automatic_optimization = False
        self.last_acceptance_rate: Tensor | None = None
        self.energy_net = ProductOfExpertsEnergy(feature_net, self.data_shape, num_experts, sigma, learn_sigma)
        self.generator = generator

    # ------------------------------------------------------------------ the contract
    def energy(self, x: Tensor) -> Tensor:
        """``E(x)`` of Eq. 11, shape ``(batch,)``."""
        return self.energy_net(x)

    def latent(self, num_samples: int) -> Tensor:
        """``z`` from the generator's prior."""
        shape = (num_samples, self.hparams.latent_dim)
        if self.hparams.latent_distribution == "uniform":
            return torch.rand(shape, device=self.device) * 2 - 1
        return torch.randn(shape, device=self.device)

    @torch.no_grad()
    def sample(self, num_samples: int, z: Tensor | None = None) -> Tensor:
        """``G(z)`` with the generator in evaluation mode (batch norm uses its running statistics); with
        ``mcmc_steps`` the codes are first refined by latent-space MALA (acceptance rate in
        :attr:`last_acceptance_rate`)."""
        hp = self.hparams
        z = self.latent(num_samples) if z is None else z.to(self.device)
        was_training = self.generator.training
        self.generator.eval()
        try:
            if hp.mcmc_steps > 0:
                z, accepted = latent_mala(
                    self.energy, self.generator, z, hp.mcmc_steps, hp.mcmc_step_size, hp.mcmc_temperature,
                    prior=hp.latent_distribution,
                )  # fmt: skip
                self.last_acceptance_rate = accepted.mean()
            return self.generator(z)
        finally:
            self.generator.train(was_training)

    # ------------------------------------------------------------------ the losses
    def entropy(self) -> Tensor:
        """The batch-norm approximation of the generator's entropy (Eq. 15)."""
        return batchnorm_entropy(self.generator, self.hparams.entropy_reduction)

    def generator_loss(self, z: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. 13-15: mean E(G(z)) - entropy_weight * H."""
        x_fake = self.generator(z)
        if self.hparams.sample_noise_std > 0:
            x_fake = x_fake + self.hparams.sample_noise_std * torch.randn_like(x_fake)
        energy_fake = self.energy(x_fake).mean()
        entropy = self.entropy()
        loss = energy_fake - self.hparams.entropy_weight * entropy
        return loss, {"entropy": entropy.detach()}

    def energy_loss(self, x: Tensor, x_fake: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. 12: mean E(x_data) - mean E(x_generated) (+ the optional gradient penalty)."""
        penalty_weight = self.hparams.gradient_penalty
        if penalty_weight > 0:
            x = x.detach().requires_grad_(True)
        energies = self.energy(x)
        energy_data = energies.mean()
        energy_fake = self.energy(x_fake).mean()
        loss = energy_data - energy_fake
        logs = {"energy_data": energy_data.detach(), "energy_samples": energy_fake.detach()}
        if penalty_weight > 0:
            penalty = score_penalty(energies, x)
            loss = loss + penalty_weight * penalty
            logs["gradient_penalty"] = penalty.detach()
        return loss, logs

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> None:
        x = self.batch_data(batch)
        opt_energy, opt_generator = self.optimizers()  # type: ignore[misc]
        log = self.should_log_step
        metrics: dict[str, Tensor] = {}

        # Generator update (Eq. 13-15); the energy's parameters get no gradient from it.
        self.energy_net.requires_grad_(False)
        loss_g, logs_g = self.generator_loss(self.latent(x.shape[0]))
        opt_generator.zero_grad(set_to_none=True)
        self.manual_backward(loss_g)
        if log:
            metrics["grad_norm_generator"] = self.grad_norm(self.generator.parameters())
        opt_generator.step()
        self.energy_net.requires_grad_(True)

        # Energy update (Eq. 12) with fresh generator samples in the negative phase.
        for _ in range(self.hparams.energy_steps):
            with torch.no_grad():
                x_fake = self.generator(self.latent(x.shape[0]))
            loss_e, logs_e = self.energy_loss(x, x_fake)
            opt_energy.zero_grad(set_to_none=True)
            self.manual_backward(loss_e)
            if log:
                metrics["grad_norm_energy"] = self.grad_norm(self.energy_net.parameters())
            opt_energy.step()
        self.step_lr_schedulers()

        if log:
            metrics.update(
                loss_energy=loss_e.detach(),
                loss_generator=loss_g.detach(),
                energy_data=logs_e["energy_data"],
                energy_samples=logs_e["energy_samples"],
                energy_gap=logs_e["energy_samples"] - logs_e["energy_data"],
                entropy=logs_g["entropy"],
                sigma=self.energy_net.sigma.detach(),
            )
            if "gradient_penalty" in logs_e:
                metrics["gradient_penalty"] = logs_e["gradient_penalty"]
            self.log_train_metrics(metrics, prog_bar=("energy_gap",))

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        cls = _OPTIMIZERS[hp.optimizer]
        extra: dict[str, Any] = {"betas": (0.5, 0.999)} if hp.optimizer == "adam" else {}
        opt_energy = cls(self.energy_net.parameters(), lr=hp.energy_lr, weight_decay=hp.energy_weight_decay, **extra)
        opt_generator = cls(self.generator.parameters(), lr=hp.generator_lr, **extra)
        if hp.get("lr_decay", "none") == "none":
            return [opt_energy, opt_generator]
        return self.linear_lr_decay([opt_energy, opt_generator], hp.lr_decay_start)

    @property
    def optimizer_steps_per_batch(self) -> float:  # one generator and energy_steps energy updates
        return 1 + self.hparams.energy_steps
