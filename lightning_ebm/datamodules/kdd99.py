"""KDD Cup 1999 network intrusions, 10 % subset, in the anomaly-detection protocol of DAGMM.

The protocol of Zong et al. (2018, DAGMM), used by Zhai et al. (2016, DSEBM) and Kumar et al. (2019,
MEG), reads the 494,021 connections of ``kddcup.data_10_percent`` (41 features and a label):

* the seven symbolic columns (``protocol_type``, ``service``, ``flag``, ``land``, ``logged_in``,
  ``is_host_login``, ``is_guest_login``) are one-hot encoded, which with the 34 numeric columns gives
  121 features for the 10 % file;
* ``normal.`` traffic (about 20 %) is the *anomaly* class, the attacks the normal class;
* the connections are split 50/50 at random; the model trains on the attack rows of the first half
  only, and the second half, both classes, is the test set; the 20 % highest anomaly scores are
  flagged and precision, recall and F1 reported;
* the numeric columns are min-max scaled with the minima and maxima of the training rows (the widely
  copied original code computes the scaling but forgets to assign the result, so its models see
  unscaled features; here the scaling is applied). Test values may fall outside [0, 1].

Optionally (``val_fraction``) a part of the first half, both classes, is held out for validation so
that model selection never looks at the test half; the published protocol has no validation set
(``val_fraction: 0``).
"""

from __future__ import annotations

import gzip
import io
import os
import socket
import zlib

import lightning as L
import numpy as np
import torch
from torch import Tensor

from lightning_ebm.datamodules.utils import LabelledTensorLoaders
from lightning_ebm.errors import UserError

FILES = ("kddcup.data_10_percent.gz", "kddcup.data_10_percent", "kddcup.data_10_percent_corrected")
URL = "http://kdd.ics.uci.edu/databases/kddcup99/kddcup.data_10_percent.gz"
MD5 = "c421989ff187d340c1265ac3080a3229"
NUM_FIELDS = 42  # 41 features and the label
SYMBOLIC = (1, 2, 3, 6, 11, 20, 21)  # protocol_type, service, flag, land, logged_in, is_host_login, is_guest_login
NUMERIC = tuple(i for i in range(41) if i not in SYMBOLIC)
ANOMALY_LABEL = "normal."
DOWNLOAD_TIMEOUT_S = 60.0


