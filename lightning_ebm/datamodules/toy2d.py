"""2D toy distributions, with the formulas and scales of the reference code.

* ``25gaussians``, ``8gaussians``, ``swissroll``: as in the WGAN-GP code (Gulrajani et al. 2017),
  which the MEG paper reuses.
* ``rings``, ``checkerboard``, ``2spirals``: as in the FFJORD code (Grathwohl et al. 2019).

The Gaussian mixtures expose their mode centres and standard deviation, which
:func:`lightning_ebm.evaluation.mode_metrics` (and the ``ToyModeMetrics`` callback) use.
"""

from __future__ import annotations

import math
import typing
from typing import Literal

import lightning as L
import torch
from torch import Tensor

from lightning_ebm.datamodules.utils import InMemoryLoaders, check_at_least, check_options, first_non_finite
from lightning_ebm.errors import UserError

ToyName = Literal["swissroll", "8gaussians", "25gaussians", "rings", "checkerboard", "2spirals"]
TOY_NAMES = typing.get_args(ToyName)


def mode_centres(name: str) -> tuple[Tensor, float] | None:
    """The ``(centres, std)`` of a Gaussian-mixture toy (after scaling), or None for the others."""
    if name == "25gaussians":
        grid = torch.arange(-2, 3, dtype=torch.float32) * 2.0
        centres = torch.cartesian_prod(grid, grid)
        return centres / 2.828, 0.05 / 2.828
    if name == "8gaussians":
        r = 1.0 / math.sqrt(2)
        unit = [(1, 0), (-1, 0), (0, 1), (0, -1), (r, r), (r, -r), (-r, r), (-r, -r)]
        return torch.tensor(unit, dtype=torch.float32) * 2.0 / 1.414, 0.02 / 1.414
    return None


