"""JEM training throughput side by side with the authors' code (Grathwohl et al. 2020), same process.

One training iteration of each, on synthetic CIFAR-shaped data (3 x 32 x 32 in [-1, 1] plus the
N(0, 0.03^2) data noise, 10 classes), batch 64, 20 SGLD steps (step 1, noise 0.01) from a
10,000-image replay buffer restarted with probability 0.05, the cross-entropy plus the p(x) term,
one Adam step:

* **ours**: :class:`~lightning_ebm.models.JEM` built by the command line's parser from the shipped
  ``jem_cifar.yaml`` with a smaller wide ResNet (``--depth``, ``--width``; WRN-28-10 takes minutes
  per iteration on a CPU), trained by ``Trainer.fit``; a timing callback measures from the start of
  the first timed batch to the end of the last, so Lightning's loop and data loading are included.
* **theirs**: the loop body of their ``train_wrn_ebm.py`` driven from here, with their modules
  imported at run time from a checkout given by ``--reference-dir`` (nothing of theirs is stored in
  this repository): their ``CCF`` network and replay buffer (``get_model_and_buffer``), their SGLD
  sampler (``get_sample_q``), then ``-(mean f(x) - mean f(x_q))`` plus the cross-entropy of
  ``classify`` on a labelled batch, their divergence check (``|L| > 1e8``, one ``.item()``), Adam
  with their warm-up. Their loop draws two data batches per iteration (one for p(x), one labelled
  for p(y|x)), so it runs three forward passes of 64 images after sampling where ours runs two;
  that is their recipe and is timed as it is. Their code picks the device only in ``main`` (not
  called here); here it is ``--device``: on the CPU (the default) their ``.to(device)`` and
  ``.cpu()`` are no-ops.

The two alternate in blocks (``--iters`` timed iterations after ``--warmup`` untimed ones per block,
``--blocks`` blocks, the order flipped every block) so that both see the same machine load; the
figures are medians over blocks of samples/s of wall-clock time and per CPU-second of this process
(``time.process_time``, steadier on a shared machine). The networks are compared before timing:
the same parameter shapes (theirs has two more linear heads, ``energy_output`` and the backbone's
``linear``, which its class-conditional model never uses) and the same multiply-adds per image. Their blocks halve the
resolution in the second convolution; ours in the first by default, so the benchmark builds ours
with ``downsample: second`` (``--downsample first`` times the shipped layout, which does fewer
multiply-adds); ``--contiguous`` times ours in PyTorch's default memory layout instead of
channels-last.

On a GPU (``--device cuda``): their network and sampler run on the GPU as their ``main`` runs them
(``get_model_and_buffer`` and ``get_sample_q`` with the CUDA device); their replay buffer stays in host
memory, as in their script (their ``sample_p_0`` draws the restarts on the host and mixes them with
the buffer's rows there, then moves the batch to the device, and their sampler writes the chains back
with ``.cpu()``): moving it would mean changing their code. Their data batches are on the GPU. Ours:
the data made on the GPU once and served as device tensors (Lightning's transfer is then a no-op),
``Trainer(accelerator="gpu")``, in each precision of ``--ours`` (``32-true``, ``bf16-mixed``; with
``:fused``, the fast path, ``fused_step``, which captures the step as CUDA graphs after three eager
calls, so ``--warmup`` must be at least 4 there; each block is a fresh ``Trainer.fit``, so each block
captures anew in its warm-up). Importing their module sets ``torch.backends.cudnn.benchmark = True``
for the whole process (ours too); the result says so. Clocks are synchronised at the start and end
of each timed block. ``--depth 28 --width 10`` is the paper's WRN-28-10.

Get their code with ``git clone https://github.com/wgrathwohl/JEM`` (it needs torchvision, numpy,
tqdm). Examples (one thread, a few minutes; the GPU one about a minute on an H200)::

    OMP_NUM_THREADS=1 python benchmarks/jem_reference.py --reference-dir ../JEM --threads 1
    python benchmarks/jem_reference.py --reference-dir .ref/JEM --device cuda --depth 28 --width 10 \
        --ours 32-true bf16-mixed bf16-mixed:fused --blocks 2 --warmup 5 --iters 5
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lightning_ebm, not an installed one
from lightning_ebm.cli import EBMCLI, resolve_config_args  # noqa: E402
from lightning_ebm.optim import to_spec  # noqa: E402

BATCH, CLASSES, SHAPE = 64, 10, (3, 32, 32)


def synthetic_batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of images in [-1, 1] and labels (the values do not change the cost)."""
    x = torch.rand(BATCH, *SHAPE, generator=generator) * 2 - 1
    return x, torch.randint(0, CLASSES, (BATCH,), generator=generator)