def parse_kdd(raw: bytes, path: str = "<bytes>") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse the CSV text of a KDD99 file.

    Returns:
        ``(numeric, symbolic, labels)``: ``(N, 34)`` float64 numeric features, ``(N, 7)`` strings of
        the symbolic columns, ``(N,)`` label strings (``normal.``, ``smurf.``, ...).

    Raises:
        UserError: a line without 42 fields or with a non-numeric value where a number belongs.
    """
    text = io.BytesIO(raw)
    try:
        numeric = np.loadtxt(text, delimiter=",", usecols=NUMERIC, dtype=np.float64, ndmin=2)
        text.seek(0)
        strings = np.loadtxt(text, delimiter=",", usecols=(*SYMBOLIC, 41), dtype=str, ndmin=2)
    except ValueError as exc:
        problem = " ".join(str(exc).split())[:200]
        raise UserError(
            f"KDD99 file {path} is corrupt or truncated ({problem}); delete it and download it again from {URL}"
        ) from None
    if numeric.shape[0] == 0:
        raise UserError(f"KDD99 file {path} holds no connections; delete it and download it again from {URL}")
    first = raw.split(b"\n", 1)[0].count(b",") + 1
    if first != NUM_FIELDS:
        raise UserError(f"KDD99 file {path} has {first} fields per line, expected {NUM_FIELDS}; is it the 10 % file?")
    return numeric, strings[:, :-1], strings[:, -1]


def one_hot(symbolic: np.ndarray) -> np.ndarray:
    """One-hot encode each column (categories sorted, as ``pandas.get_dummies`` orders them)."""
    blocks = []
    for column in symbolic.T:
        categories, codes = np.unique(column, return_inverse=True)
        blocks.append(np.eye(len(categories), dtype=np.float64)[codes])
    return np.concatenate(blocks, axis=1)


class KDD99DataModule(LabelledTensorLoaders, L.LightningDataModule):
    """KDD99 10 % in the DAGMM protocol (see the module docstring), batches ``(x, y)``, ``y = 1`` anomaly.

    After :meth:`setup`: ``train_data`` (attack rows of the first half, scaled), ``val_data`` /
    ``val_labels`` (empty unless ``val_fraction``), ``test_data`` / ``test_labels`` (the second half),
    ``feature_names`` and ``num_features`` (121 for the 10 % file).

    Args:
        data_dir: directory holding ``kddcup.data_10_percent.gz`` (or the uncompressed file, or
            ``kddcup.data_10_percent_corrected``); also looked for in ``<data_dir>/kddcup99/``.
        download: download the file from UCI if it is missing (needs internet).
        batch_size: training batch size per process (256 in MEG's setting).
        seed: seed of the 50/50 split, the validation hold-out and the shuffling.
        val_fraction: fraction of the first half held out for validation (0: the published protocol).
        eval_batch_size: batch size of validation and test.
        scaling: ``minmax`` (the protocol: numeric columns scaled to [0, 1] on the training rows) or
            ``none``, the numeric columns left raw, as the widely copied original preprocessing (and
            so the MEG authors' script) ends up doing because it never assigns the scaled result; only
            for comparisons with those published figures.
    """

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        batch_size: int = 256,
        seed: int = 0,
        val_fraction: float = 0.0,
        eval_batch_size: int = 8192,
        scaling: str = "minmax",
    ) -> None:
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {batch_size}")
        if scaling not in ("minmax", "none"):
            raise UserError(f"scaling must be 'minmax' or 'none', got {scaling!r}")
        self.save_hyperparameters()
        self.data_dir = os.path.expanduser(str(data_dir))
        self.download = download
        self.batch_size = batch_size
        self.seed = seed
        self.val_fraction = val_fraction
        self.eval_batch_size = eval_batch_size
        self.scaling = scaling
        self.train_data: Tensor | None = None
        self.train_labels: Tensor | None = None
        self.val_data: Tensor | None = None
        self.val_labels: Tensor | None = None
        self.test_data: Tensor | None = None
        self.test_labels: Tensor | None = None
        self.num_features: int | None = None

    # ------------------------------------------------------------------ the file
    def _search_dirs(self) -> list[str]:
        return [self.data_dir, os.path.join(self.data_dir, "kddcup99")]

    def find_file(self) -> str | None:
        for directory in self._search_dirs():
            for name in FILES:
                path = os.path.join(directory, name)
                if os.path.isfile(path):
                    return path
        return None

    def prepare_data(self) -> None:
        """Download the file when ``download`` is set and it is missing."""
        if not self.download or self.find_file() is not None:
            return
        from torchvision.datasets.utils import download_url

        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            download_url(URL, self.data_dir, FILES[0], MD5)
        except Exception as exc:  # URLError, timeouts, a bad checksum
            raise UserError(
                f"downloading KDD99 into {self.data_dir} failed ({' '.join(str(exc).split())[:300]}). Without "
                f"internet, fetch {URL} by hand into {self.data_dir}/ and set download: false"
            ) from None
        finally:
            socket.setdefaulttimeout(previous)

    def _read(self) -> bytes:
        path = self.find_file()
        if path is None:
            raise UserError(
                f"KDD99 data not found: looked in {' and '.join(self._search_dirs())} for {FILES[0]} (or "
                f"{FILES[1]}, {FILES[2]}). Set download: true (needs internet), or fetch {URL} into {self.data_dir}/"
            )
        try:
            if path.endswith(".gz"):
                with gzip.open(path, "rb") as f:
                    return f.read()
            with open(path, "rb") as f:
                return f.read()
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise UserError(
                f"KDD99 file {path} is corrupt or truncated (bad gzip data: {exc}); delete it and download it "
                f"again from {URL}"
            ) from None
        except OSError as exc:
            raise UserError(f"cannot read KDD99 file {path}: {exc.strerror or exc}") from None

    # ------------------------------------------------------------------ the protocol
    def setup(self, stage: str | None = None) -> None:
        if self.train_data is not None:
            return
        if self.trainer is None:
            self.prepare_data()
        path = self.find_file() or ""
        numeric, symbolic, names = parse_kdd(self._read(), path)
        labels = torch.from_numpy(names == ANOMALY_LABEL).long()
        n = labels.shape[0]
        g = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(n, generator=g)
        first, test = order[: n // 2], order[n // 2 :]
        n_val = int(round(self.val_fraction * first.shape[0]))
        val, first = first[:n_val], first[n_val:]
        train = first[labels[first] == 0]  # attacks only: the anomalies never reach training
        if train.shape[0] < self.batch_size:
            raise UserError(f"only {train.shape[0]} training rows, fewer than batch_size ({self.batch_size})")

        # Min-max scaling of the numeric columns, fitted on the training rows (and applied).
        train_numeric = numeric[train.numpy()]
        low, high = train_numeric.min(0), train_numeric.max(0)
        span = np.where(high > low, high - low, 1.0)  # a constant column is shifted, not divided by 0
        if self.scaling == "none":  # the authors' preprocessing bug, for comparisons only
            low, span = np.zeros_like(low), np.ones_like(span)
        features = np.concatenate([(numeric - low) / span, one_hot(symbolic)], axis=1).astype(np.float32)
        x = torch.from_numpy(features)
        self.num_features = x.shape[1]
        self.train_data, self.train_labels = x[train], labels[train]
        self.val_data, self.val_labels = x[val], labels[val]
        self.test_data, self.test_labels = x[test], labels[test]

    @property
    def data_shape(self) -> tuple[int, ...]:
        return (self.num_features or 121,)
