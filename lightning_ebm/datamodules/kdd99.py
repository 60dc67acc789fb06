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

Nothing in the file is taken on trust: a line without 42 fields, a non-numeric or non-finite (``nan``,
``inf``) value in a numeric field, or a label that is not one of the data set's (``normal.`` and the
attack names, each with its trailing dot) stops :meth:`KDD99DataModule.setup` with the file and line.
"""

from __future__ import annotations

import io
import os
import typing
from typing import Literal

import lightning as L
import numpy as np
import torch

from lightning_ebm.datamodules.utils import (
    InMemoryLoaders,
    check_at_least,
    check_options,
    check_readable,
    download,
    find_file,
    first_non_finite,
    read_bytes,
)
from lightning_ebm.errors import UserError

FILES = ("kddcup.data_10_percent.gz", "kddcup.data_10_percent", "kddcup.data_10_percent_corrected")
URL = "http://kdd.ics.uci.edu/databases/kddcup99/kddcup.data_10_percent.gz"
MD5 = "c421989ff187d340c1265ac3080a3229"
NUM_FIELDS = 42  # 41 features and the label
SYMBOLIC = (1, 2, 3, 6, 11, 20, 21)  # protocol_type, service, flag, land, logged_in, is_host_login, is_guest_login
NUMERIC = tuple(i for i in range(41) if i not in SYMBOLIC)
ANOMALY_LABEL = "normal."
Scaling = Literal["minmax", "none"]
SCALINGS = typing.get_args(Scaling)
#: the 41 features, in the file's order (the names of the data set's description)
FIELD_NAMES = (
    "duration", "protocol_type", "service", "flag", "src_bytes", "dst_bytes", "land", "wrong_fragment", "urgent",
    "hot", "num_failed_logins", "logged_in", "num_compromised", "root_shell", "su_attempted", "num_root",
    "num_file_creations", "num_shells", "num_access_files", "num_outbound_cmds", "is_host_login", "is_guest_login",
    "count", "srv_count", "serror_rate", "srv_serror_rate", "rerror_rate", "srv_rerror_rate", "same_srv_rate",
    "diff_srv_rate", "srv_diff_host_rate", "dst_host_count", "dst_host_srv_count", "dst_host_same_srv_rate",
    "dst_host_diff_srv_rate", "dst_host_same_src_port_rate", "dst_host_srv_diff_host_rate", "dst_host_serror_rate",
    "dst_host_srv_serror_rate", "dst_host_rerror_rate", "dst_host_srv_rerror_rate",
)  # fmt: skip
#: the labels of KDD Cup 1999: normal traffic and the attacks of the training data (the 10 % file holds
#: all 23) and of the labelled test data (``corrected``), each with its trailing dot
LABELS = frozenset(
    f"{name}." for name in (
        "normal", "back", "buffer_overflow", "ftp_write", "guess_passwd", "imap", "ipsweep", "land",
        "loadmodule", "multihop", "neptune", "nmap", "perl", "phf", "pod", "portsweep", "rootkit", "satan",
        "smurf", "spy", "teardrop", "warezclient", "warezmaster",
        "apache2", "httptunnel", "mailbomb", "mscan", "named", "processtable", "ps", "saint", "sendmail",
        "snmpgetattack", "snmpguess", "sqlattack", "udpstorm", "worm", "xlock", "xsnoop", "xterm",
    )
)  # fmt: skip


def _at(path: str, line: int) -> str:
    return f"KDD99 file {path}, line {line}"


def _corrupt(path: str, problem: str) -> UserError:
    return UserError(
        f"KDD99 file {path} is corrupt or truncated ({problem}); delete it and download it again from {URL}"
    )


def _bad_line(path: str, line: int, problem: str) -> UserError:
    return UserError(
        f"{_at(path, line)}: {problem}; the file is corrupt or truncated (or not the KDD Cup 1999 data): fix or "
        f"delete that line, or download the file again from {URL}"
    )


def check_finite(values: np.ndarray, numeric: np.ndarray, path: str, lines: np.ndarray, after: str = "") -> None:
    """``UserError`` naming the file, line and field of the first non-finite entry of ``values``, the
    numeric columns (``(N, 34)``, rows as in the file) before (``values`` is ``numeric``) or ``after`` a
    step of the preprocessing (then an out-of-range value of the file, such as ``1e39`` in float32)."""
    bad = first_non_finite(values)
    if bad is None:
        return
    row, column = bad[0], NUMERIC[bad[1]]
    value = f"{numeric[bad]}, which becomes {values[bad]} {after}" if after else f"{numeric[bad]}"
    raise UserError(
        f"{_at(path, int(lines[row]))}: field {column + 1} ({FIELD_NAMES[column]}) is {value}, not a finite "
        f"number; fix or delete that line, or download the file again from {URL}"
    )


def _is_number(field: bytes) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def parse_kdd(raw: bytes, path: str = "<bytes>") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parse and check the CSV text of a KDD99 file (blank lines are skipped).

    Returns:
        ``(numeric, symbolic, labels, lines)``: ``(N, 34)`` float64 numeric features (all finite), ``(N, 7)``
        strings of the symbolic columns, ``(N,)`` label strings (``normal.``, ``smurf.``, ...), and the
        ``(N,)`` 1-based line number of each connection in the file.

    Raises:
        UserError: naming the file and the line, for a line without 42 fields, a numeric field that is not
            a finite number, or a label that is not one of :data:`LABELS` (such as ``normal`` without
            its dot).
    """
    all_lines = raw.split(b"\n")
    numbers = [i for i, line in enumerate(all_lines, 1) if line.strip()]
    if not numbers:
        raise UserError(f"KDD99 file {path} holds no connections; delete it and download it again from {URL}")
    rows = [all_lines[i - 1].rstrip(b"\r") for i in numbers]
    for number, row in zip(numbers, rows):
        if row.count(b",") != NUM_FIELDS - 1:
            raise _bad_line(path, number, f"{row.count(b',') + 1} fields, expected {NUM_FIELDS}")
    text = io.BytesIO(b"\n".join(rows))
    try:
        numeric = np.loadtxt(text, delimiter=",", usecols=NUMERIC, dtype=np.float64, ndmin=2, comments=None)
    except ValueError:  # name the line (numpy's row numbers are not the file's)
        for number, row in zip(numbers, rows):
            fields = row.split(b",")
            for column in NUMERIC:
                if not _is_number(fields[column]):
                    value = fields[column][:40].decode(errors="replace")
                    problem = f"field {column + 1} ({FIELD_NAMES[column]}) is {value!r}, not a number"
                    raise _bad_line(path, number, problem) from None
        raise  # pragma: no cover - numpy refused a line that Python parses
    text.seek(0)
    strings = np.loadtxt(text, delimiter=",", usecols=(*SYMBOLIC, 41), dtype=str, ndmin=2, comments=None)
    lines = np.asarray(numbers)
    check_finite(numeric, numeric, path, lines)
    labels = strings[:, -1]
    known = np.isin(labels, sorted(LABELS))
    if not known.all():
        row = int(np.argmin(known))
        label = str(labels[row])
        hint = f" (missing its trailing dot: {label}.)" if f"{label}." in LABELS else ""
        raise UserError(
            f"{_at(path, int(lines[row]))}: label {label!r} is not one of KDD99's{hint}; expected 'normal.' or an "
            f"attack name with its trailing dot ('smurf.', 'neptune.', ...), as in the file from {URL}"
        )
    return numeric, strings[:, :-1], labels, lines


