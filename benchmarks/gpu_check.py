"""GPU measurements in one run: peaks, throughput of every config, FLOPs, profiles, JEM against its authors.

Run on one GPU from the repository's root, within ``--budget-s`` seconds (450 by default; about 8
minutes on an NVIDIA H200 with the start-up)::

    python benchmarks/gpu_check.py --out gpu_check_out

Needs lightning-ebm's dependencies (jsonargparse among them); on a machine without a package index,
install their wheels from a folder first (``pip install --no-index --no-deps --target DIR WHEELS`` and
``PYTHONPATH=DIR:.``). The JEM comparison imports the JEM authors' code at run time from
``--reference-dir`` (default ``.ref/JEM``: a checkout of github.com/wgrathwohl/JEM; never committed
here) and is skipped with a note when it is absent. Everything goes to ``--out``: ``gpu_check.md``
(the tables), ``gpu_check.json`` (everything), ``gpu_check.log`` (progress), ``jem_reference.json``
and ``jem_reference.log``, rewritten after every measurement, so that a run cut short still leaves
its results. ``--smoke`` runs the whole pipeline on a CPU with tiny settings (a test of the script).

What it measures, in this order, each step within ``--budget-s`` seconds of the script's start
(a step that would not fit is skipped and listed as such):

1. the header: GPU, torch, CUDA, cuDNN and Lightning versions, and the matrix-product peaks measured
   here: ``--peak-size``-cubed products timed for about 2 s each in bf16 (the H200's nominal dense
   bf16 peak is about 790 TFLOP/s), TF32 and strict fp32;
2. for every shipped config (``lightning_ebm.cli.shipped_configs()``) and ``dbm_mnist:joint`` (the
   DBM's joint training, from ``benchmarks/throughput.py``), the training throughput through Lightning
   on synthetic data of the config's shape made on the GPU once (``throughput.measure``): in
   ``32-true``, in ``bf16-mixed`` and on the fast path (``fused_step``, ``bf16-mixed``), then, with the
   budget left at the end, the fast path in ``32-true``. Timing: after a warm-up (10 batches eager, 25
   on the fast path so that every variant of the update is captured: MEG's generator update comes
   every fifth batch and is captured at its fourth occurrence), at least 30 batches and 1 s, at most
   3 s. The configs with targets go first, then the host's floor of the launch-bound ones (``FLOORED``:
   the update replaced by one that does nothing, ``throughput.py --null-update``: Lightning's batch loop
   and the method's host-side work alone, the most a step whose update replays a graph can reach
   here), then the JEM comparison, then the others. Every row also has the host's CPU seconds per
   wall-clock second and the thread groups that used them;
3. FLOPs per sample: ``torch.utils.flop_counter``'s formulas (:class:`FlopCounter`: matrix products
   and convolutions, 2 FLOPs per multiply-add) over 10 consecutive eager fp32 training steps inside the
   ``32-true`` run's warm-up (everything a step does: forward and backward passes, the sampler's
   chains, the generator's update when due), divided by their samples; then, for each row, the
   TFLOP/s it reaches and its share of the measured bf16 peak;
4. for meg_cifar, dem_toy, rbm_mnist_pcd, jem_cifar and dbm_mnist:joint, a ``torch.profiler`` window of
   10 steps (JEM: 2) right after the timed window of the ``bf16-mixed`` and fast-path runs: the
   fraction of the window's wall time during which kernels ran (their summed and their merged
   durations), and per step: kernels, kernel launches (``cudaLaunchKernel`` and the like), graph
   launches (``cudaGraphLaunch``), host synchronisations (``cudaStreamSynchronize``,
   ``cudaDeviceSynchronize``, ``cudaEventSynchronize``), device-to-host copies and
   ``aten::_local_scalar_dense`` / ``aten::item`` operators (the profiler's own closing
   synchronisation is not counted); ``busy_vs_timed`` divides the kernel time per step by the
   unprofiled run's seconds per step (the profiler slows the host);
5. JEM side by side with the authors' code on the same GPU: ``benchmarks/jem_reference.py --device
   cuda --depth 28 --width 10`` in a subprocess, with a timeout, their code imported at run time from
   ``--reference-dir`` (default ``.ref/JEM``; never copied into this repository), ours in ``32-true``,
   ``bf16-mixed`` and ``bf16-mixed`` on the fast path;
6. ``gpu_check.md``: per config FLOPs/sample, samples/s in fp32, bf16 and on the fast path, the
   fast path's speed-up over fp32, its share of the peak, and the targets beside them.

``--smoke`` runs the same pipeline on the CPU in a few minutes with tiny settings (a few small configs,
a few steps, a small matrix product for the "peak", the profiler with CPU activities only, the JEM
comparison with a WRN-10-1 when ``--reference-dir`` exists), so that the script is tested without a GPU::

    python benchmarks/gpu_check.py --smoke --out gpu_smoke [--reference-dir DIR]
"""  # noqa: E501 (the device command is one line)

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmarks
import throughput  # noqa: E402  (it puts this checkout's lightning_ebm first on the path)

ROOT = Path(__file__).resolve().parents[1]