# ---------------------------------------------------------------------------------------------- ours
def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class Timer(L.Callback):
    """Wall-clock and CPU time from the start of batch ``warmup`` to the end of batch ``total`` (on a GPU,
    the device synchronised there, at the start and at the end, never in between)."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total, self.batches, self.wall, self.cpu = warmup, total, 0, 0.0, 0.0
        self.replays = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if self.batches == self.warmup:
            synchronize(pl_module.device)
            self.t0, self.c0 = time.perf_counter(), time.process_time()
            captured = getattr(pl_module, "_captured", None)
            self.replays0 = 0 if captured is None else captured.replays

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.batches += 1
        if self.batches > self.warmup:
            if self.batches == self.total:
                synchronize(pl_module.device)
            self.wall, self.cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
            captured = getattr(pl_module, "_captured", None)
            self.replays = 0 if captured is None else captured.replays - self.replays0


class Batches:
    """Ready-made batches served in order (a plain list would be read by Lightning as a list of loaders)."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __iter__(self):  # noqa: ANN204
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def parse_variant(variant: str) -> tuple[str, bool]:
    """``PRECISION[:fused]`` -> (Lightning precision, fast path)."""
    precision, _, fused = variant.partition(":")
    if fused not in ("", "fused"):
        raise SystemExit(f"--ours {variant!r}: PRECISION or PRECISION:fused")
    return precision, fused == "fused"


def build_ours(args: argparse.Namespace, fused: bool = False) -> L.LightningModule:
    wrn = "--model.init_args.classifier.init_args."
    argv = ["--config", "jem_cifar", "--trainer.logger", "false", f"{wrn}depth", str(args.depth),
            f"{wrn}widen_factor", str(args.width), f"{wrn}downsample", args.downsample,
            f"{wrn}channels_last", str(not args.contiguous).lower(),
            "--model.init_args.fused_step", str(fused).lower()]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli = EBMCLI(args=resolve_config_args(argv), run=False)
    hp = cli.model.hparams
    expected = dict(sgld_steps=20, sgld_step_size=1.0, sgld_noise=0.01, buffer_size=10_000, reinit_prob=0.05,
                    data_noise=0.03, clf_weight=1.0, px_weight=1.0, pxy_weight=0.0)  # fmt: skip
    assert all(hp[k] == v for k, v in expected.items()), {k: hp[k] for k in expected}
    optimizer = to_spec(hp["optimizer"])  # the injected optimiser's {class_path, init_args}
    assert optimizer["init_args"].get("lr") == 1e-4, optimizer
    assert cli.datamodule.hparams.batch_size == BATCH
    return cli.model


def ours_block(
    model: L.LightningModule, args: argparse.Namespace, generator: torch.Generator, precision: str = "32-true"
) -> tuple[float, float, int]:
    """``warmup + iters`` batches through a fresh ``Trainer.fit`` (the model and its buffer persist);
    wall and CPU seconds of the timed batches and how many of them were replays of the fast path."""
    batches = [synthetic_batch(generator) for _ in range(args.warmup + args.iters)]
    cuda = args.device == "cuda"
    if cuda:  # made on the device once: Lightning's transfer of a batch is then a no-op
        loader = Batches([(x.to("cuda"), y.to("cuda")) for x, y in batches])
    else:
        data = torch.utils.data.TensorDataset(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
        loader = torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=False)
    timer = Timer(args.warmup, args.warmup + args.iters)
    trainer = L.Trainer(
        accelerator="gpu" if cuda else "cpu", devices=1, precision=precision, max_epochs=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0, callbacks=[timer], default_root_dir=tempfile.mkdtemp(prefix="lightning_ebm_jemref_"),
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, loader)
    assert timer.batches == args.warmup + args.iters, timer.batches
    for message in {str(w.message) for w in caught if str(w.message).startswith("fused_step:")}:
        print(f"  (ours: {message})", flush=True)
    return timer.wall, timer.cpu, timer.replays


