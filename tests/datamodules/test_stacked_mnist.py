"""StackedMNIST: shapes, ranges, split sizes, seeding, independent channels with the right labels, the
mode id, and clear errors; on the real MNIST test split (skipped where absent) and on small fake files."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
import torch
from helpers.data import fake_mnist, real_mnist_dir
from scipy import stats

from lightning_ebm.datamodules import MNISTDataModule, StackedMNISTDataModule, mode_digits, mode_ids
from lightning_ebm.errors import UserError


def stacked(data_dir: Path, **kwargs) -> StackedMNISTDataModule:
    kwargs = {"source": "test-split", "val_size": 1000, "test_size": 2000, **kwargs}
    dm = StackedMNISTDataModule(str(data_dir), **kwargs)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return real_mnist_dir(tmp_path_factory.mktemp("mnist"))


@pytest.mark.parametrize("num_stacks", [3, 4])
def test_real_shapes_ranges_and_split_sizes(real_dir: Path, num_stacks: int) -> None:
    dm = stacked(real_dir, num_stacks=num_stacks, num_val=3000, num_test=500)
    assert dm.train_stacks.shape == (128 * 10**num_stacks, num_stacks)  # 128,000 or 1,280,000 by default
    assert dm.val_stacks.shape == (3000, num_stacks) and dm.test_stacks.shape == (500, num_stacks)
    assert dm.digits.shape == (10_000, 28, 28) and dm.digit_ranges == {
        "train": (0, 7000), "val": (7000, 8000), "test": (8000, 10_000)}  # fmt: skip
    for split in ("train", "val", "test"):  # each split's stacks use its own digits only
        low, high = dm.digit_ranges[split]
        s = dm.stacks(split)
        assert low <= int(s.min()) and int(s.max()) < high
    assert dm.data_shape == (num_stacks, 28, 28) and dm.num_modes == 10**num_stacks

    x, y = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert x.shape == (64, num_stacks, 28, 28) and x.dtype == torch.float32
    assert y.shape == (64, num_stacks) and y.dtype == torch.int64
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert len(dm.train_dataloader()) == 128 * 10**num_stacks // 64
    val = [dm.on_after_batch_transfer(b, 0) for b in dm.val_dataloader()]
    assert sum(v[0].shape[0] for v in val) == 3000  # in order, nothing dropped
    assert torch.equal(torch.cat([v[1] for v in val]), dm.stack_labels("val"))

    unit = stacked(real_dir, num_stacks=num_stacks, value_range="unit", num_train=1000)
    assert float(unit.digits.min()) == 0.0 and float(unit.digits.max()) == 1.0
    torch.testing.assert_close(unit.digits * 2 - 1, dm.digits)


def test_channels_are_the_source_digits_with_their_labels(real_dir: Path) -> None:
    """Compose, then check every channel against MNISTDataModule's image and label of the same split."""
    dm = stacked(real_dir, num_stacks=3, num_train=5000)
    mnist = MNISTDataModule(str(real_dir), source="test-split", val_size=1000, test_size=2000, value_range="symmetric")
    mnist.setup()
    for split, images, labels in (("train", mnist.train_data, mnist.train_labels),
                                  ("test", mnist.test_data, mnist.test_labels)):  # fmt: skip
        indices = dm.stacks(split)[:300]
        x, y = dm.compose(indices)
        local = indices - dm.digit_ranges[split][0]  # positions among the split's digit images
        for c in range(3):
            assert torch.equal(x[:, c], images[local[:, c], 0])
            assert torch.equal(y[:, c], labels[local[:, c]])
        assert torch.equal(y, dm.stack_labels(split)[:300])


def test_channels_are_independent_and_uniform(real_dir: Path) -> None:
    """Digits of two channels: a chi-square test of independence over the 128,000 training stacks, and
    each channel's image indices are uniform over the training digits."""
    dm = stacked(real_dir, num_stacks=3)
    labels = dm.stack_labels("train")
    for a, b in ((0, 1), (0, 2), (1, 2)):
        table = torch.zeros(10, 10)
        table.index_put_((labels[:, a], labels[:, b]), torch.ones(labels.shape[0]), accumulate=True)
        assert stats.chi2_contingency(table.numpy())[1] > 1e-3
    counts = torch.bincount(dm.train_stacks.flatten(), minlength=7000).float()
    assert stats.chisquare(counts.numpy())[1] > 1e-3  # uniform over the 7,000 training digit images
    # the channels' digit frequencies follow the digit frequencies of the training images
    freq = torch.bincount(dm.digit_labels[:7000], minlength=10).float() / 7000
    for c in range(3):
        observed = torch.bincount(labels[:, c], minlength=10).float() / labels.shape[0]
        assert float((observed - freq).abs().max()) < 0.006


