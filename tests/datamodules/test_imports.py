"""The data modules stand alone: importing them loads no model, network, evaluation or callback code
(a data module may be used without them, and a broken model cannot break data loading)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_data_modules_imports_no_model_evaluation_or_callback_code() -> None:
    code = (
        "import sys, lightning_ebm.datamodules; "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('lightning_ebm'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "lightning_ebm.datamodules.stacked_mnist" in loaded  # the subprocess did import the package
    for package in ("lightning_ebm.models", "lightning_ebm.evaluation", "lightning_ebm.callbacks", "lightning_ebm.nn"):
        assert not [m for m in loaded if m == package or m.startswith(package + ".")], package


def test_mode_ids_live_in_the_stacked_mnist_module_and_are_re_exported_by_evaluation() -> None:
    from lightning_ebm import datamodules
    from lightning_ebm.datamodules import stacked_mnist
    from lightning_ebm.evaluation import mode_digits, mode_ids, modes

    assert mode_ids is modes.mode_ids is datamodules.mode_ids is stacked_mnist.mode_ids
    assert mode_digits is modes.mode_digits is datamodules.mode_digits is stacked_mnist.mode_digits
