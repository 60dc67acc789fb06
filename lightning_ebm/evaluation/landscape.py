"""The model density ``exp(-E)`` over a grid of the plane, for 2D data: plots, and a check for
spurious modes (probability mass that the energy puts away from every mode of the data, and local
minima of the energy away from them); and how sharp the energy's basins at the modes are compared
with the data's own."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

EnergyFn = Callable[[Tensor], Tensor]


@torch.no_grad()
def density_grid(
    energy: EnergyFn,
    bounds: tuple[float, float, float, float],
    resolution: int = 200,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor, Tensor]:
    """``log exp(-E)`` on a ``resolution x resolution`` grid, normalised so that ``exp`` sums to one.

    Args:
        energy: the model's ``energy`` (a batch of points ``(n, 2)`` to ``(n,)``).
        bounds: ``(xmin, xmax, ymin, ymax)``.
        resolution: grid points per axis.
        device: where the energy is evaluated (the model's device).

    Returns:
        The grid's x and y coordinates and the log of the normalised density, each shaped
        ``(resolution, resolution)``, on the CPU.
    """
    x0, x1, y0, y1 = bounds
    xs = torch.linspace(x0, x1, resolution)
    ys = torch.linspace(y0, y1, resolution)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    points = torch.stack([gx.flatten(), gy.flatten()], 1).to(device)
    energies = torch.cat([energy(chunk).float() for chunk in points.split(16384)])
    # normalised in float64: a float32 log-sum-exp over 40,000 points is off by a few 1e-6
    log_density = torch.log_softmax(-energies.cpu().double(), 0).float().view(resolution, resolution)
    return gx, gy, log_density


@torch.no_grad()
def mass_near_modes(
    energy: EnergyFn,
    centres: Tensor,
    std: float,
    threshold: float = 3.0,
    device: torch.device | str = "cpu",
) -> float:
    """Share of the model density ``exp(-E)`` within ``threshold`` std of the nearest mode centre.

    The density is normalised over a grid around the modes (their bounding box plus a quarter of its
    size, or 6 std, on every side) with a spacing of half a std, fine enough to resolve each mode. A
    model with no spurious modes puts all its mass on the data's modes: for the data's own Gaussian
    mixture the share is ``P(chi^2_2 < threshold^2) = 1 - exp(-threshold^2 / 2)`` (0.989 at 3 std);
    mass on ridges between the modes or in spurious basins lowers it.

    Args:
        energy: the model's ``energy`` on 2D points.
        centres: ``(K, 2)`` mode centres.
        std: standard deviation of each mode.
        threshold: radius around each centre in units of ``std``.
        device: where the energy is evaluated.
    """
    centres = centres.float().cpu()
    gx, gy, log_density = _density_around_modes(energy, centres, std, device)
    points = torch.stack([gx.flatten(), gy.flatten()], 1)
    near = torch.cdist(points, centres).min(1).values < threshold * std
    return float(log_density.flatten()[near].exp().sum())


def _density_around_modes(
    energy: EnergyFn, centres: Tensor, std: float, device: torch.device | str
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`density_grid` over the modes' bounding box plus a margin (a quarter of its size, at least
    6 std), with half a std between points: the grid of :func:`mass_near_modes` and :func:`spurious_minima`."""
    return density_grid(energy, *_grid_around(centres, 0.5 * std, 6.0 * std), device)


def _grid_around(centres: Tensor, spacing: float, min_margin: float) -> tuple[tuple[float, ...], int]:
    """Bounds and resolution of a square grid over the centres' bounding box plus a quarter of its size
    (at least ``min_margin``) on every side, with about ``spacing`` between points."""
    lo, hi = centres.min(0).values, centres.max(0).values
    margin = max(0.25 * float((hi - lo).max()), min_margin)
    bounds = (float(lo[0]) - margin, float(hi[0]) + margin, float(lo[1]) - margin, float(hi[1]) + margin)
    size = max(bounds[1] - bounds[0], bounds[3] - bounds[2])
    return bounds, math.ceil(size / spacing) + 1


@torch.no_grad()
def modes_at_energy_minima(
    energy: EnergyFn, centres: Tensor, radius: float, num_directions: int = 16, device: torch.device | str = "cpu"
) -> int:
    """How many mode centres are strict local minima of the energy: lower than all ``num_directions``
    points of the ring of ``radius`` around them ("low energy at the modes", checked point by point).

    Args:
        energy: the model's ``energy`` on 2D points.
        centres: ``(K, 2)`` mode centres.
        radius: radius of the ring (a fraction of the mode's std or more, e.g. 0.1 for the toy grids).
        num_directions: points on each ring, evenly spaced.
        device: where the energy is evaluated.
    """
    centres = centres.float().to(device)
    angles = torch.arange(num_directions, device=device) * (2 * math.pi / num_directions)
    ring = radius * torch.stack([angles.cos(), angles.sin()], 1)
    at_centres = energy(centres)
    on_rings = energy((centres[:, None, :] + ring[None]).reshape(-1, 2)).view(len(centres), num_directions)
    return int((at_centres[:, None] < on_rings).all(1).sum())


@torch.no_grad()
def spurious_minima(
    energy: EnergyFn,
    centres: Tensor,
    std: float,
    radius: float = 6.0,
    min_depth: float = 0.1,
    device: torch.device | str = "cpu",
) -> int:
    """How many basins the energy has away from every mode: spurious low-energy regions between modes.

    The energy is evaluated on the grid of :func:`mass_near_modes` (the modes' bounding box plus a
    margin, spacing half a std); a grid point is a local minimum when it is strictly lower than its
    eight neighbours (points on the grid's border are not counted). A minimum farther than ``radius``
    std from every centre is spurious when it is a basin: on the straight segment to its nearest centre
    the energy rises more than ``min_depth`` nats above it (a numerical dimple on a slope into a mode
    is not one). The data's own mixture has none; an extra component between two modes is one.

    Args:
        energy: the model's ``energy`` on 2D points.
        centres: ``(K, 2)`` mode centres.
        std: standard deviation of each mode.
        radius: how far from a centre (in std) a minimum still belongs to that mode.
        min_depth: how deep (in nats) a minimum's basin must be to count.
        device: where the energy is evaluated.
    """
    centres = centres.float().cpu()
    gx, gy, log_density = _density_around_modes(energy, centres, std, device)
    neighbours = torch.nn.functional.unfold(log_density[None, None].double(), 3).view(9, -1)  # 3x3 windows
    is_minimum = (neighbours[4][None] > torch.cat([neighbours[:4], neighbours[5:]])).all(0)  # lowest energy
    points = torch.stack([gx[1:-1, 1:-1].flatten(), gy[1:-1, 1:-1].flatten()], 1)[is_minimum]
    distances = torch.cdist(points, centres)
    far = distances.min(1).values > radius * std
    if not far.any():
        return 0
    points, nearest = points[far], centres[distances[far].argmin(1)]
    steps = torch.linspace(0, 1, 101)[None, :, None]
    segments = (points[:, None] + steps * (nearest - points)[:, None]).reshape(-1, 2).to(device)
    energies = torch.cat([energy(chunk).double().cpu() for chunk in segments.split(16384)]).view(len(points), -1)
    depth = energies.max(1).values - energies[:, 0]
    return int((depth > min_depth).sum())


@torch.no_grad()
def mode_sharpness(energy: EnergyFn, centres: Tensor, std: float, device: torch.device | str = "cpu") -> float:
    """How much sharper the energy's basins at the modes are than the data's: the curvature of ``E`` at
    the mode centres times ``std^2`` (median over the centres).

    The curvature along each axis is the central second difference ``(E(c + h e) + E(c - h e) - 2 E(c)) / h^2``
    with ``h = std``, averaged over the axes. For the data's own Gaussian mixture, ``E = ||x - c||^2 /
    (2 std^2) + const`` near a centre, so the figure is 1; an energy ``k`` times as sharp gives ``k``.
    It is also the temperature ``T`` at which ``exp(-E / T)`` has basins as wide as the data's modes:
    a sampler at ``T = 1`` on an energy of sharpness 100 moves in basins a tenth of a mode's width.

    Args:
        energy: the model's ``energy`` on points ``(n, D)``.
        centres: ``(K, D)`` mode centres.
        std: standard deviation of each mode.
        device: where the energy is evaluated.
    """
    centres = centres.double().to(device)
    dims = centres.shape[1]
    offsets = std * torch.eye(dims, dtype=centres.dtype, device=device)
    shifted = centres[:, None] + torch.stack([offsets, -offsets])[:, None]  # (2, K, D, D): c + h e, c - h e
    points = torch.cat([centres, shifted.flatten(0, 2)])
    energies = energy(points.to(torch.get_default_dtype())).double()
    at_centres, plus, minus = energies.split([len(centres), len(centres) * dims, len(centres) * dims])
    curvature = (plus.view(-1, dims) + minus.view(-1, dims) - 2 * at_centres[:, None]) / std**2  # (K, D)
    return float(curvature.mean(1).median() * std**2)
