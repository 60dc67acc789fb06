"""The helpers the data modules share (lightning_ebm.datamodules.utils): downloads with a timeout,
argument checks, reading files, finding non-finite values."""

from __future__ import annotations

import gzip
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch
from helpers.data import deny_reading

from lightning_ebm.datamodules.utils import (
    DOWNLOAD_TIMEOUT_S,
    TensorBatches,
    check_at_least,
    check_holdout,
    check_options,
    check_readable,
    download,
    find_file,
    first_non_finite,
    first_unreadable,
    read_bytes,
)
from lightning_ebm.errors import UserError


# ------------------------------------------------------------------------------------------ download
def test_download_runs_the_fetch_under_the_timeout_and_restores_the_previous_one() -> None:
    seen = []
    socket.setdefaulttimeout(7.0)
    try:
        download(lambda: seen.append(socket.getdefaulttimeout()), "X", "/d", "fix it")
        assert seen == [DOWNLOAD_TIMEOUT_S] and socket.getdefaulttimeout() == 7.0
        download(lambda: seen.append(socket.getdefaulttimeout()), "X", "/d", "fix it", timeout_s=0.25)
        assert seen[-1] == 0.25 and socket.getdefaulttimeout() == 7.0
    finally:
        socket.setdefaulttimeout(None)


def test_a_failed_download_is_one_line_naming_what_where_why_and_the_fix() -> None:
    def fail() -> None:
        raise RuntimeError("Error downloading\nfile.gz:\n  " + "x" * 400)

    with pytest.raises(UserError) as info:
        download(fail, "MNIST", "/data/MNIST/raw", "Copy the files by hand.")
    message = str(info.value)
    assert message.startswith("downloading MNIST into /data/MNIST/raw failed (Error downloading file.gz: xxx")
    assert message.endswith(" ...). Copy the files by hand.") and "\n" not in message
    assert len(message) < 400
    assert socket.getdefaulttimeout() is None


def test_a_server_that_never_answers_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """A local server accepts the connection and then says nothing: the download gives up after its
    timeout instead of hanging (only this test's own socket is used; the conftest's block is lifted)."""
    monkeypatch.undo()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/data.gz"
    start = time.perf_counter()
    try:
        with pytest.raises(UserError, match=r"downloading X into /d failed \(.*timed out.*\)\. fix"):
            download(lambda: urllib.request.urlopen(url).read(), "X", "/d", "fix", timeout_s=0.5)
    finally:
        server.close()
    assert 0.4 < time.perf_counter() - start < 5
    assert socket.getdefaulttimeout() is None


# ------------------------------------------------------------------------------------------ arguments
def test_check_at_least() -> None:
    check_at_least(1, a=1, b=5)
    check_at_least(0, a=0)
    with pytest.raises(UserError, match="^b must be at least 1, got 0$"):
        check_at_least(1, a=3, b=0, c=-1)
    with pytest.raises(UserError, match="^size must be 0 or more, got -1$"):
        check_at_least(0, size=-1)


def test_check_options_reads_the_literals_of_the_constructor() -> None:
    def init(self, mode: Literal["a", "b"] = "a", name: str = "x", maybe: Literal["c"] | None = None) -> None:  # noqa: ANN001
        pass

    check_options(init, {"self": object(), "mode": "b", "name": "anything", "maybe": None})
    with pytest.raises(UserError, match=r"^mode must be one of 'a', 'b'; got 'z'$"):
        check_options(init, {"mode": "z", "name": "x"})
    with pytest.raises(UserError, match=r"^maybe must be one of 'c', None; got 'd'$"):
        check_options(init, {"maybe": "d"})


def test_check_holdout_names_the_held_out_sizes() -> None:
    check_holdout(100, 10, "images", val_size=90)
    with pytest.raises(UserError, match=r"^val_size \(95\) leaves 5 of the 100 images for training, fewer than "):
        check_holdout(100, 10, "images", val_size=95)
    with pytest.raises(UserError, match=r"val_size \(60\) \+ test_size \(50\) leave 0 of .* lower val_size / test_"):
        check_holdout(100, 10, "images", val_size=60, test_size=50)


# ------------------------------------------------------------------------------------------ reading
def test_find_file_prefers_the_first_directory_then_the_first_name(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "f").write_text("")
    (tmp_path / "b" / "f.gz").write_text("")
    (tmp_path / "a" / "f.gz").write_text("")
    dirs = [str(tmp_path / "a"), str(tmp_path / "b")]
    assert find_file(dirs, ("f", "f.gz")) == str(tmp_path / "a" / "f.gz")
    assert find_file(dirs[1:], ("f", "f.gz")) == str(tmp_path / "b" / "f")
    assert find_file(dirs, ("g",)) is None


def test_read_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def corrupt(path: str, problem: str) -> UserError:
        return UserError(f"{path} is corrupt ({problem})")

    (tmp_path / "plain").write_bytes(b"abc")
    (tmp_path / "packed.gz").write_bytes(gzip.compress(b"abc" * 100))
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"abc" * 100)[:-10])
    assert read_bytes(str(tmp_path / "plain"), "file", corrupt) == b"abc"
    assert read_bytes(str(tmp_path / "packed.gz"), "file", corrupt) == b"abc" * 100
    with pytest.raises(UserError, match=r"bad.gz is corrupt \(bad gzip data"):
        read_bytes(str(tmp_path / "bad.gz"), "file", corrupt)
    with pytest.raises(UserError, match=r"cannot read data file .*/absent: No such file"):
        read_bytes(str(tmp_path / "absent"), "data file", corrupt)
    deny_reading(monkeypatch, tmp_path / "plain")
    with pytest.raises(UserError, match=r"^cannot read data file .*/plain \(permission denied\): fix its permissions"):
        read_bytes(str(tmp_path / "plain"), "data file", corrupt)


def test_first_unreadable_finds_the_folder_that_bars_the_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_text("x")
    assert first_unreadable(str(tmp_path / "a" / "b" / "f")) is None
    assert first_unreadable(str(tmp_path / "nowhere" / "f")) is None  # absent is not unreadable
    with monkeypatch.context() as m:
        deny_reading(m, tmp_path / "a" / "b" / "f")
        assert first_unreadable(str(tmp_path / "a" / "b" / "f")) == str(tmp_path / "a" / "b" / "f")
        assert first_unreadable(str(tmp_path / "a" / "b")) is None
    deny_reading(monkeypatch, tmp_path / "a")
    assert first_unreadable(str(tmp_path / "a" / "b" / "f")) == str(tmp_path / "a")
    assert first_unreadable(str(tmp_path / "a")) == str(tmp_path / "a")
    with pytest.raises(UserError, match=r"cannot read the data .*/a/b/f: the directory .*/a may not be entered"):
        check_readable("the data", str(tmp_path / "a" / "b" / "f"))
    check_readable("the data", str(tmp_path / "nowhere"))


# ------------------------------------------------------------------------------------------ checking data
def test_first_non_finite() -> None:
    assert first_non_finite(torch.zeros(3, 4)) is None
    assert first_non_finite(np.ones(5)) is None
    x = torch.zeros(3, 4)
    x[2, 0], x[1, 3] = float("inf"), float("nan")
    assert first_non_finite(x) == (1, 3)  # row-major: the first bad entry
    assert first_non_finite(x.numpy()) == (1, 3)
    assert first_non_finite(np.array([1.0, -np.inf])) == (1,)


def test_tensor_batches_refuse_a_batch_size_below_one() -> None:
    with pytest.raises(ValueError, match="batch_size of at least 1, got 0"):
        TensorBatches(torch.zeros(4), batch_size=0)