def sample_toy2d(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` points of the toy distribution ``name``, as a float32 tensor ``(n, 2)``."""

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator, dtype=torch.float64)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    if name == "25gaussians":
        # WGAN-GP: the 25 centres in turn (equal counts), std 0.05, all divided by 2.828.
        centres, _ = mode_centres(name)  # type: ignore[misc]
        c = centres.double()[torch.arange(n) % 25] * 2.828
        x = (c + 0.05 * randn(n, 2)) / 2.828
        x = x[torch.randperm(n, generator=generator)]
    elif name == "8gaussians":
        # WGAN-GP: a random centre on the circle of radius 2, std 0.02, divided by 1.414.
        centres, _ = mode_centres(name)  # type: ignore[misc]
        idx = torch.randint(0, 8, (n,), generator=generator)
        x = (centres.double()[idx] * 1.414 + 0.02 * randn(n, 2)) / 1.414
    elif name == "swissroll":
        # scikit-learn's make_swiss_roll(noise=0.25), columns (0, 2), divided by 7.5.
        t = 1.5 * math.pi * (1 + 2 * rand(n))
        x = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) + 0.25 * randn(n, 2)
        x = x / 7.5
    elif name == "rings":
        # FFJORD: four circles of radii 1, .75, .5, .25 (times 3), noise 0.08.
        sizes = [n // 4] * 3 + [n - 3 * (n // 4)]
        parts = []
        for radius, m in zip((1.0, 0.75, 0.5, 0.25), sizes):
            angle = torch.arange(m, dtype=torch.float64) * (2 * math.pi / max(m, 1))
            parts.append(radius * torch.stack([torch.cos(angle), torch.sin(angle)], 1))
        x = torch.cat(parts) * 3.0
        x = x[torch.randperm(n, generator=generator)] + 0.08 * randn(n, 2)
    elif name == "checkerboard":
        # FFJORD: 8 squares of a 4x4 checkerboard on [-4, 4]^2.
        x1 = rand(n) * 4 - 2
        x2 = rand(n) - torch.randint(0, 2, (n,), generator=generator).double() * 2
        x2 = x2 + torch.floor(x1) % 2
        x = torch.stack([x1, x2], 1) * 2
    elif name == "2spirals":
        # FFJORD: two interleaved spirals.
        half = (n + 1) // 2  # an odd n draws one point more and drops the last of the mirrored spiral
        t = torch.sqrt(rand(half, 1)) * 540 * (2 * math.pi) / 360
        d1 = torch.cat([-torch.cos(t) * t + rand(half, 1) * 0.5, torch.sin(t) * t + rand(half, 1) * 0.5], 1)
        x = torch.cat([d1, -d1])[:n] / 3
        x = x + 0.1 * randn(n, 2)
    else:
        raise UserError(f"unknown toy data set {name!r}; choose one of {', '.join(TOY_NAMES)}")
    return x.float()


class Toy2DDataModule(InMemoryLoaders, L.LightningDataModule):
    """2D toy data: a fixed training set and a held-out validation set, drawn from a seed.

    Batches are plain ``(batch, 2)`` tensors, or ``(x, y)`` pairs with ``labels``, where ``y`` is the
    mixture component of the point (its nearest centre; Gaussian mixtures only), for classifiers
    and class-conditional models such as JEM. The same ``seed`` gives the same points.

    Args:
        name: one of ``swissroll``, ``8gaussians``, ``25gaussians``, ``rings``, ``checkerboard``,
            ``2spirals``.
        num_samples: size of the training set.
        batch_size: examples per training batch (per process under DDP).
        seed: seed of the data (independent of the training seed).
        num_val_samples: size of the validation set (2,500 is customary for the mode metrics).
        labels: yield ``(x, y)`` with ``y`` the index of the nearest mixture centre (``8gaussians``
            and ``25gaussians`` only).
    """

    def __init__(
        self,
        name: ToyName = "25gaussians",
        num_samples: int = 100_000,
        batch_size: int = 256,
        seed: int = 0,
        num_val_samples: int = 2_500,
        labels: bool = False,
    ) -> None:
        super().__init__()
        check_options(type(self).__init__, locals())
        check_at_least(1, batch_size=batch_size, num_val_samples=num_val_samples)
        if labels and mode_centres(name) is None:
            raise UserError(
                f"labels: true needs a Gaussian mixture whose components are the classes (8gaussians or "
                f"25gaussians); {name!r} has none"
            )
        if num_samples < batch_size:
            raise UserError(f"num_samples ({num_samples}) must be at least batch_size ({batch_size})")
        self.save_hyperparameters()
        self.name = name
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.num_val_samples = num_val_samples
        self.labels = labels
        modes = mode_centres(name)
        #: ``(K, 2)`` mode centres of the Gaussian mixtures (None for the other toys).
        self.centres: Tensor | None = modes[0] if modes else None
        #: standard deviation of each mixture component (None for the other toys).
        self.std: float | None = modes[1] if modes else None

    @property
    def data_shape(self) -> tuple[int, ...]:
        return (2,)

    @property
    def num_classes(self) -> int | None:
        """Number of mixture components (the classes with ``labels``), None for the other toys."""
        return None if self.centres is None else self.centres.shape[0]

    def component(self, x: Tensor) -> Tensor:
        """Index of the nearest mixture centre of each point (its component, for these well separated mixtures)."""
        assert self.centres is not None
        return torch.cdist(x, self.centres).argmin(1)

    def setup(self, stage: str | None = None) -> None:
        if self.train_data is None:
            g = torch.Generator().manual_seed(self.seed)
            train = sample_toy2d(self.name, self.num_samples, g)
            val = sample_toy2d(self.name, self.num_val_samples, g)
            for split, x in (("training", train), ("validation", val)):
                bad = first_non_finite(x)
                if bad is not None:  # a formula gone wrong must not train silently on NaN
                    raise UserError(
                        f"toy data set {self.name!r} drew a non-finite point ({x[bad[0]].tolist()}) at index "
                        f"{bad[0]} of its {split} set (seed {self.seed}); this is a bug of sample_toy2d: report it"
                    )
            self.train_data, self.val_data = train, val
            if self.centres is not None:
                self.train_labels, self.val_labels = self.component(self.train_data), self.component(self.val_data)

    def split_tensors(self, split: str) -> tuple[Tensor, ...]:
        """``(x,)``, or ``(x, y)`` with ``labels``; the test split is the validation set."""
        split = "val" if split == "test" else split
        x, y = getattr(self, f"{split}_data"), getattr(self, f"{split}_labels")
        assert x is not None, "call setup() first"
        return (x, y) if self.labels and y is not None else (x,)