#: The issue's targets: samples/s at least (``min``), or JEM's seconds per iteration at most, share of
#: the bf16 peak at least and ratio to the authors' code at least.
TARGETS: dict[str, dict[str, Any]] = {
    "meg_cifar": {"min": 45_000},
    "dem_celeba": {"min": 17_000},
    "meg_stackedmnist3": {"min": 60_000},
    "rbm_mnist_pcd": {"min": 700_000},
    "dbm_mnist:joint": {"min": 200_000},
    "jem_cifar": {"max_s_per_it": 0.10, "min_share": 0.45, "min_ratio": 2.5},
    "dem_toy": {"min": 89_200, "note": "the 2-core CPU figure (docs/dem.md, batch 512)"},
    "meg_toy": {
        "min": 7_050,
        "note": "the 2-core CPU figure derived from docs/meg.md (11,700 batches of 256 in 425 s of training)",
    },
}
#: Configs whose bf16 and fast-path runs are profiled.
PROFILED = ("meg_cifar", "dem_toy", "rbm_mnist_pcd", "jem_cifar", "dbm_mnist:joint")
#: Measured first (the targets), in this order.
PRIORITY = ("rbm_mnist_pcd", "dem_toy", "meg_toy", "meg_stackedmnist3", "meg_cifar", "dem_celeba",
            "dbm_mnist:joint", "jem_cifar")  # fmt: skip
#: Per-config settings for the slow ones (a JEM step on CIFAR runs 20 SGLD steps of a WRN-28-10).
SLOW = {"jem_cifar": {"warmup": 3, "fused_warmup": 6, "flop_batches": 1, "steps": 10, "profile_steps": 2,
                      "need_s": 30}}  # fmt: skip
#: The measurement modes: (name, precision, fast path).
MODES = (("fp32", "32-true", False), ("bf16", "bf16-mixed", False), ("fused_bf16", "bf16-mixed", True))
LATE_MODES = (("fused_fp32", "32-true", True),)
#: The host's floor: the update replaced by one that does nothing (``throughput.py --null-update``), so
#: that the row is Lightning's batch loop and the method's host-side bookkeeping alone, the most that
#: a step whose update is a graph replay can reach on this host. For the launch-bound configs.
FLOOR_MODES = (("host_floor", "32-true", False),)
FLOORED = ("rbm_mnist_pcd", "dbm_mnist:joint", "dem_toy", "meg_toy")

LAUNCH_PREFIXES = ("cudaLaunch", "cuLaunch")
GRAPH_LAUNCHES = ("cudaGraphLaunch", "cuGraphLaunch")
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cuStreamSynchronize",
         "cuCtxSynchronize", "cuEventSynchronize")  # fmt: skip


# ---------------------------------------------------------------------------------------------- bookkeeping
class Budget:
    """Seconds left of ``total`` since the start."""

    def __init__(self, total: float) -> None:
        self.total, self.start = total, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.total - self.elapsed()


