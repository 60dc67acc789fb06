"""Mode metrics of a trained 2D-toy checkpoint (DEM or MEG) under different samplers.

The generator alone, and latent-space MALA (``lightning_ebm.samplers.latent_mala``) at the given
temperatures, step counts and step sizes, on the same checkpoint: the VEEGAN/PacGAN metrics
(modes covered, fraction of high-quality samples, KL to the uniform mode histogram) and the chains'
acceptance rate; and two checks of the energy itself: how many centres are strict local minima and
the share of ``exp(-E)`` near the modes and how much sharper its basins are than the data's modes
(``evaluation.modes_at_energy_minima``, ``mass_near_modes``, ``mode_sharpness``).
Example::

    python benchmarks/toy_sampler.py lightning_logs/meg_toy/version_0/checkpoints/last.ckpt \\
        --samplers 0.005:500:5e-4 0.003:500:5e-4 --num-samples 1000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lightning_ebm, not an installed one
from lightning_ebm.datamodules import mode_centres  # noqa: E402
from lightning_ebm.evaluation import mass_near_modes, mode_metrics, mode_sharpness, modes_at_energy_minima  # noqa: E402
from lightning_ebm.models import DEM, MEG  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--data", default="25gaussians", help="25gaussians or 8gaussians")
    parser.add_argument("--samplers", nargs="+", default=["1:0:1e-3"], help="T:STEPS:STEP_SIZE (0 steps: G(z))")
    parser.add_argument("--num-samples", type=int, default=2500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    method = MEG if "statistics_net" in str(state["hyper_parameters"]) else DEM
    model = method.load_from_checkpoint(args.checkpoint, map_location="cpu").eval()
    centres, std = mode_centres(args.data)
    print(f"{method.__name__}, epoch {state['epoch']}, {args.num_samples} samples")
    with torch.no_grad():
        minima = modes_at_energy_minima(model.energy, centres, radius=0.1)
        mass = mass_near_modes(model.energy, centres, std)
        sharpness = mode_sharpness(model.energy, centres, std)
    print(f"energy: {minima} of {len(centres)} centres are strict local minima (ring of radius 0.1), "
          f"mass of exp(-E) within 3 std of the modes {mass:.3f}, basins {sharpness:.1f} times as sharp "
          f"as the data's modes (evaluation.mode_sharpness)")  # fmt: skip
    for spec in args.samplers:
        temperature, steps, step_size = spec.split(":")
        hp = model.hparams
        hp.mcmc_temperature, hp.mcmc_steps, hp.mcmc_step_size = float(temperature), int(steps), float(step_size)
        if method is MEG:
            hp.mcmc = "latent" if int(steps) > 0 else "none"
        model.last_acceptance_rate = None
        torch.manual_seed(args.seed)
        metrics = mode_metrics(model.sample(args.num_samples), centres, std)
        rate = model.last_acceptance_rate
        accept = f", acceptance {float(rate):.3f}" if rate is not None and int(steps) > 0 else ""
        print(f"T {temperature} steps {steps} step {step_size}: modes {metrics['modes']:.0f}, "
              f"high quality {metrics['hq_fraction']:.3f}, KL {metrics['kl']:.3f}{accept}")  # fmt: skip


if __name__ == "__main__":
    main()