def test_same_seed_same_set_other_seed_other_set(real_dir: Path) -> None:
    a, b = stacked(real_dir, num_train=2000), stacked(real_dir, num_train=2000)
    c = stacked(real_dir, num_train=2000, seed=1)
    for split in ("train", "val", "test"):
        assert torch.equal(a.stacks(split), b.stacks(split))
        assert not torch.equal(a.stacks(split), c.stacks(split))
    assert torch.equal(a.digits, b.digits)
    xa = [x for x, _ in map(lambda t: a.compose(t), itertools.islice(a.train_dataloader(), 3))]
    xb = [x for x, _ in map(lambda t: b.compose(t), itertools.islice(b.train_dataloader(), 3))]
    assert all(torch.equal(p, q) for p, q in zip(xa, xb))


@pytest.mark.parametrize("n", [1, 3, 4])
def test_mode_id_is_a_bijection(n: int) -> None:
    tuples = torch.tensor(list(itertools.product(range(10), repeat=n)))  # lexicographic order
    ids = mode_ids(tuples)
    assert torch.equal(ids, torch.arange(10**n))  # the digits read as a decimal number
    assert torch.equal(mode_digits(ids, n), tuples)
    assert int(StackedMNISTDataModule.mode_id(torch.tensor([[4, 0, 7]]))) == 407


def test_fake_files_full_source(tmp_path: Path) -> None:
    """The full source draws training stacks from MNIST's training images less val_size, validation stacks
    from the held-out ones and test stacks from the official test images."""
    arrays = fake_mnist(tmp_path, n_train=100, n_test=20)
    dm = StackedMNISTDataModule(str(tmp_path), num_stacks=2, val_size=10, num_train=400, num_val=50, num_test=30,
                                batch_size=16, value_range="unit")  # fmt: skip
    dm.setup()
    assert dm.digit_ranges == {"train": (0, 90), "val": (90, 100), "test": (100, 120)}
    test_images = arrays["t10k-images-idx3-ubyte"].float() / 255
    x, y = dm.compose(dm.test_stacks)
    local = dm.test_stacks - 100
    assert torch.equal(x[:, 1], test_images[local[:, 1]])
    assert torch.equal(y, arrays["t10k-labels-idx1-ubyte"][local])
    assert x.shape == (30, 2, 28, 28)
    batches = list(dm.train_dataloader())
    assert len(batches) == 400 // 16 and batches[0].shape == (16, 2)  # indices; composed after transfer


def test_missing_data_is_a_fast_clear_error(tmp_path: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(UserError) as info:
        StackedMNISTDataModule(str(tmp_path), source="test-split", download=False).setup()
    assert time.perf_counter() - start < 3.0
    message = str(info.value)
    assert str(tmp_path / "MNIST" / "raw") in message and "t10k-images-idx3-ubyte" in message
    assert "download: true" in message and "\n" not in message


def test_corrupt_file_is_reported(tmp_path: Path) -> None:
    fake_mnist(tmp_path, n_train=40, n_test=30)
    path = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(UserError, match="corrupt or truncated") as info:
        StackedMNISTDataModule(str(tmp_path), source="test-split", val_size=5, test_size=5, num_train=100).setup()
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [({"num_stacks": 0}, "num_stacks"), ({"batch_size": 0}, "batch_size"), ({"num_train": 10}, "num_train"),
     ({"num_val": -1}, "num_val"), ({"value_range": "01"}, "value_range must be one of 'unit', 'symmetric'"),
     ({"source": "x"}, "source must be one of 'full', 'test-split'")],
)  # fmt: skip
def test_bad_arguments(kwargs: dict, words: str) -> None:
    with pytest.raises(UserError, match=words):
        StackedMNISTDataModule(**kwargs)
