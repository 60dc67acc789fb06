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

The alternating updates and the energy's loss are the two-player scheme shared with DEM
(:class:`~lightning_ebm.models.generator_ebm.GeneratorEBM`); this file adds the entropy estimate, the
samplers and the anomaly score.

Sampling (:meth:`MEG.sample`) is ``G(z)`` by default. ``mcmc="latent"`` refines ``z`` with the
Metropolis-adjusted Langevin algorithm on the composed energy ``E(G(z)) / T`` (plus the prior's
``||z||^2 / 2``), which walks on the flatter latent manifold; ``mcmc="visible"`` runs MALA (or
unadjusted Langevin) on ``E(x)`` from ``G(z)`` in data space, the paper's comparison. Anomalies are
scored by ``||grad_x E(x)||^2`` (:meth:`MEG.anomaly_score`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_ebm.models.generator_ebm import GeneratorEBM
from lightning_ebm.models.objectives import jsd_mutual_information
from lightning_ebm.optim import LRSchedulerCallable, OptimizerCallable, spec
from lightning_ebm.samplers.langevin import langevin_dynamics, mala
from lightning_ebm.scores import AnomalyScore, anomaly_scores
from lightning_ebm.utils import check_bounds, check_choices, eval_mode

#: The paper's optimiser for every player: Adam, 1e-4, betas (0.5, 0.9); PyTorch's fused kernel
#: (one update per parameter tensor), about 5% faster per KDD99 step on a CPU.
ADAM = spec("torch.optim.Adam", lr=1e-4, betas=[0.5, 0.9], fused=True)
MCMC = Literal["none", "latent", "visible"]


class MEG(GeneratorEBM):
    """Kumar et al. (2019): an energy trained against a maximum-entropy generator.

    Args:
        energy_net: ``E``, mapping a batch to one number per example (``(B,)`` or ``(B, 1)``).
        generator: ``G``, mapping ``(B, latent_dim)`` to ``(B, *data_shape)``.
        statistics_net: ``T(x, z)``, mapping a batch of pairs to one logit per pair.
        data_shape: shape of one example.
        latent_dim: size of ``z ~ N(0, I)``.
        gradient_penalty: weight ``lambda`` of the zero-centred gradient penalty on real data.
        energy_steps: energy updates per generator update (5 on toys and images, 1 on KDD99).
        energy_optimizer: the energy's optimiser; ``generator_optimizer`` and ``statistics_optimizer``
            likewise (the paper: Adam, 1e-4, betas 0.5, 0.9 for all three).
        lr_schedule: the schedule of all three (None: constant rates, the paper; ``linear_decay_start``
            of ``lightning_ebm.optim.Schedule`` makes a short run end on a settled pair of players
            instead of wherever the game's oscillation happens to be).
        mi_weight: weight of ``I_JSD`` in the generator's loss (1 in the paper).
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
        fused_step: run each training step as one captured CUDA graph on a GPU (:mod:`lightning_ebm.fused`);
            the eager step otherwise.
    """

    def __init__(
        self,
        energy_net: nn.Module,
        generator: nn.Module,
        statistics_net: nn.Module,
        data_shape: Sequence[int] = (2,),
        latent_dim: int = 2,
        gradient_penalty: float = 0.1,
        energy_steps: int = 5,
        energy_optimizer: OptimizerCallable = ADAM,
        generator_optimizer: OptimizerCallable = ADAM,
        statistics_optimizer: OptimizerCallable = ADAM,
        lr_schedule: LRSchedulerCallable | None = None,
        mi_weight: float = 1.0,
        mcmc: MCMC = "none",
        mcmc_steps: int = 0,
        mcmc_step_size: float = 0.01,
        mcmc_temperature: float = 1.0,
        mcmc_latent_prior: bool = True,
        mcmc_metropolis: bool = True,
        anomaly_score: AnomalyScore = "gradient_norm",
        fused_step: bool = False,
    ) -> None:
        super().__init__(data_shape, fused_step)
        self.save_hyperparameters()
        check_bounds(
            positive=dict(latent_dim=latent_dim, energy_steps=energy_steps, mcmc_step_size=mcmc_step_size,
                          mcmc_temperature=mcmc_temperature),
            non_negative=dict(gradient_penalty=gradient_penalty, mi_weight=mi_weight, mcmc_steps=mcmc_steps),
        )  # fmt: skip
        self.energy_net = energy_net
        self.generator = generator
        self.statistics_net = statistics_net
        self.check_networks()

    def generator_players(self) -> list[tuple[str, nn.Module, object]]:
        """``G`` and ``T`` train on the same objective."""
        hp = self.hparams
        return [
            ("generator", self.generator, hp.generator_optimizer),
            ("statistics", self.statistics_net, hp.statistics_optimizer),
        ]

    @property
    def generator_period(self) -> int:
        return self.hparams.energy_steps

    # ------------------------------------------------------------------ sampling and anomaly scores
    @torch.no_grad()
    def sample(self, num_samples: int, z: Tensor | None = None, mcmc: MCMC | None = None) -> Tensor:
        """Samples ``G(z)``, refined by the configured MCMC (``mcmc`` overrides it for this call).

        The generator is in evaluation mode (batch norm uses its running statistics). With MCMC the
        mean acceptance rate of the chains is kept in :attr:`last_acceptance_rate`.
        """
        hp = self.hparams
        mode = hp.mcmc if mcmc is None else mcmc
        check_choices(MEG.sample, {"mcmc": mode})
        z = self.latent(num_samples) if z is None else z.to(self.device)
        with eval_mode(self.generator):
            if mode == "latent" and hp.mcmc_steps > 0:
                prior = "normal" if hp.mcmc_latent_prior else "none"
                z = self.latent_chain(z, hp.mcmc_steps, hp.mcmc_step_size, hp.mcmc_temperature, prior)
            x = self.generator(z)
            if mode == "visible" and hp.mcmc_steps > 0:
                if hp.mcmc_metropolis:
                    x, accepted = mala(self.energy, x, hp.mcmc_steps, hp.mcmc_step_size, hp.mcmc_temperature)
                    self.last_acceptance_rate = accepted.mean()
                else:
                    noise = (2 * hp.mcmc_step_size * hp.mcmc_temperature) ** 0.5  # invariant law ~ exp(-E / T)
                    x = langevin_dynamics(self.energy, x, hp.mcmc_steps, hp.mcmc_step_size, noise)
            return x

    def anomaly_score(self, x: Tensor, score: AnomalyScore | None = None) -> Tensor:
        """``||grad_x E(x)||^2`` (``gradient_norm``, the paper's score) or ``E(x)`` per example."""
        return anomaly_scores(self.energy, x, score or self.hparams.anomaly_score)

    # ------------------------------------------------------------------ the generator's loss
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