class Report:
    """Everything measured so far, rewritten to ``gpu_check.json`` and ``gpu_check.md`` after each step."""

    def __init__(self, out: Path, budget: Budget) -> None:
        self.out, self.budget = out, budget
        out.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, Any] = {"header": {}, "peaks": {}, "rows": [], "flops": {}, "profiles": [],
                                     "jem_reference": None, "skipped": [], "notes": []}  # fmt: skip
        self.log_file = out / "gpu_check.log"
        self.log_file.write_text("")

    def log(self, message: str) -> None:
        line = f"[{self.budget.elapsed():6.1f} s] {message}"
        print(line, flush=True)
        with open(self.log_file, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def write(self) -> None:
        self.data["elapsed_s"] = round(self.budget.elapsed(), 1)
        for name, text in (("gpu_check.json", json.dumps(self.data, indent=1, default=str) + "\n"),
                           ("gpu_check.md", markdown(self.data))):  # fmt: skip
            tmp = self.out / (name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.out / name)


# ---------------------------------------------------------------------------------------------- 1. peaks
def header(cuda: bool) -> dict[str, Any]:
    info: dict[str, Any] = {
        "torch": torch.__version__, "lightning": L.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(), "host_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, capability=f"{props.major}.{props.minor}")  # fmt: skip
    else:
        info["gpu"] = None
        info["cpu"] = platform.processor() or platform.machine()
    try:
        import jsonargparse

        info["jsonargparse"] = jsonargparse.__version__
    except Exception:  # noqa: BLE001
        info["jsonargparse"] = None
    return info


def matmul_peak(dtype: torch.dtype, n: int, seconds: float, device: str, tf32: bool = False) -> dict[str, Any]:
    """TFLOP/s of ``n x n @ n x n`` products of ``dtype`` (``2 n^3`` each) repeated for about ``seconds``."""
    cuda = device == "cuda"
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        g = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
        b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
        c = torch.empty(n, n, device=device, dtype=dtype)

        def run(iterations: int) -> float:
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(iterations):
                    torch.mm(a, b, out=c)
                end.record()
                end.synchronize()
                return start.elapsed_time(end) / 1e3
            t0 = time.perf_counter()
            for _ in range(iterations):
                torch.mm(a, b, out=c)
            return time.perf_counter() - t0

        run(3)  # warm-up (the library picks its kernel)
        probe = run(5) / 5
        iterations = max(5, min(100_000, int(seconds / max(probe, 1e-9))))
        elapsed = run(iterations)
        return {"n": n, "iterations": iterations, "seconds": round(elapsed, 3),
                "tflops": round(2 * n**3 * iterations / elapsed / 1e12, 4)}  # fmt: skip
    finally:
        torch.set_float32_matmul_precision(previous)


# ---------------------------------------------------------------------------------------------- 3. FLOPs
class FlopCounter(TorchDispatchMode):
    """FLOPs of the matrix products and convolutions run inside it, by ``torch.utils.flop_counter``'s
    formulas (2 per multiply-add), backward passes included. ``FlopCounterMode`` itself tracks modules
    with backward hooks that break ``autograd.grad`` on leaf inputs, which the samplers call."""

    def __init__(self) -> None:
        super().__init__()
        from torch.utils.flop_counter import flop_registry

        self.registry = flop_registry
        self.total = 0
        self.by_op: Counter[str] = Counter()
        self.uncounted: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        count = self.registry.get(func._overloadpacket)
        if count is not None:
            try:
                flops = int(count(*args, **kwargs, out_val=out))
            except Exception:  # noqa: BLE001 - an operator the formulas do not cover is listed, not fatal
                self.uncounted[str(func._overloadpacket)] += 1
                return out
            self.total += flops
            self.by_op[str(func._overloadpacket)] += flops
        return out


class FlopWindow(L.Callback):
    """FLOPs of the training batches ``first .. first + count - 1`` (:class:`FlopCounter` around them)."""

    def __init__(self, first: int, count: int) -> None:
        self.first, self.count = first, count
        self.mode: FlopCounter | None = None
        self.counter: FlopCounter | None = None
        self.samples = 0
        self.batches = 0
        self.error: str | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if batch_idx == self.first and self.mode is None and self.counter is None:
            self.mode = FlopCounter()
            self.mode.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if self.mode is not None:
            self.batches += 1
            self.samples += throughput.examples(batch)
            if self.batches == self.count:
                self._close()

    def _close(self) -> None:
        mode, self.mode = self.mode, None
        mode.__exit__(None, None, None)
        self.counter = mode

    def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        if self.mode is not None:
            self._close()

    def on_exception(self, trainer, pl_module, exception) -> None:  # noqa: ANN001
        if self.mode is not None:
            self._close()
            self.error = f"{type(exception).__name__} during the window"

    def result(self) -> dict[str, Any] | None:
        if self.counter is None or not self.samples or self.error:
            return None
        total = self.counter.total
        return {"flops_per_sample": total / self.samples, "batches": self.batches, "samples": self.samples,
                "total_flops": total, "by_op": dict(self.counter.by_op.most_common(8)),
                "uncounted_ops": dict(self.counter.uncounted)}  # fmt: skip


# ---------------------------------------------------------------------------------------------- 4. profiles
def trace_events(prof: Any) -> Iterator[tuple[str, Any, float, float]]:
    """``(name, device type, start us, duration us)`` of every event of the trace."""
    try:
        events = prof.profiler.kineto_results.events()
        for e in events:
            yield e.name(), e.device_type(), e.start_ns() / 1e3, e.duration_ns() / 1e3
    except AttributeError:
        for e in prof.events():
            yield e.name, e.device_type, e.time_range.start, e.time_range.elapsed_us()


def summarise_trace(prof: Any, steps: int, wall_s: float, own_syncs: int) -> dict[str, Any]:
    """GPU-busy fraction and per-step counts of launches, synchronisations and scalar reads."""
    device_types = {getattr(torch.autograd.DeviceType, n) for n in ("CUDA", "PrivateUse1") if
                    hasattr(torch.autograd.DeviceType, n)}  # fmt: skip
    intervals: list[tuple[float, float]] = []
    counts = {"kernels": 0, "launches": 0, "graph_launches": 0, "syncs": -own_syncs, "sync_memcpy_calls": 0,
              "memcpy_dtoh": 0, "memcpy_htod": 0, "local_scalar_dense": 0, "aten_item": 0, "cpu_ops": 0}  # fmt: skip
    for name, device, start, duration in trace_events(prof):
        if device in device_types:
            if name.startswith("Memcpy"):
                if "DtoH" in name:
                    counts["memcpy_dtoh"] += 1
                elif "HtoD" in name:
                    counts["memcpy_htod"] += 1
            elif not name.startswith("Memset"):
                counts["kernels"] += 1
                intervals.append((start, start + duration))
            continue
        if name.startswith(GRAPH_LAUNCHES):
            counts["graph_launches"] += 1
        elif name.startswith(LAUNCH_PREFIXES) and "HostFunc" not in name:
            counts["launches"] += 1
        elif name in SYNCS:
            counts["syncs"] += 1
        elif name in ("cudaMemcpy", "cuMemcpyDtoH", "cuMemcpyDtoH_v2"):
            counts["sync_memcpy_calls"] += 1
        elif name == "aten::_local_scalar_dense":
            counts["local_scalar_dense"] += 1
        elif name == "aten::item":
            counts["aten_item"] += 1
        if name.startswith("aten::"):
            counts["cpu_ops"] += 1
    counts["syncs"] = max(0, counts["syncs"])
    kernel_sum = sum(e - s for s, e in intervals) / 1e6
    merged, last_end = 0.0, -math.inf
    for s, e in sorted(intervals):
        if e > last_end:
            merged += e - max(s, last_end)
            last_end = e
    merged /= 1e6
    result: dict[str, Any] = {"steps": steps, "wall_s_per_step": round(wall_s / steps, 6)}
    result.update({f"{k}_per_step": round(v / steps, 2) for k, v in counts.items()})
    if intervals:
        result["kernel_s_per_step"] = round(kernel_sum / steps, 6)
        result["gpu_busy"] = round(kernel_sum / wall_s, 3) if wall_s else None
        result["gpu_busy_merged"] = round(merged / wall_s, 3) if wall_s else None
    return result


class ProfileWindow(L.Callback):
    """``torch.profiler`` over ``steps`` training batches right after the timer's window."""

    def __init__(self, timer: throughput.Timer, steps: int, cuda: bool) -> None:
        self.timer, self.steps, self.cuda = timer, steps, cuda
        self.prof: Any = None
        self.done = 0
        self.t0 = 0.0
        self.result: dict[str, Any] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if self.timer.done_at is None or self.prof is not None or self.result is not None:
            return
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        try:
            throughput.synchronize(pl_module)
            self.prof = profile(activities=activities, record_shapes=False, with_stack=False, profile_memory=False)
            self.prof.__enter__()
        except Exception as exc:  # noqa: BLE001 - no profile is a result too
            self.prof = None
            self.result = {"error": f"starting the profiler: {type(exc).__name__}: {exc}"[:300]}
            return
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if self.prof is None:
            return
        self.done += 1
        if self.done == self.steps:
            self._close(pl_module)

    def _close(self, pl_module: L.LightningModule) -> None:
        own_syncs = 1 if pl_module.device.type == "cuda" else 0
        throughput.synchronize(pl_module)
        wall = time.perf_counter() - self.t0
        prof, self.prof = self.prof, None
        try:
            prof.__exit__(None, None, None)
            self.result = summarise_trace(prof, self.done, wall, own_syncs)
        except Exception as exc:  # noqa: BLE001
            self.result = {"error": f"{type(exc).__name__}: {exc}"[:300], "steps": self.done}

    def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        if self.prof is not None and self.done:
            self._close(pl_module)

    def on_exception(self, trainer, pl_module, exception) -> None:  # noqa: ANN001
        if self.prof is not None:
            try:
                self.prof.__exit__(None, None, None)
            except Exception:  # noqa: BLE001
                pass
            self.prof = None


# ---------------------------------------------------------------------------------------------- 2. rows
def settings(label: str, args: argparse.Namespace) -> dict[str, Any]:
    """Warm-up, timing and window sizes for ``label`` (:data:`SLOW`'s for the slow configs)."""
    base = {"warmup": args.warmup, "fused_warmup": args.fused_warmup, "flop_batches": args.flop_batches,
            "steps": args.steps, "profile_steps": args.profile_steps, "need_s": args.need_s}  # fmt: skip
    if not args.smoke:
        base.update(SLOW.get(label, {}))
    return base


def run_row(label: str, mode: tuple[str, str, bool], args: argparse.Namespace, report: Report) -> dict[str, Any]:
    """One throughput row (with the FLOP window in fp32, the profile in bf16 and on the fast path)."""
    name, precision, fused = mode
    s = settings(label, args)
    opts = copy.copy(args.throughput)
    opts.precision, opts.fused_step = precision, fused
    opts.null_update = name == "host_floor"
    opts.warmup = s["fused_warmup"] if fused else s["warmup"]
    opts.steps = s["steps"]
    flop_window = None
    if name == "fp32" and label not in report.data["flops"]:
        first = 1 if s["flop_batches"] < 5 else 2
        opts.warmup = max(opts.warmup, first + s["flop_batches"])
        flop_window = FlopWindow(first, s["flop_batches"])
    profile = label in args.profiled and name in ("bf16", "fused_bf16")
    windows: list[L.Callback] = []

    def callbacks(timer: throughput.Timer) -> list[L.Callback]:
        if flop_window is not None:
            windows.append(flop_window)
        if profile:
            windows.append(ProfileWindow(timer, s["profile_steps"], args.cuda))
        return windows

    t0 = time.perf_counter()
    try:
        row = throughput.measure(label, opts, callbacks=callbacks, tail=s["profile_steps"] if profile else 0)
    except Exception as exc:  # noqa: BLE001 - a crash is a row with an error
        row = {"config": label, "precision": precision, "fused_step": fused,
               "error": f"{type(exc).__name__}: {exc}"[:300], "traceback": traceback.format_exc()[-1500:]}  # fmt: skip
    row["mode"] = name
    row["wall_s"] = round(time.perf_counter() - t0, 1)
    if flop_window is not None:
        flops = flop_window.result()
        if flops is not None:
            report.data["flops"][label] = {**flops, "counted_in": f"{name} (eager, {precision})"}
        elif flop_window.error:
            row["flop_error"] = flop_window.error
    for window in windows:
        if isinstance(window, ProfileWindow) and window.result is not None:
            entry = {"config": label, "mode": name, **window.result}
            if "kernel_s_per_step" in entry and row.get("s_per_it"):
                entry["gpu_busy_vs_timed"] = round(entry["kernel_s_per_step"] / row["s_per_it"], 3)
            report.data["profiles"].append(entry)
    windows.clear()
    gc.collect()
    if args.cuda:
        torch.cuda.empty_cache()
    return row


def add_rates(report: Report) -> None:
    """Achieved TFLOP/s and the share of the bf16 peak of every row with a FLOP count."""
    peak = (report.data["peaks"].get("bf16") or {}).get("tflops")
    for row in report.data["rows"]:
        flops = report.data["flops"].get(row["config"])
        if row.get("null_update"):
            continue
        if flops and isinstance(row.get("samples_per_s"), (int, float)) and math.isfinite(row["samples_per_s"]):
            row["tflops"] = round(flops["flops_per_sample"] * row["samples_per_s"] / 1e12, 3)
            if peak:
                row["share_of_bf16_peak"] = round(row["tflops"] / peak, 4)


# ---------------------------------------------------------------------------------------------- 5. JEM
def jem_reference(args: argparse.Namespace, report: Report, timeout: float) -> dict[str, Any]:
    """benchmarks/jem_reference.py in a subprocess; its JSON (partial after a timeout)."""
    out_json, out_log = report.out / "jem_reference.json", report.out / "jem_reference.log"
    if args.smoke:
        sizes = ["--device", "cpu", "--depth", "10", "--width", "1", "--blocks", "1", "--iters", "1", "--warmup", "1",
                 "--ours", "32-true", "32-true:fused"]  # fmt: skip
    else:
        sizes = ["--device", "cuda", "--depth", "28", "--width", "10", "--blocks", str(args.jem_blocks),
                 "--iters", str(args.jem_iters), "--warmup", "5", "--ours", "32-true", "bf16-mixed",
                 "bf16-mixed:fused"]  # fmt: skip
    command = [sys.executable, str(ROOT / "benchmarks" / "jem_reference.py"), "--reference-dir",
               str(args.reference_dir), *sizes, "--json", str(out_json)]  # fmt: skip
    result: dict[str, Any] = {"command": " ".join(command[1:]), "timeout_s": round(timeout)}
    out_json.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with open(out_log, "w", encoding="utf-8") as log:
        try:
            proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT)
            result["returncode"] = proc.returncode
        except subprocess.TimeoutExpired:
            result["returncode"] = None
            result["error"] = f"timed out after {timeout:.0f} s (partial results, if any, below)"
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    if out_json.is_file():
        try:
            result["result"] = json.loads(out_json.read_text())
        except json.JSONDecodeError as exc:
            result["error"] = f"unreadable JSON: {exc}"
    if result.get("returncode") not in (0, None) and "error" not in result:
        tail = out_log.read_text(errors="replace").strip().splitlines()[-3:]
        result["error"] = f"exit status {result['returncode']}: " + " | ".join(tail)[-400:]
    return result


# ---------------------------------------------------------------------------------------------- 6. Markdown
def fmt(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return str(value)


def flops_text(flops: float | None) -> str:
    if not flops:
        return ""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops:.3g}"


def best_rows(data: dict[str, Any], label: str) -> dict[str, dict[str, Any]]:
    return {r["mode"]: r for r in data["rows"] if r["config"] == label}


def jem_ratio(data: dict[str, Any]) -> tuple[float | None, str | None]:
    """The best bf16 variant of ours against the authors' code (wall clock), and its name."""
    ref = (data.get("jem_reference") or {}).get("result") or {}
    best: tuple[float | None, str | None] = (None, None)
    for variant, entry in (ref.get("ours") or {}).items():
        ratio = entry.get("ratio_wall")
        if ratio is not None and "bf16" in variant and (best[0] is None or ratio > best[0]):
            best = (ratio, variant)
    return best


def target_text(data: dict[str, Any], label: str, rows: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """``(target, met)`` for the config's target (empty strings without one)."""
    target = TARGETS.get(label)
    if target is None:
        return "", ""
    rates = {m: r["samples_per_s"] for m, r in rows.items()
             if isinstance(r.get("samples_per_s"), (int, float)) and m != "host_floor"}  # fmt: skip
    if "min" in target:
        text = f">= {target['min']:,} samples/s" + (f" ({target['note']})" if "note" in target else "")
        if not rates:
            return text, ""
        mode = max(rates, key=rates.get)
        return text, f"{'yes' if rates[mode] >= target['min'] else 'no'} ({mode}: {rates[mode]:,.0f})"
    bf16 = {m: r for m, r in rows.items() if m in ("bf16", "fused_bf16") and r.get("s_per_it")}
    text = (f"<= {target['max_s_per_it']} s/it bf16, >= {target['min_share']:.0%} of peak, "
            f">= {target['min_ratio']}x the authors' code")  # fmt: skip
    if not bf16:
        return text, ""
    mode = min(bf16, key=lambda m: bf16[m]["s_per_it"])
    r = bf16[mode]
    parts = [f"{'yes' if r['s_per_it'] <= target['max_s_per_it'] else 'no'} ({mode}: {r['s_per_it']:.3f} s/it)"]
    if r.get("share_of_bf16_peak") is not None:
        share = r["share_of_bf16_peak"]
        parts.append(f"{'yes' if share >= target['min_share'] else 'no'} ({share:.1%})")
    ratio, variant = jem_ratio(data)
    if ratio is not None:
        parts.append(f"{'yes' if ratio >= target['min_ratio'] else 'no'} ({ratio:.2f}x, {variant})")
    return text, "; ".join(parts)


def markdown(data: dict[str, Any]) -> str:
    h = data["header"]
    lines = ["# GPU check", ""]
    device = h.get("gpu") or f"CPU ({h.get('cpu')}; smoke run)"
    lines.append(f"{device}; torch {h.get('torch')}, CUDA {h.get('cuda')}, cuDNN {h.get('cudnn')}, "
                 f"Lightning {h.get('lightning')}, jsonargparse {h.get('jsonargparse')}, Python {h.get('python')}; "
                 f"{data.get('elapsed_s')} s of a {h.get('budget_s')} s budget"
                 + (" (complete)" if data.get("complete") else " (in progress or cut short)") + ".")  # fmt: skip
    lines.append("")
    peaks = data["peaks"]
    if peaks:
        lines += ["| matrix product | n | TFLOP/s |", "| --- | --- | --- |"]
        for key, title in (("bf16", "bf16 (nominal dense H200: ~790)"), ("tf32", "fp32 with TF32"),
                           ("fp32", "fp32 (strict)")):  # fmt: skip
            if key in peaks:
                p = peaks[key]
                lines.append(f"| {title} | {p.get('n', '')} | {fmt(p.get('tflops'), 2) or p.get('error', '')} |")
        lines.append("")
    labels = list(dict.fromkeys(r["config"] for r in data["rows"]))
    if labels:
        lines += ["## Throughput (samples/s, synthetic data on the device, through Lightning)", "",
                  "| config | batch | FLOPs/sample | fp32 | bf16 | fused bf16 | fused fp32 | fused bf16 / fp32 | "
                  "fused bf16 TFLOP/s (share of bf16 peak) | target | met | host floor (null update) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for label in labels:
            rows = best_rows(data, label)
            batch = next((r["batch"] for r in rows.values() if "batch" in r), "")
            flops = (data["flops"].get(label) or {}).get("flops_per_sample")

            def rate(mode: str, rows: dict = rows) -> str:
                r = rows.get(mode)
                if r is None:
                    return ""
                if "error" in r:
                    return "error" if "no fast path" not in r["error"] else "n/a"
                text = fmt(r.get("samples_per_s"))
                if r.get("fused_step") and not r.get("captured"):
                    text += " (eager)"
                return text

            speedup = ""
            a, b = rows.get("fused_bf16", {}).get("samples_per_s"), rows.get("fp32", {}).get("samples_per_s")
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
                speedup = f"{a / b:.2f}x"
            fused = rows.get("fused_bf16", {})
            share = ""
            if fused.get("tflops") is not None:
                share = f"{fused['tflops']:.2f}" + (
                    f" ({fused['share_of_bf16_peak']:.1%})" if fused.get("share_of_bf16_peak") is not None else ""
                )
            target, met = target_text(data, label, rows)
            lines.append(f"| `{label}` | {batch} | {flops_text(flops)} | {rate('fp32')} | {rate('bf16')} | "
                         f"{rate('fused_bf16')} | {rate('fused_fp32')} | {speedup} | {share} | {target} | "
                         f"{met} | {rate('host_floor')} |")  # fmt: skip
        lines += ["", "## Every row", "",
                  "| config | mode | samples/s | s/it | timed batches | TFLOP/s | share of peak | captured | "
                  "replays in window | graphs | host CPU-s per s (busiest threads) | run (s) | note |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for r in data["rows"]:
            replayed = ""
            if r.get("fused_step") and "replayed_timed_batches" in r:
                replayed = f"{r['replayed_timed_batches']}/{r.get('timed_batches', '')}"
            note = r.get("error") or r.get("fallback") or ""
            share = r.get("share_of_bf16_peak")
            lines.append(f"| `{r['config']}` | {r['mode']} | {fmt(r.get('samples_per_s'))} | "
                         f"{fmt(r.get('s_per_it'), 5)} | {fmt(r.get('timed_batches'))} | {fmt(r.get('tflops'), 2)} | "
                         f"{'' if share is None else f'{share:.1%}'} | "
                         f"{'' if not r.get('fused_step') else ('yes' if r.get('captured') else 'no')} | "
                         f"{replayed} | {fmt(r.get('graphs'))} | {host_text(r)} | {fmt(r.get('wall_s'), 1)} | "
                         f"{str(note).replace('|', '/')[:160]} |")  # fmt: skip
        lines.append("")
    if data["profiles"]:
        lines += ["## Profiles (per step; torch.profiler window after the timed one)", "",
                  "| config | mode | steps | wall ms | kernel ms | GPU busy (sum; merged) | busy vs unprofiled s/it | "
                  "kernels | launches | graph launches | host syncs | DtoH copies | _local_scalar_dense | "
                  "aten::item |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for p in data["profiles"]:
            if "error" in p:
                lines.append(f"| `{p['config']}` | {p['mode']} | {p.get('steps', '')} | {p['error'][:120]} |"
                             + " |" * 10)  # fmt: skip
                continue
            busy = ""
            if p.get("gpu_busy") is not None:
                busy = f"{p['gpu_busy']:.1%}; {p['gpu_busy_merged']:.1%}"
            vs = "" if p.get("gpu_busy_vs_timed") is None else f"{p['gpu_busy_vs_timed']:.1%}"
            kernel = "" if p.get("kernel_s_per_step") is None else f"{p['kernel_s_per_step'] * 1e3:.3f}"
            lines.append(f"| `{p['config']}` | {p['mode']} | {p['steps']} | {p['wall_s_per_step'] * 1e3:.3f} | "
                         f"{kernel} | {busy} | {vs} | {p['kernels_per_step']} | {p['launches_per_step']} | "
                         f"{p['graph_launches_per_step']} | {p['syncs_per_step']} | {p['memcpy_dtoh_per_step']} | "
                         f"{p['local_scalar_dense_per_step']} | {p['aten_item_per_step']} |")  # fmt: skip
        lines.append("")
    jem = data.get("jem_reference")
    if jem:
        lines += ["## JEM against the authors' code (same GPU, synthetic CIFAR-shaped batches of 64)", ""]
        res = jem.get("result") or {}
        if res:
            lines.append(f"{res.get('network')}; {res.get('device')}; {res.get('blocks')} alternating blocks of "
                         f"{res.get('iters_per_block')} timed iterations after {res.get('warmup')} warm-up ones; "
                         f"cudnn.benchmark {res.get('cudnn_benchmark')} (their module sets it); their buffer: "
                         f"{res.get('their_buffer')}; multiply-adds per image: ours "
                         f"{fmt(res.get('multiply_adds_per_image_ours'))}, theirs "
                         f"{fmt(res.get('multiply_adds_per_image_theirs'))}.")  # fmt: skip
            lines += ["", "| who | s/it | samples/s | ratio to theirs (wall) | replays in timed window | note |",
                      "| --- | --- | --- | --- | --- | --- |",
                      f"| theirs (fp32) | {fmt(res.get('theirs_s_per_it'), 4)} | "
                      f"{fmt(res.get('theirs_samples_per_s'), 1)} | 1 | | |"]  # fmt: skip
            for variant, e in (res.get("ours") or {}).items():
                replayed = f"{e['replayed_timed_batches']}/{e['timed_batches']}" if "timed_batches" in e else ""
                lines.append(f"| ours {variant} | {fmt(e.get('s_per_it'), 4)} | {fmt(e.get('samples_per_s'), 1)} | "
                             f"{fmt(e.get('ratio_wall'), 2)} | {replayed} | {e.get('error', '')} |")  # fmt: skip
            lines.append("")
        if jem.get("error") or jem.get("skipped"):
            lines += [f"JEM comparison: {jem.get('error') or jem.get('skipped')}", ""]
    if data["skipped"]:
        lines += ["## Skipped", ""] + [f"- {s}" for s in data["skipped"]] + [""]
    if data["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in data["notes"]] + [""]
    return "\n".join(lines)


def host_text(row: dict[str, Any]) -> str:
    """The host's CPU seconds per wall-clock second in the timed window, and its three busiest thread groups."""
    total = row.get("host_cpu_per_wall")
    if not isinstance(total, (int, float)) or math.isnan(total):
        return ""
    groups = "; ".join(f"{t['threads']} x{t['count']} {t['cpu_per_wall']:.2f}" for t in row.get("host_threads", [])[:3])
    return f"{total:.2f}" + (f" ({groups})" if groups else "")


# ---------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_check_out"))
    parser.add_argument("--budget-s", type=float, default=None, help="seconds for everything (default 450; smoke 170)")
    parser.add_argument("--smoke", action="store_true", help="the whole pipeline on the CPU with tiny settings")
    parser.add_argument("--configs", nargs="*", help="these configs only (default: every shipped one and the variants)")
    parser.add_argument("--reference-dir", type=Path, default=ROOT / ".ref" / "JEM",
                        help="the JEM authors' code (device-prep --jem-reference puts it in .ref/JEM)")  # fmt: skip
    parser.add_argument("--reference-timeout", type=float, default=200.0)
    parser.add_argument("--jem-blocks", type=int, default=2)
    parser.add_argument("--jem-iters", type=int, default=5)
    parser.add_argument("--peak-size", type=int, default=8192)
    parser.add_argument("--peak-seconds", type=float, default=2.0)
    parser.add_argument("--warmup", type=int, default=10, help="eager warm-up batches")
    parser.add_argument("--fused-warmup", type=int, default=25, help="warm-up batches on the fast path")
    parser.add_argument("--steps", type=int, default=30, help="timed batches at least")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="timed seconds at least")
    parser.add_argument("--max-seconds", type=float, default=3.0, help="timed seconds at most")
    parser.add_argument("--flop-batches", type=int, default=10, help="eager fp32 steps of the FLOP count")
    parser.add_argument("--profile-steps", type=int, default=10)
    parser.add_argument("--pool", type=int, default=16, help="distinct synthetic batches, cycled")
    parser.add_argument("--need-s", type=float, default=8.0, help="budget a row needs to start")
    parser.add_argument("--no-fused-fp32", action="store_true", help="skip the fast path in fp32")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.smoke:
        args.budget_s = args.budget_s or 170.0
        args.configs = args.configs or ["dem_toy", "meg_toy", "rbm_mnist_pcd", "dbm_mnist:joint", "jem_toy",
                                        "mnist_classifier"]  # fmt: skip
        args.peak_size, args.peak_seconds = 256, 0.2
        args.warmup, args.fused_warmup, args.steps, args.min_seconds, args.max_seconds = 2, 2, 2, 0.0, 1.0
        args.flop_batches, args.profile_steps, args.pool, args.need_s = 2, 2, 4, 3.0
    args.budget_s = args.budget_s or 450.0
    args.cuda = torch.cuda.is_available() and not args.smoke
    if not args.cuda and not args.smoke:
        raise SystemExit("no CUDA device: run with --smoke for the CPU check")
    all_labels = [n.removesuffix(".yaml") for n in throughput.shipped_configs()] + list(throughput.VARIANTS)
    labels = args.configs or all_labels
    unknown = [label for label in labels if label not in all_labels]
    if unknown:
        raise SystemExit(f"unknown configs {unknown}; known: {all_labels}")
    args.profiled = PROFILED
    throughput.quiet_lightning()
    accelerator = "gpu" if args.cuda else "cpu"
    options = ["--accelerator", accelerator, "--data-on-device", "--pool", str(args.pool)]
    options += ["--min-seconds", str(args.min_seconds), "--max-seconds", str(args.max_seconds)]
    args.throughput = throughput.build_parser().parse_args(options)

    budget = Budget(args.budget_s)
    report = Report(args.out, budget)
    try:
        run(args, labels, budget, report)
    except BaseException as exc:  # noqa: BLE001 - whatever was measured stays on disk, with the reason it stopped
        report.data["fatal"] = f"{type(exc).__name__}: {exc}"[:500]
        report.data["notes"].append(f"stopped early: {report.data['fatal']}\n{traceback.format_exc()[-2000:]}")
        report.write()
        raise
    text = markdown(report.data)
    print(text[: text.find("## Every row")] if "## Every row" in text else text, flush=True)


def run(args: argparse.Namespace, labels: list[str], budget: Budget, report: Report) -> None:
    """The measurements, in order, each written to ``report`` as soon as it is made."""
    report.data["header"] = {**header(args.cuda), "budget_s": args.budget_s, "smoke": args.smoke,
                             "argv": sys.argv[1:]}  # fmt: skip
    report.data["notes"] += [
        "samples/s: examples consumed by training steps per wall-clock second over the timed window (the device "
        "synchronised at its start and end only); synthetic data made on the device once (Lightning's transfer "
        "is a no-op); logger off, progress bar off, log_every_n_steps 50.",
        "fast path: captured = the update ran as CUDA graph replays; 'replays in window' = replayed timed batches "
        "/ timed batches (a logging step's variant is captured only at its fourth occurrence, so logging steps "
        "stay eager in short windows).",
        "FLOPs/sample: torch.utils.flop_counter's formulas (matrix products and convolutions, 2 per "
        "multiply-add) over eager fp32 steps, forward, backward, sampler chains and optimiser steps included, "
        "divided by their examples; share of peak = achieved TFLOP/s / the measured bf16 matrix-product peak.",
        "fp32 rows: float32 matrix products at torch's default 'highest' precision (cuDNN convolutions may use "
        "TF32, its default); the fast path sets 'high' (TF32 matrix products) for its own run.",
        "host CPU-s per s: the process's CPU time over the timed window's wall-clock time, and the thread groups "
        "(by thread name, from /proc/self/task; the main thread on its own) that used the most of it.",
        "profiles: '_local_scalar_dense' and 'aten::item' count every read of a tensor's value on the host, also "
        "of host tensors (e.g. a non-fused optimiser's step counter), which does not wait for the GPU; 'host "
        "syncs' are the CUDA runtime's synchronisation calls, the ones that do.",
    ]
    report.write()
    report.log(f"header: {json.dumps(report.data['header'])}")

    # 1. peaks
    device = "cuda" if args.cuda else "cpu"
    for key, dtype, tf32 in (("bf16", torch.bfloat16, False), ("tf32", torch.float32, True),
                             ("fp32", torch.float32, False)):  # fmt: skip
        seconds = args.peak_seconds if key == "bf16" else args.peak_seconds / 2
        try:
            report.data["peaks"][key] = matmul_peak(dtype, args.peak_size, seconds, device, tf32)
        except Exception as exc:  # noqa: BLE001
            report.data["peaks"][key] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        report.log(f"peak {key}: {report.data['peaks'][key]}")
        report.write()
    if args.cuda:
        torch.cuda.empty_cache()

    def measure_all(group: list[str], modes: tuple) -> None:
        for label in group:
            for mode in modes:
                need = settings(label, args)["need_s"]
                if budget.left() < need:
                    report.data["skipped"].append(f"{label} {mode[0]}: {budget.left():.0f} s left, needs {need:.0f}")
                    report.log(f"skip {label} {mode[0]} (budget)")
                    report.write()
                    continue
                if mode[2] and label == "mnist_classifier":
                    continue  # the classifier has no fast path (its row says so in fp32/bf16 only)
                report.log(f"run {label} {mode[0]} ...")
                row = run_row(label, mode, args, report)
                report.data["rows"].append(row)
                add_rates(report)
                report.log(f"row {json.dumps({k: v for k, v in row.items() if k != 'traceback'})}")
                report.write()

    first = [label for label in PRIORITY if label in labels]
    rest = [label for label in labels if label not in first]
    measure_all(first, MODES)
    measure_all([label for label in FLOORED if label in labels], FLOOR_MODES)

    # 5. JEM against the authors' code
    reference = args.reference_dir
    if not (reference / "train_wrn_ebm.py").is_file():
        report.data["jem_reference"] = {"skipped": f"no JEM reference code in {reference} (device-prep "
                                                   "--jem-reference puts it in .ref/JEM)"}  # fmt: skip
        report.log(report.data["jem_reference"]["skipped"])
    elif budget.left() < 60 + (0 if args.smoke else 10 * len(rest)):
        report.data["jem_reference"] = {"skipped": f"budget: {budget.left():.0f} s left"}
    else:
        timeout = min(args.reference_timeout, budget.left() - (20 if args.smoke else 5 * len(rest) + 20))
        report.log(f"JEM reference (timeout {timeout:.0f} s) ...")
        report.data["jem_reference"] = jem_reference(args, report, timeout)
        report.log(f"JEM reference: {json.dumps(report.data['jem_reference'])[:2000]}")
    report.write()

    measure_all(rest, MODES)
    if not args.no_fused_fp32:
        measure_all([label for label in [*first, *rest] if label != "mnist_classifier"], LATE_MODES)
    report.data["complete"] = True
    report.write()
    report.log(f"done in {budget.elapsed():.0f} s: {report.out / 'gpu_check.md'}")


if __name__ == "__main__":
    main()