# ---------------------------------------------------------------------------------------------- theirs
class Reference:
    """Their network, buffer, sampler and optimiser; :meth:`iteration` is their loop body."""

    def __init__(self, reference_dir: Path, args: argparse.Namespace) -> None:
        if not (reference_dir / "train_wrn_ebm.py").is_file():
            raise SystemExit(f"no train_wrn_ebm.py in {reference_dir}: pass a checkout of github.com/wgrathwohl/JEM")
        sys.path.insert(0, str(reference_dir))
        import train_wrn_ebm as ref  # their module, from their checkout

        self.args = SimpleNamespace(
            depth=args.depth, width=args.width, norm=None, dropout_rate=0.0, n_classes=CLASSES, uncond=False,
            buffer_size=10_000, load_path=None, batch_size=BATCH, n_steps=20, sgld_lr=1.0, sgld_std=0.01,
            reinit_freq=0.05, lr=1e-4, warmup_iters=1000, p_x_weight=1.0, p_y_given_x_weight=1.0,
        )  # fmt: skip
        self.device = torch.device(args.device)
        self.f, self.buffer = ref.get_model_and_buffer(self.args, self.device, None)  # their buffer: on the host
        self.sample_q = ref.get_sample_q(self.args, self.device)
        self.optim = torch.optim.Adam(self.f.parameters(), lr=self.args.lr, betas=[0.9, 0.999], weight_decay=0.0)
        self.cur_iter = 0

    def iteration(self, x_p_d: torch.Tensor, x_lab: torch.Tensor, y_lab: torch.Tensor) -> None:
        a, f = self.args, self.f
        if self.cur_iter <= a.warmup_iters:
            for group in self.optim.param_groups:
                group["lr"] = a.lr * self.cur_iter / float(a.warmup_iters)
        x_q = self.sample_q(f, self.buffer)
        loss = a.p_x_weight * -(f(x_p_d).mean() - f(x_q).mean())
        loss = loss + a.p_y_given_x_weight * nn.CrossEntropyLoss()(f.classify(x_lab), y_lab)
        if loss.abs().item() > 1e8:
            raise RuntimeError("their divergence check fired")
        self.optim.zero_grad()
        loss.backward()
        self.optim.step()
        self.cur_iter += 1

    def block(self, args: argparse.Namespace, generator: torch.Generator) -> tuple[float, float]:
        noisy = [(x + 0.03 * torch.randn_like(x), y) for x, y in (synthetic_batch(generator) for _ in range(2))]
        (x_p_d, _), (x_lab, y_lab) = ((x.to(self.device), y.to(self.device)) for x, y in noisy)
        for _ in range(args.warmup):
            self.iteration(x_p_d, x_lab, y_lab)
        synchronize(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(args.iters):
            self.iteration(x_p_d, x_lab, y_lab)
        synchronize(self.device)
        return time.perf_counter() - t0, time.process_time() - c0


# ---------------------------------------------------------------------------------------------- the networks
def multiply_adds(net: nn.Module, x: torch.Tensor, forward=None) -> int:  # noqa: ANN001
    """Multiply-adds of the convolutions and linear layers of one forward pass, per image."""
    total = 0

    def hook(module: nn.Module, inputs, output) -> None:  # noqa: ANN001
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += output.numel() * k
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        (forward or net)(x.to(next(net.parameters()).device))
    for h in handles:
        h.remove()
    return total // x.shape[0]


def compare_networks(ours: nn.Module, theirs: nn.Module) -> dict[str, object]:
    """Parameter shapes and multiply-adds; theirs carries two linear heads that its class-conditional
    model never uses: ``energy_output`` and the backbone's own ``f.linear``."""
    mine = sorted(tuple(p.shape) for p in ours.parameters())
    unused = {id(p) for m in (theirs.energy_output, theirs.f.linear) for p in m.parameters()}
    their_used = sorted(tuple(p.shape) for p in theirs.parameters() if id(p) not in unused)
    assert mine == their_used, "the two networks differ in their parameters"
    x = torch.zeros(2, *SHAPE)
    macs_ours, macs_theirs = multiply_adds(ours, x), multiply_adds(theirs, x, theirs.classify)
    return {
        "parameters_ours": sum(p.numel() for p in ours.parameters()),
        "parameters_theirs": sum(p.numel() for p in theirs.parameters()),
        "parameters_theirs_unused_heads": sum(p.numel() for p in theirs.parameters() if id(p) in unused),
        "multiply_adds_per_image_ours": macs_ours,
        "multiply_adds_per_image_theirs": macs_theirs,
    }


def summarise(args: argparse.Namespace, info: dict, rates: dict, errors: dict, done: bool) -> dict[str, object]:
    """The result so far: medians over blocks per method, ours against theirs per variant of ours."""
    cuda = args.device == "cuda"
    result = {
        "network": f"WRN-{args.depth}-{args.width}, no normalisation, ours downsample={args.downsample}, "
        f"channels_last={not args.contiguous}",
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "threads": args.threads, "blocks": args.blocks, "iters_per_block": args.iters, "warmup": args.warmup,
        "batch": BATCH, "complete": done,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}, "
                   f"lightning {L.__version__}",
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "their_buffer": "host memory (as in their script)" if cuda else "cpu",
        **info,
    }  # fmt: skip

    def medians(runs: list[tuple[float, float, float, int]]) -> dict[str, float]:
        return {
            "samples_per_s": round(statistics.median(r[0] for r in runs), 2),
            "samples_per_cpu_s": round(statistics.median(r[1] for r in runs), 2),
            "s_per_it": round(statistics.median(r[2] for r in runs), 4),
        }

    theirs = medians(rates["theirs"]) if rates["theirs"] else None
    if theirs:
        result.update({f"theirs_{k}": v for k, v in theirs.items()})
    variants = {}
    for variant in args.ours:
        entry: dict[str, object] = {}
        if rates[variant]:
            entry.update(medians(rates[variant]))
            entry["replayed_timed_batches"] = sum(r[3] for r in rates[variant])
            entry["timed_batches"] = args.iters * len(rates[variant])
            if theirs:
                entry["ratio_wall"] = round(entry["samples_per_s"] / theirs["samples_per_s"], 3)
                entry["ratio_cpu"] = round(entry["samples_per_cpu_s"] / theirs["samples_per_cpu_s"], 3)
        if variant in errors:
            entry["error"] = errors[variant]
        variants[variant] = entry
    result["ours"] = variants
    first = variants.get(args.ours[0], {})  # the figures of the CPU runs' format: the first variant's
    for key in ("samples_per_s", "samples_per_cpu_s"):
        if key in first:
            result[f"ours_{key}"] = first[key]
    for key in ("ratio_wall", "ratio_cpu"):
        if key in first:
            result[key] = first[key]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-dir", type=Path, required=True, help="a checkout of github.com/wgrathwohl/JEM")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--ours", nargs="+", default=["32-true"],
                        help="our variants, PRECISION[:fused] each: 32-true bf16-mixed bf16-mixed:fused")  # fmt: skip
    parser.add_argument("--depth", type=int, default=10, help="wide ResNet depth (6n + 4); 28 for the paper's")
    parser.add_argument("--width", type=int, default=2, help="wide ResNet widening factor; 10 for the paper's")
    parser.add_argument("--downsample", choices=["first", "second"], default="second",
                        help="which convolution of ours halves the resolution (theirs: second)")  # fmt: skip
    parser.add_argument("--contiguous", action="store_true",
                        help="ours in PyTorch's default memory layout instead of channels-last")  # fmt: skip
    parser.add_argument("--blocks", type=int, default=4, help="alternating blocks per method")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per block")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations at the start of each block")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here (rewritten after every block)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    variants = {variant: parse_variant(variant) for variant in args.ours}
    if args.device == "cuda" and any(fused for _, fused in variants.values()) and args.warmup < 4:
        raise SystemExit("the fast path captures at its fourth call: --warmup 4 or more")
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    ours = {variant: build_ours(args, fused) for variant, (_, fused) in variants.items()}
    theirs = Reference(args.reference_dir.resolve(), args)
    info = compare_networks(next(iter(ours.values())).classifier, theirs.f)
    print(json.dumps(info), flush=True)

    rates: dict[str, list[tuple[float, float, float, int]]] = {who: [] for who in ("theirs", *ours)}
    errors: dict[str, str] = {}
    for block in range(args.blocks):
        order = ["theirs", *ours][:: 1 if block % 2 == 0 else -1]  # flipped every block
        for who in order:
            if who in errors:
                continue
            try:
                if who == "theirs":
                    wall, cpu = theirs.block(args, generator)
                    replayed = 0
                else:
                    wall, cpu, replayed = ours_block(ours[who], args, generator, variants[who][0])
            except Exception as exc:  # noqa: BLE001 - one failing variant is a result; the others go on
                errors[who] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
                print(f"block {block} {who}: {errors[who]}", flush=True)
                continue
            samples = args.iters * BATCH
            rates[who].append((samples / wall, samples / cpu, wall / args.iters, replayed))
            print(f"block {block} {who:18s}: {wall / args.iters:7.4f} s/iteration, "
                  f"{samples / wall:8.1f} samples/s, {samples / cpu:7.1f} per CPU-s"
                  + (f", {replayed} replays" if replayed else ""), flush=True)  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps(summarise(args, info, rates, errors, False), indent=1) + "\n")
    result = summarise(args, info, rates, errors, True)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
