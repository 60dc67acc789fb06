"""Evaluation of trained models; uses only the ``energy`` / ``sample`` contract, plus the exact and
AIS partition functions of the Boltzmann machines."""

from lightning_ebm.evaluation.anomaly import (
    anomaly_metrics,
    anomaly_scores,
    threshold_free_metrics,
    top_fraction_metrics,
)
from lightning_ebm.evaluation.calibration import calibration_bins, expected_calibration_error, reliability_diagram
from lightning_ebm.evaluation.landscape import (
    density_grid,
    mass_near_modes,
    mode_sharpness,
    modes_at_energy_minima,
    spurious_minima,
)
from lightning_ebm.evaluation.likelihood import (
    estimate_log_partition,
    exact_log_likelihood,
    exact_log_partition,
    log_likelihood,
)
from lightning_ebm.evaluation.modes import mode_digits, mode_histogram_metrics, mode_ids, mode_metrics
from lightning_ebm.evaluation.ood import OOD_SCORES, ood_auroc, ood_scores

__all__ = [
    "OOD_SCORES",
    "calibration_bins",
    "expected_calibration_error",
    "ood_auroc",
    "ood_scores",
    "reliability_diagram",
    "anomaly_metrics",
    "anomaly_scores",
    "threshold_free_metrics",
    "top_fraction_metrics",
    "density_grid",
    "mass_near_modes",
    "mode_sharpness",
    "modes_at_energy_minima",
    "spurious_minima",
    "estimate_log_partition",
    "exact_log_likelihood",
    "exact_log_partition",
    "log_likelihood",
    "mode_digits",
    "mode_histogram_metrics",
    "mode_ids",
    "mode_metrics",
]
