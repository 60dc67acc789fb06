"""Where the tests find real data, and how they skip where it is absent."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

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


# ------------------------------------------------------------------ image data sets in their on-disk formats
def write_cifar10(data_dir: Path, per_batch: int = 20, n_test: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    """The six batch pickles and batches.meta in torchvision's layout, random content."""
    rng = np.random.default_rng(seed)
    folder = data_dir / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", n_test)]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        entry = {b"batch_label": f"{name} of 5".encode(), b"labels": labels, b"data": data, b"filenames": []}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        written[name] = data
    meta = {
        b"num_cases_per_batch": per_batch,
        b"label_names": [f"class{i}".encode() for i in range(10)],
        b"num_vis": 3072,
    }
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return written


def jpeg_bytes(rng: np.random.Generator, width: int, height: int, fmt: str = "JPEG") -> bytes:
    blocks = rng.integers(0, 2, size=(4, 4, 3), dtype=np.uint8) * 255  # large blocks, so resizing keeps 0 and 255
    image = Image.fromarray(blocks).resize((width, height), Image.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def write_celeba(data_dir: Path, counts: tuple[int, int, int] = (10, 4, 3)) -> Path:
    """img_align_celeba/*.jpg (178 x 218) and list_eval_partition.txt for a few images."""
    rng = np.random.default_rng(0)
    folder = data_dir / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    lines, index = [], 1
    for code, count in enumerate(counts):
        for _ in range(count):
            name = f"{index:06d}.jpg"
            (folder / "img_align_celeba" / name).write_bytes(jpeg_bytes(rng, 178, 218))
            lines.append(f"{name} {code}")
            index += 1
    (folder / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return folder


def write_lsun_lmdb(path: Path, n: int, fmt: str = "WEBP") -> None:
    """An LMDB database of ``n`` encoded images of various sizes under hex keys, as in LSUN's release."""
    lmdb = pytest.importorskip("lmdb")
    rng = np.random.default_rng(1)
    env = lmdb.open(str(path), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i in range(n):
            width, height = (90 + 3 * i, 64 + 2 * i) if i % 2 else (64 + i, 100)
            txn.put(f"{i:040x}".encode(), jpeg_bytes(rng, width, height, fmt))
    env.close()


# ------------------------------------------------------------------ unreadable data
def deny_reading(monkeypatch: pytest.MonkeyPatch, *denied: Path) -> None:
    """Make ``denied`` paths behave as after ``chmod 000`` for a user other than root (the tests run as
    root, whom chmod does not stop): ``os.access`` says no, opening, listing or scanning them (or anything
    under them) raises ``PermissionError``, and what lies under a denied folder cannot be seen
    (``os.path.isfile`` and friends say False, as ``stat`` fails there)."""
    import builtins
    import errno

    roots = [os.path.abspath(p) for p in denied]

    def at_or_under(path: object) -> bool:
        if isinstance(path, int):  # a file descriptor
            return False
        p = os.path.abspath(os.fsdecode(path))
        return any(p == r or p.startswith(r + os.sep) for r in roots)

    def strictly_under(path: object) -> bool:
        p = os.path.abspath(os.fsdecode(path))
        return any(p.startswith(r + os.sep) for r in roots)

    def refuse(path: object) -> PermissionError:
        return PermissionError(errno.EACCES, "Permission denied", os.fspath(path))

    def guarded(real):  # noqa: ANN001, ANN202
        def wrapper(path=".", *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            if at_or_under(path):
                raise refuse(path)
            return real(path, *args, **kwargs)

        return wrapper

    def hidden(real):  # noqa: ANN001, ANN202
        def wrapper(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            return False if not isinstance(path, int) and strictly_under(path) else real(path, *args, **kwargs)

        return wrapper

    def access(path, mode, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        return False if at_or_under(path) else real_access(path, mode, *args, **kwargs)

    real_access = os.access
    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(builtins, "open", guarded(builtins.open))
    monkeypatch.setattr(io, "open", guarded(io.open))
    monkeypatch.setattr(os, "listdir", guarded(os.listdir))
    monkeypatch.setattr(os, "scandir", guarded(os.scandir))
    for name in ("isfile", "isdir", "exists"):
        monkeypatch.setattr(os.path, name, hidden(getattr(os.path, name)))
