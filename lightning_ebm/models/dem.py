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

The alternating updates, the energy's loss and sampling are the two-player scheme shared with MEG
(:class:`~lightning_ebm.models.generator_ebm.GeneratorEBM`); this file adds the energy of Eq. 11, the
uniform prior and the entropy of Eq. 15.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_ebm.models.generator_ebm import GeneratorEBM
from lightning_ebm.nn.energy import ProductOfExpertsEnergy
from lightning_ebm.nn.entropy import batchnorm_entropy
from lightning_ebm.optim import LRSchedulerCallable, OptimizerCallable, spec
from lightning_ebm.utils import check_bounds, eval_mode

#: The authors' optimiser: AdaGrad at 0.01 for both players, weight decay 1e-5 on the energy.
ENERGY_ADAGRAD = spec("torch.optim.Adagrad", lr=1e-2, weight_decay=1e-5)
GENERATOR_ADAGRAD = spec("torch.optim.Adagrad", lr=1e-2)


class DEM(GeneratorEBM):
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
        energy_optimizer: the energy's optimiser (the authors': AdaGrad, 0.01, weight decay 1e-5);
            ``generator_optimizer`` the generator's (AdaGrad, 0.01).
        lr_schedule: the schedule of both (None: constant rates, the paper; e.g.
            ``lightning_ebm.optim.Schedule`` with ``linear_decay_start``).
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
        fused_step: run each training step as one captured CUDA graph on a GPU (:mod:`lightning_ebm.fused`);
            the eager step otherwise.
    """

    def __init__(
        self,
        feature_net: nn.Module,
        generator: nn.Module,
        data_shape: Sequence[int] = (2,),
        latent_dim: int = 4,
        num_experts: int = 4,
        sigma: float = 1.0,
        learn_sigma: bool = False,
        latent_distribution: Literal["uniform", "normal"] = "uniform",
        energy_optimizer: OptimizerCallable = ENERGY_ADAGRAD,
        generator_optimizer: OptimizerCallable = GENERATOR_ADAGRAD,
        lr_schedule: LRSchedulerCallable | None = None,
        entropy_weight: float = 1.0,
        entropy_reduction: Literal["sum", "mean"] = "sum",
        sample_noise_std: float = 0.0,
        energy_steps: int = 1,
        gradient_penalty: float = 0.0,
        mcmc_steps: int = 0,
        mcmc_step_size: float = 1e-3,
        mcmc_temperature: float = 1.0,
        fused_step: bool = False,
    ) -> None:
        super().__init__(data_shape, fused_step)
        self.save_hyperparameters()
        check_bounds(
            positive=dict(latent_dim=latent_dim, num_experts=num_experts, sigma=sigma, energy_steps=energy_steps,
                          mcmc_step_size=mcmc_step_size, mcmc_temperature=mcmc_temperature),
            non_negative=dict(entropy_weight=entropy_weight, sample_noise_std=sample_noise_std,
                              gradient_penalty=gradient_penalty, mcmc_steps=mcmc_steps),
        )  # fmt: skip
        self.latent_distribution = latent_distribution
        self.energy_net = ProductOfExpertsEnergy(feature_net, self.data_shape, num_experts, sigma, learn_sigma)
        self.generator = generator
        self.check_networks()

    @property
    def energy_updates_per_batch(self) -> int:
        return self.hparams.energy_steps

    @torch.no_grad()
    def sample(self, num_samples: int, z: Tensor | None = None) -> Tensor:
        """``G(z)`` with the generator in evaluation mode (batch norm uses its running statistics); with
        ``mcmc_steps`` the codes are first refined by latent-space MALA (acceptance rate in
        :attr:`last_acceptance_rate`)."""
        hp = self.hparams
        z = self.latent(num_samples) if z is None else z.to(self.device)
        with eval_mode(self.generator):
            if hp.mcmc_steps > 0:
                z = self.latent_chain(z, hp.mcmc_steps, hp.mcmc_step_size, hp.mcmc_temperature, hp.latent_distribution)
            return self.generator(z)

    # ------------------------------------------------------------------ the generator's loss
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

    def train_metrics(self) -> dict[str, Tensor]:
        return {"sigma": self.energy_net.sigma.detach()}