def one_hot(symbolic: np.ndarray) -> tuple[list[str], np.ndarray]:
    """One-hot encode each column (categories sorted, as ``pandas.get_dummies`` orders them).

    Returns:
        The names of the new columns (``<field>_<category>``, as ``pandas.get_dummies`` names them) and the
        float32 ``(N, total categories)`` encoding.
    """
    names, blocks = [], []
    for field, column in zip(SYMBOLIC, symbolic.T):
        categories, codes = np.unique(column, return_inverse=True)
        names += [f"{FIELD_NAMES[field]}_{c}" for c in categories]
        blocks.append(np.eye(len(categories), dtype=np.float32)[codes.reshape(-1)])
    return names, np.concatenate(blocks, axis=1)


class KDD99DataModule(InMemoryLoaders, L.LightningDataModule):
    """KDD99 10 % in the DAGMM protocol (see the module docstring), batches ``(x, y)``, ``y = 1`` anomaly.

    After :meth:`setup`: ``train_data`` (attack rows of the first half, scaled), ``val_data`` /
    ``val_labels`` (empty unless ``val_fraction``), ``test_data`` / ``test_labels`` (the second half),
    ``feature_names`` and ``num_features`` (121 for the 10 % file), and ``train_lines`` etc. the line
    numbers of the split's connections in the file.

    Args:
        data_dir: directory holding ``kddcup.data_10_percent.gz`` (or the uncompressed file, or
            ``kddcup.data_10_percent_corrected``); also looked for in ``<data_dir>/kddcup99/``.
        download: download the file from UCI if it is missing (needs internet; offline, the attempt fails
            within a minute with the manual route).
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
        download: bool = True,
        batch_size: int = 256,
        seed: int = 0,
        val_fraction: float = 0.0,
        eval_batch_size: int = 8192,
        scaling: Scaling = "minmax",
    ) -> None:
        super().__init__()
        check_options(type(self).__init__, locals())
        check_at_least(1, batch_size=batch_size, eval_batch_size=eval_batch_size)
        if not 0.0 <= val_fraction < 1.0:
            raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.save_hyperparameters()
        self.data_dir = os.path.expanduser(str(data_dir))
        self.download = download
        self.batch_size = batch_size
        self.seed = seed
        self.val_fraction = val_fraction
        self.eval_batch_size = eval_batch_size
        self.scaling = scaling
        self.num_features: int | None = None
        self.feature_names: list[str] | None = None
        self.train_lines: np.ndarray | None = None
        self.val_lines: np.ndarray | None = None
        self.test_lines: np.ndarray | None = None

    # ------------------------------------------------------------------ the file
    def _search_dirs(self) -> list[str]:
        return [self.data_dir, os.path.join(self.data_dir, "kddcup99")]

    def find_file(self) -> str | None:
        return find_file(self._search_dirs(), FILES)

    def prepare_data(self) -> None:
        """Download the file when ``download`` is set and it is missing."""
        if not self.download or self.find_file() is not None:
            return
        from torchvision.datasets import utils

        download(
            lambda: utils.download_url(URL, self.data_dir, FILES[0], MD5),
            "KDD99",
            self.data_dir,
            f"Without internet, fetch {URL} by hand into {self.data_dir}/ and set download: false",
        )

    def _read(self) -> tuple[str, bytes]:
        """The file's path and uncompressed bytes."""
        path = self.find_file()
        if path is None:
            check_readable("the KDD99 directory", *self._search_dirs())  # denied access is not absence
            raise UserError(
                f"KDD99 data not found: looked in {' and '.join(self._search_dirs())} for {FILES[0]} (or "
                f"{FILES[1]}, {FILES[2]}). Set download: true (needs internet), or fetch {URL} into {self.data_dir}/"
            )
        return path, read_bytes(path, "KDD99 file", _corrupt)

    # ------------------------------------------------------------------ the protocol
    def setup(self, stage: str | None = None) -> None:
        if self.train_data is not None:
            return
        if self.trainer is None:
            self.prepare_data()
        path, raw = self._read()
        numeric, symbolic, names, lines = parse_kdd(raw, path)
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
        with np.errstate(over="ignore", invalid="ignore"):  # overflows are reported below, with their line
            span = np.where(high > low, high - low, 1.0)  # a constant column is shifted, not divided by 0
            if self.scaling == "none":  # the authors' preprocessing bug, for comparisons only
                low, span = np.zeros_like(low), np.ones_like(span)
            scaled = ((numeric - low) / span).astype(np.float32)
        check_finite(scaled, numeric, path, lines, f"in float32 after the scaling ({self.scaling})")
        categories, encoded = one_hot(symbolic)
        x = torch.from_numpy(np.concatenate([scaled, encoded], axis=1))
        self.num_features = x.shape[1]
        self.feature_names = [FIELD_NAMES[i] for i in NUMERIC] + categories
        self.train_data, self.train_labels, self.train_lines = x[train], labels[train], lines[train.numpy()]
        self.val_data, self.val_labels, self.val_lines = x[val], labels[val], lines[val.numpy()]
        self.test_data, self.test_labels, self.test_lines = x[test], labels[test], lines[test.numpy()]

    @property
    def data_shape(self) -> tuple[int, ...]:
        return (self.num_features or 121,)
