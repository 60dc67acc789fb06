"""Where the tests find real data, and how they skip where it is absent."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

#: Real data for tests: ``../shared/data`` next to the repository on the project's machines, or the
#: folder named by ``LIGHTNING_EBM_SHARED_DATA``. Tests that need it skip where it is absent.
SHARED_DATA = Path(os.environ.get("LIGHTNING_EBM_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
MNIST_TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def real_mnist_dir(tmp_path: Path) -> Path:
    """A ``data_dir`` with copies of the real MNIST test split in torchvision's layout (``MNIST/raw/``);
    skips the calling test where the files are absent."""
    source = SHARED_DATA / "mnist"
    if not all((source / name).is_file() for name in MNIST_TEST_FILES):
        pytest.skip(f"the real MNIST test files ({', '.join(MNIST_TEST_FILES)}) are not in {source}")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in MNIST_TEST_FILES:
        shutil.copyfile(source / name, raw / name)
    return tmp_path


def idx_bytes(array: torch.Tensor, magic: int | None = None) -> bytes:
    """An IDX file (big-endian header, uint8 payload) holding ``array``."""
    magic = magic if magic is not None else (2051 if array.dim() == 3 else 2049)
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.to(torch.uint8).contiguous().numpy().tobytes()


def fake_mnist(data_dir: Path, n_train: int = 100, n_test: int = 20, gz: bool = False) -> dict[str, torch.Tensor]:
    """Write all four MNIST files of random content into ``data_dir/MNIST/raw/``."""
    g = torch.Generator().manual_seed(123)
    arrays = {
        "train-images-idx3-ubyte": torch.randint(0, 256, (n_train, 28, 28), generator=g),
        "train-labels-idx1-ubyte": torch.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": torch.randint(0, 256, (n_test, 28, 28), generator=g),
        "t10k-labels-idx1-ubyte": torch.arange(n_test) % 10,
    }
    raw = data_dir / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (raw / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (raw / name).write_bytes(data)
    return arrays


PROTOCOLS, SERVICES, FLAGS = ("tcp", "udp", "icmp"), ("http", "smtp", "ftp", "ecr_i"), ("SF", "S0", "REJ")
ATTACKS = ("smurf.", "neptune.", "back.")


def kdd_lines(n: int, seed: int = 0, normal_share: float = 0.2) -> list[str]:
    """``n`` connections in the file's format: 41 comma-separated features, then the label with a dot."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        fields = [str(int(rng.integers(0, 1000))) for _ in range(41)]
        fields[1], fields[2], fields[3] = rng.choice(PROTOCOLS), rng.choice(SERVICES), rng.choice(FLAGS)
        for i in (6, 11, 21):
            fields[i] = str(int(rng.integers(0, 2)))
        fields[20] = "0"
        fields[24] = f"{rng.random():.2f}"  # a rate column
        label = "normal." if rng.random() < normal_share else str(rng.choice(ATTACKS))
        lines.append(",".join(fields + [label]))
    return lines


def write_kdd(directory: Path, lines: list[str], gz: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = ("\n".join(lines) + "\n").encode()
    path = directory / ("kddcup.data_10_percent.gz" if gz else "kddcup.data_10_percent")
    path.write_bytes(gzip.compress(text) if gz else text)
    return path
