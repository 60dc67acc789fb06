"""The command line: ``python -m lightning_ebm fit|validate|test|predict --config NAME.yaml``.

A thin :class:`~lightning.pytorch.cli.LightningCLI` with the defaults a user expects (TensorBoard,
progress bar, last and best checkpoints, the resolved config saved next to the logs, a fixed seed),
shipped configs addressable by bare name (``python -m lightning_ebm configs`` lists them), and short
error messages instead of tracebacks: a user error prints one line naming the problem and the fix and
exits with status 2; a fit stopped by SIGTERM writes its last checkpoint, prints the command that
resumes it and exits with status 143.

``--ckpt_path`` is checked before anything runs: the file must be a complete checkpoint of this
lightning-ebm's format, of the config's model class and data shape; ``last`` and ``best`` name the
newest such checkpoint of the config's log directory. The checkpoint's hyper-parameters replace the
config's (LightningCLI's rule, so that the weights fit): a resumed fit refuses model options given on
the command line that differ from the checkpoint's, while ``validate``/``test``/``predict`` apply them
(sampler settings such as ``--model.init_args.mcmc_steps 0``), and the saved ``config.yaml`` records
what ran. Options of the config file that the checkpoint replaces are named in a note.
"""

from __future__ import annotations

import difflib
import errno
import importlib
import inspect
import os
import pickle
import re
import shlex
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins import CheckpointIO, LayerSync
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_ebm.callbacks.checkpoint import PeriodicMetricCheckpoint
from lightning_ebm.callbacks.utils import run_dir
from lightning_ebm.errors import UserError
from lightning_ebm.models.base import NetworkModule
from lightning_ebm.plugins import (
    DISK_FULL,
    AtomicCheckpointIO,
    SyncBatchNormPlugin,
    check_checkpoint_format,
    disk_full_message,
    newest_checkpoint,
    remove_stale_temporary_files,
)

#: Directory of the shipped configs (inside the package, also linked as ``configs/`` in the repo).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SUBCOMMANDS = ("fit", "validate", "test", "predict")
EVALUATION = ("validate", "test", "predict")
#: Exit status of a user error, and of a fit stopped by SIGTERM (128 + 15, as the shell reports it).
EXIT_USER_ERROR = 2
EXIT_SIGTERM = 143
DESCRIPTION = (
    "lightning-ebm: energy-based models (RBM, DBN, DBM, DEM, MEG, JEM) on PyTorch Lightning. "
    "Train with `fit --config NAME`, evaluate a checkpoint with `test --config NAME --ckpt_path PATH`; "
    "`configs` lists the shipped configs."
)


def program_name() -> str:
    """How the user started the command line: ``python -m lightning_ebm`` or the console script."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    if not name or name in ("__main__.py", "-c", "-m") or name.startswith("pytest") or name.endswith(".py"):
        return "python -m lightning_ebm"
    return name


def shipped_configs() -> list[str]:
    """Names of the configs shipped with the package."""
    return sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))


def config_summary(path: Path) -> str:
    """The first line of a config's header comment."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line.startswith("#"):
                    return ""
                text = line.lstrip("#").strip()
                if text:
                    return text
    except OSError:
        pass
    return ""


def list_configs() -> str:
    """One line per shipped config: its name and the first line of its header comment."""
    names = shipped_configs()
    width = max((len(n.removesuffix(".yaml")) for n in names), default=0)
    lines = [f"{n.removesuffix('.yaml'):<{width}}  {config_summary(CONFIG_DIR / n)}".rstrip() for n in names]
    usage = f"Use one with: {program_name()} fit --config NAME (NAME or NAME.yaml; --print_config shows it in full)"
    return "\n".join([*lines, usage])


def resolve_config(value: str) -> str:
    """A config path as given, or the shipped config of that name (``dem_toy`` or ``dem_toy.yaml``)."""
    if Path(value).is_file():
        return value
    for candidate in (CONFIG_DIR / value, CONFIG_DIR / f"{value}.yaml"):
        if candidate.is_file():
            return str(candidate)
    names = shipped_configs()
    close = difflib.get_close_matches(Path(value).name, names, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UserError(
        f"unknown config {value!r}: no such file, and no shipped config of that name.{hint} "
        f"Shipped configs: {', '.join(names)}"
    )


def resolve_config_args(argv: list[str]) -> list[str]:
    """Replace shipped config names after ``--config``/``-c`` by their paths."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config", "-c") and i + 1 < len(argv):
            out += [arg, resolve_config(argv[i + 1])]
            i += 2
            continue
        if arg.startswith("--config="):
            arg = "--config=" + resolve_config(arg.split("=", 1)[1])
        out.append(arg)
        i += 1
    return out


class EBMCLI(LightningCLI):
    """LightningCLI for every :class:`~lightning_ebm.models.EnergyBasedModel` (and the other
    :class:`~lightning_ebm.models.base.NetworkModule` s, such as the MNIST ``Classifier``) and any data module."""

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        #: model options given on the command line that replaced the checkpoint's (validate/test/predict).
        self.command_line_overrides: list[str] = []
        super().__init__(
            NetworkModule,
            None,  # any LightningDataModule, chosen by class_path (optional for --print_config)
            subclass_mode_model=True,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                "logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "lightning_logs", "name": "default"},
                },
                "log_every_n_steps": 50,
            },
            seed_everything_default=0,
            parser_kwargs={
                "exit_on_error": False,
                "allow_abbrev": False,
                "prog": program_name(),
                "description": DESCRIPTION,
            },
            auto_configure_optimizers=False,
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(PeriodicMetricCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch}-{step}",
                "checkpoint.save_top_k": 1,
            }
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        self._args = [str(a) for a in args] if isinstance(args, (list, tuple)) else list(sys.argv[1:])
        super().parse_arguments(parser, args)

    # ------------------------------------------------------------------ --ckpt_path
    def _parse_ckpt_path(self) -> None:
        """Check the ``--ckpt_path`` checkpoint and take its hyper-parameters into the config.

        Replaces LightningCLI's version, which loads any file it is given and lets the checkpoint's
        hyper-parameters silently replace everything the config and the command line say about the
        model, another model class included.
        """
        sub = self.config.get("subcommand")
        if sub not in SUBCOMMANDS:
            return
        config = self.config[sub]
        value = config.get("ckpt_path")
        if value is None:
            if sub in EVALUATION:
                _note(
                    f"no --ckpt_path: {sub} runs on the model as the config initialises it (untrained); "
                    "give --ckpt_path PATH (or last) to evaluate a trained one"
                )
            return
        value = str(value)
        if value in ("last", "best"):
            path = self._find_checkpoint(value, config)
            config.ckpt_path = str(path)
            _note(f"--ckpt_path {value}: {'resuming' if sub == 'fit' else 'evaluating'} {path}")
        elif value == "hpc" or value.startswith("registry:") or "://" in value:
            return super()._parse_ckpt_path()  # special and remote paths: Lightning's own handling
        else:
            path = Path(value)
        checkpoint = load_checkpoint_file(path)
        check_checkpoint_format(checkpoint, path)
        if sub == "fit":
            check_resumable(checkpoint, path, config.get("trainer"))
        self._take_checkpoint_hparams(sub, checkpoint, path)

    def _find_checkpoint(self, which: str, config: Namespace) -> Path:
        """The newest ``last`` checkpoint of the config's log directory, or the best checkpoint that it
        records (``--ckpt_path last`` / ``best``)."""
        directories, where = checkpoint_directories(config)
        lasts = [p for d in directories for p in _files(d) if _LAST.match(p.name)]
        if not lasts:
            raise UserError(
                f"--ckpt_path {which}: no last checkpoint (last.ckpt) was found in {where}, the checkpoint directory "
                "of this config's runs: train one with `fit` first, or give the checkpoint's path "
                "(--ckpt_path PATH/checkpoints/last.ckpt)"
            )
        last = max(lasts, key=lambda p: p.stat().st_mtime)
        if which == "last":
            return last
        try:
            states = load_checkpoint_file(last).get("callbacks") or {}
        except UserError:
            states = {}
        for state in states.values():
            best = state.get("best_model_path") if isinstance(state, dict) else None
            if best and Path(best).is_file():
                return Path(best)
        raise UserError(
            f"--ckpt_path best: the newest run in {where} ({last.parent}) recorded no best checkpoint that still "
            f"exists: give the checkpoint's path, or use --ckpt_path last"
        )

    def _take_checkpoint_hparams(self, sub: str, checkpoint: dict[str, Any], path: Path) -> None:
        """Compare the checkpoint's model with the config's, then merge its hyper-parameters in."""
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        config = self.config[sub]
        model = _plain(config.get("model")) or {}
        theirs_class = hparams.pop("_class_path", None)
        mine_class = model.get("class_path") if isinstance(model, dict) else None
        if theirs_class and mine_class and not _same_class(theirs_class, mine_class):
            raise UserError(
                f"--ckpt_path {path} is a checkpoint of {theirs_class}, but the config's model is {mine_class}: "
                f"use the config it was trained with{_run_config_hint(path)}, or a checkpoint of {mine_class}"
            )
        mine = flatten_options(model.get("init_args") or {} if isinstance(model, dict) else {})
        theirs = flatten_options(hparams)
        explicit = explicit_model_keys(self._args)
        given, from_config = [], []
        for key, (option, value) in theirs.items():
            if key not in mine or _same(mine[key][1], value):
                continue
            mine_value = mine[key][1]
            if key == "data_shape":
                raise UserError(
                    f"--ckpt_path {path} holds a model of data shaped {value}, but the config's data_shape is "
                    f"{mine_value}: use the config it was trained with{_run_config_hint(path)}"
                )
            entry = (key, option, value, mine_value)
            (given if _is_explicit(key, explicit) else from_config).append(entry)
        if given and sub == "fit":
            options = ", ".join(f"--model.{o} {_show(m)} (the checkpoint has {_show(v)})" for _, o, v, m in given[:4])
            raise UserError(
                f"{options}: a resumed fit keeps the checkpoint's model settings. Fix: drop "
                f"{'this option' if len(given) == 1 else 'these options'} to resume, or start a new fit (without "
                "--ckpt_path) to train with them"
            )
        if given:
            for key, *_ in given:
                if key.endswith("class_path"):
                    raise UserError(
                        f"--model.{theirs[key][0]} {_show(mine[key][1])}: the networks of a checkpoint cannot be "
                        f"replaced (the checkpoint has {_show(theirs[key][1])}); drop the option"
                    )
        if from_config:
            shown = ", ".join(
                f"{o.replace('init_args.', '')} {_show(v)} (config: {_show(m)})" for _, o, v, m in from_config[:5]
            )
            more = f" and {len(from_config) - 5} more" if len(from_config) > 5 else ""
            then = (
                "a resumed fit continues with them"
                if sub == "fit"
                else "set sampler options on the command line (--model.init_args.NAME VALUE) to change them"
            )
            _note(f"the checkpoint's model settings replace the config's: {shown}{more}; {then}")
        before = config.clone()
        merged = {"class_path": theirs_class, "dict_kwargs": hparams} if theirs_class else hparams
        try:
            self.config = self.parser.parse_object({sub: {"model": merged}}, self.config)
        except Exception as exc:  # noqa: BLE001 - reported as the user's problem below
            raise UserError(
                f"the hyper-parameters of --ckpt_path {path} do not fit {theirs_class or mine_class} of this "
                f"lightning-ebm ({short_error(exc, self.parser)}): evaluate it with the lightning-ebm that wrote it"
            ) from exc
        for _key, option, _, _ in given:  # validate/test/predict: the command line wins
            self.config[sub][f"model.{option}"] = before[f"model.{option}"]
            self.command_line_overrides.append(f"--model.{option} {_show(before[f'model.{option}'])}")

    # ------------------------------------------------------------------ before and after running
    def before_instantiate_classes(self) -> None:
        sub = self.subcommand
        config = self.config[sub] if sub else self.config
        if sub in SUBCOMMANDS and config.get("data") is None:
            raise UserError(
                "this config has no `data:` section, so there is nothing to train or evaluate on: "
                "add one, or pass --data CLASS --data.ARG VALUE "
                "(e.g. --data lightning_ebm.datamodules.Toy2DDataModule --data.name 25gaussians)"
            )
        if sub in SUBCOMMANDS:
            trainer = config.get("trainer") or {}
            follow_default_root_dir(trainer)
            for option in ("max_epochs", "max_steps"):  # Lightning reads other negatives as "no limit"
                value = trainer.get(option)
                if value is not None and value < -1:
                    raise UserError(f"--trainer.{option} {value}: use -1 for no limit, or a number of 0 or more")
            for directory, option in output_directories(config):
                ensure_writable(directory, option)
        if sub == "fit" and _rank_zero():  # temporary files of writes killed in earlier runs
            directories, _ = checkpoint_directories(config)
            ckpt_path = config.get("ckpt_path")
            if ckpt_path and "://" not in str(ckpt_path):
                directories.append(Path(ckpt_path).parent)
            for directory in dict.fromkeys(directories):
                remove_stale_temporary_files(directory)

    def instantiate_classes(self) -> None:
        """LightningCLI's, with a constructor's ``ValueError`` (a bad setting) or a Lightning
        misconfiguration reported as a :class:`UserError` instead of jsonargparse's 70-line report."""
        try:
            super().instantiate_classes()
        except UserError:
            raise
        except (ValueError, MisconfigurationException) as exc:
            error = constructor_error(exc)
            if error is None:
                raise
            raise error from exc

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        """The trainer, with atomic checkpoint writes (unless a checkpoint IO is given) and
        ``sync_batchnorm`` through :class:`~lightning_ebm.plugins.SyncBatchNormPlugin` (CPU too)."""
        plugins = config.get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        strategy = config.get("strategy", "auto")
        plain = isinstance(strategy, str) and not any(s in strategy for s in ("fsdp", "deepspeed", "xla"))
        if plain and not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        if config.get("sync_batchnorm") and not any(isinstance(p, LayerSync) for p in plugins):
            config["sync_batchnorm"] = False
            plugins.append(SyncBatchNormPlugin())
        config["plugins"] = plugins or None
        return super()._instantiate_trainer(config, callbacks)

    def after_fit(self) -> None:
        trainer = self.trainer
        if trainer.num_training_batches == 0 and trainer.limit_train_batches != 0:
            raise UserError(no_batches_message(trainer), every_process=True)
        if trainer.is_global_zero:
            log_dir = run_dir(trainer)
            ckpt = trainer.checkpoint_callback
            directory = Path(ckpt.dirpath) if ckpt is not None and ckpt.dirpath else log_dir / "checkpoints"
            written = sorted(p.name for p in _files(directory) if p.suffix == ".ckpt")
            shown = ", ".join(written[:4]) + (", ..." if len(written) > 4 else "")
            lines = [
                f"Logs and plots: {log_dir}",
                f"Checkpoints:    {directory} ({shown})" if written else "Checkpoints:    none written",
                f"TensorBoard:    tensorboard --logdir {log_dir.parent.parent}",
            ]
            print("\n".join(lines), flush=True)


# ---------------------------------------------------------------------- checkpoints
_LAST = re.compile(r"^last(-v\d+)?\.ckpt$")


def _files(directory: Path) -> list[Path]:
    try:
        return [p for p in directory.iterdir() if p.is_file()]
    except OSError:
        return []


def load_checkpoint_file(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path`` (on the CPU), or a :class:`UserError` saying why it cannot be used."""
    path = Path(path)
    other = newest_checkpoint(path.parent, exclude=[path]) if path.parent.is_dir() else None
    instead = f"; the newest other checkpoint there is {other}" if other else ""
    if not path.exists():
        raise UserError(
            f"--ckpt_path {path}: no such file. Fix: give the path of a checkpoint (a run's are in "
            f"<save_dir>/<name>/version_N/checkpoints/), or --ckpt_path last for the newest run's last.ckpt"
        )
    if not path.is_file():
        raise UserError(f"--ckpt_path {path} is a directory, not a checkpoint file: give a .ckpt file{instead}")
    if path.stat().st_size == 0:
        raise UserError(
            f"--ckpt_path {path} is empty (0 bytes), so it was never completely written: use another "
            f"checkpoint{instead}"
        )
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # objects beyond tensors and containers: the user's own file
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any failure to read it is reported the same way
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(
            f"--ckpt_path {path} cannot be read ({reason}): it is truncated or not a checkpoint; use another "
            f"checkpoint{instead}"
        ) from exc
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"--ckpt_path {path} is not a Lightning checkpoint (it has no state_dict){instead}")
    return checkpoint


def check_resumable(checkpoint: dict[str, Any], path: Path, trainer: Any) -> None:
    """Refuse to resume a checkpoint that has already reached ``max_epochs`` or ``max_steps`` (Lightning
    would train nothing and exit as if it had, or fail deep inside)."""
    trainer = trainer or {}
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps")
    if max_epochs is None:
        max_epochs = 1000 if max_steps in (None, -1) and trainer.get("max_time") is None else -1
    loops = checkpoint.get("loops") or {}
    progress = (((loops.get("fit_loop") or {}).get("epoch_progress") or {}).get("current")) or {}
    epochs = progress.get("processed")
    step = checkpoint.get("global_step", 0)
    if epochs is not None and max_epochs != -1 and epochs >= max_epochs:
        raise UserError(
            f"--ckpt_path {path} has already trained {epochs} epoch{'s' if epochs != 1 else ''} (step {step}) and "
            f"--trainer.max_epochs is {max_epochs}, so there is nothing left to train. Fix: set --trainer.max_epochs "
            f"above {epochs} to train further, or evaluate it with `test`"
        )
    if max_steps not in (None, -1) and step >= max_steps:
        raise UserError(
            f"--ckpt_path {path} is at step {step} and --trainer.max_steps is {max_steps}, so there is nothing left "
            f"to train. Fix: set --trainer.max_steps above {step} to train further, or evaluate it with `test`"
        )


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _same_class(a: str, b: str) -> bool:
    """Whether two class paths name one class (``lightning_ebm.models.DEM`` is ``lightning_ebm.models.dem.DEM``)."""
    return a == b or (_import(a) is not None and _import(a) is _import(b))


def _run_config_hint(path: Path) -> str:
    saved = Path(path).resolve().parent.parent / "config.yaml"
    return f" ({saved})" if saved.is_file() else ""


def _plain(value: Any) -> Any:
    """``value`` with namespaces as dicts and tuples as lists, for comparisons."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _same(a: Any, b: Any) -> bool:
    return _plain(a) == _plain(b)


def _show(value: Any) -> str:
    value = _plain(value)
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def flatten_options(options: Any, key: str = "", option: str = "init_args") -> dict[str, tuple[str, Any]]:
    """A model's options as ``{key: (option, value)}`` with the networks' specs flattened: key
    ``generator.hidden`` is option ``init_args.generator.init_args.hidden`` (``--model.`` + option on the
    command line), key ``generator.class_path`` the network's class."""
    options = _plain(options)
    out: dict[str, tuple[str, Any]] = {}
    for name, value in (options or {}).items():
        k, o = f"{key}.{name}" if key else name, f"{option}.{name}"
        if isinstance(value, dict) and "class_path" in value:
            out[f"{k}.class_path"] = (f"{o}.class_path", value["class_path"])
            args = {**(value.get("init_args") or {}), **(value.get("dict_kwargs") or {})}
            out.update(flatten_options(args, k, f"{o}.init_args"))
        else:
            out[k] = (o, value)
    return out


def explicit_model_keys(args: list[str]) -> set[str]:
    """The model options given on the command line, as :func:`flatten_options` keys (``""``: the whole
    model, ``generator``: the whole network)."""
    keys: set[str] = set()
    for arg in args:
        if not arg.startswith("--model"):
            continue
        name = arg[2:].split("=", 1)[0]
        if name == "model":
            keys.add("")
        elif name.startswith("model."):
            keys.add(".".join(p for p in name.split(".")[1:] if p not in ("init_args", "dict_kwargs")))
    return keys


def _is_explicit(key: str, explicit: set[str]) -> bool:
    return any(e == "" or key == e or key.startswith(e + ".") for e in explicit)


def _rank_zero() -> bool:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _note(message: str) -> None:
    if _rank_zero():
        print(f"note: {message}", file=sys.stderr, flush=True)


def _loggers(trainer: Any) -> list[Any]:
    loggers = (trainer or {}).get("logger")
    if loggers is None or loggers is False:
        return []
    if loggers is True:
        return [{"init_args": {"save_dir": (trainer or {}).get("default_root_dir") or ".", "name": "lightning_logs"}}]
    return [_plain(lg) for lg in (loggers if isinstance(loggers, (list, tuple)) else [loggers])]


def checkpoint_directories(config: Namespace) -> tuple[list[Path], str]:
    """The checkpoint directories of the runs of this config (every version of its log directory),
    and a description of where they are, for messages."""
    dirpath = (config.get("checkpoint") or {}).get("dirpath")
    if dirpath:
        return [Path(dirpath)], str(dirpath)
    trainer = config.get("trainer") or {}
    directories: list[Path] = []
    places: list[str] = []
    for logger in _loggers(trainer):
        args = logger.get("init_args") or {} if isinstance(logger, dict) else {}
        save_dir = args.get("save_dir") or args.get("root_dir")
        if str(save_dir) == DEFAULT_SAVE_DIR and trainer.get("default_root_dir"):
            save_dir = trainer.get("default_root_dir")  # as follow_default_root_dir will set it
        if not save_dir or "://" in str(save_dir):
            continue
        root = Path(save_dir) / args["name"] if args.get("name") else Path(save_dir)
        version = args.get("version")
        if version is not None:
            root_version = root / (f"version_{version}" if isinstance(version, int) else str(version))
            directories.append(root_version / "checkpoints")
            places.append(str(root_version / "checkpoints"))
        else:
            directories += sorted(p / "checkpoints" for p in root.glob("*") if (p / "checkpoints").is_dir())
            places.append(str(root / "*" / "checkpoints"))
    if not _loggers(trainer):
        root = Path(trainer.get("default_root_dir") or ".") / "checkpoints"
        directories.append(root)
        places.append(str(root))
    return directories, " or ".join(places) or "the log directory"


#: Where the shipped configs' TensorBoard loggers write (relative to the working directory).
DEFAULT_SAVE_DIR = "lightning_logs"


def follow_default_root_dir(trainer: Any) -> None:
    """``--trainer.default_root_dir DIR`` moves the logs, plots and checkpoints of a config whose logger
    writes to the default ``lightning_logs``: that logger writes to ``DIR`` instead (a ``save_dir`` set to
    anything else is kept)."""
    root = trainer.get("default_root_dir")
    if not root:
        return
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, (list, tuple)) else [loggers]:
        args = logger.get("init_args") if isinstance(logger, (dict, Namespace)) else None
        if args is not None and str(args.get("save_dir")) == DEFAULT_SAVE_DIR:
            args["save_dir"] = str(root)


def output_directories(config: Namespace) -> Iterator[tuple[str, str]]:
    """The local directories that a run writes to, with the option that sets each."""
    trainer = config.get("trainer") or {}
    loggers = _loggers(trainer)
    for logger in loggers:
        args = logger.get("init_args") or {} if isinstance(logger, dict) else {}
        save_dir = args.get("save_dir") or args.get("root_dir")
        if save_dir and "://" not in str(save_dir):
            yield str(save_dir), "--trainer.logger.init_args.save_dir"
    if not loggers and trainer.get("default_root_dir") and "://" not in str(trainer.get("default_root_dir")):
        yield str(trainer.get("default_root_dir")), "--trainer.default_root_dir"
    dirpath = (config.get("checkpoint") or {}).get("dirpath")
    if dirpath and "://" not in str(dirpath):
        yield str(dirpath), "--checkpoint.dirpath"


def ensure_writable(directory: str, option: str) -> None:
    """Create ``directory`` and write a file in it, or raise a :class:`UserError` naming ``option``."""
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise UserError(disk_full_message(directory, exc)) from exc
        blocker = next((p for p in Path(directory).absolute().parents if p.exists() and not p.is_dir()), None)
        if blocker is None and Path(directory).exists() and not Path(directory).is_dir():
            blocker = Path(directory)
        reason = f"{blocker} is a file, not a directory" if blocker else (exc.strerror or str(exc))
        raise UserError(
            f"cannot write the run's files to {directory}: {reason}. Fix: set {option} to a writable directory"
        ) from exc


def no_batches_message(trainer: Any) -> str:
    """Why a fit trained nothing: its training data gave no batch."""
    world = trainer.world_size
    batch_size = getattr(trainer.datamodule, "batch_size", None) if trainer.datamodule is not None else None
    of = f" of {batch_size}" if batch_size else ""
    per = f" per process ({world} processes)" if world > 1 else ""
    fewer = ", use fewer processes (--trainer.devices)" if world > 1 else ""
    return (
        f"the training data gives no complete batch{of}{per}, so nothing was trained and no checkpoint was written. "
        f"Fix: lower --data.batch_size{fewer}, or give more training examples"
    )


# ---------------------------------------------------------------------- errors
def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _frames(exc: BaseException) -> list[Any]:
    frames, tb = [], exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames


def _constructed_class(exc: BaseException) -> type | None:
    """The class whose constructor raised ``exc`` (the innermost ``__init__`` on its traceback)."""
    for frame in reversed(_frames(exc)):
        if frame.f_code.co_name == "__init__" and "self" in frame.f_locals:
            return type(frame.f_locals["self"])
    return None


def constructor_error(exc: BaseException) -> UserError | None:
    """A :class:`UserError` for a bad setting that a constructor refused while the command line built
    the model, the data or the trainer (None for anything else)."""
    chain = list(_chain(exc))
    for error in chain:
        if isinstance(error, UserError):
            return error
    root = next((e for e in reversed(chain) if isinstance(e, (ValueError, MisconfigurationException))), None)
    if root is None:
        return None
    message = "; ".join(line.strip() for line in str(root).strip().splitlines() if line.strip())
    cls = _constructed_class(root)
    if isinstance(root, MisconfigurationException) or cls is None:
        return UserError(f"{message}. Fix: change that setting in the config or on the command line")
    import lightning as L

    section = (
        "--model.init_args."
        if issubclass(cls, L.LightningModule)
        else "--data.init_args."
        if issubclass(cls, L.LightningDataModule)
        else "--trainer."
        if issubclass(cls, L.Trainer)
        else None
    )
    try:
        params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
    except (TypeError, ValueError):
        params = []
    named = [p for p in params if re.search(rf"(?<![\w.]){re.escape(p)}(?!\w)", message)]
    if section and named:
        what = " or ".join(section + p for p in named[:2])
    else:
        what = f"the settings of {cls.__name__}"
    return UserError(f"{cls.__name__}: {message}. Fix: change {what} in the config or on the command line")


def _model_options_equal_to(cli: Any, number: float) -> list[str]:
    """The model options (``--model.init_args...``) whose value is ``number``."""
    try:
        config = cli.config[cli.subcommand] if cli.subcommand else cli.config
        model = _plain(config.get("model")) or {}
    except Exception:  # noqa: BLE001 - only a hint
        return []
    return [
        f"--model.{option} {_show(value)}"
        for option, value in flatten_options(model.get("init_args") or {}).values()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == number
    ]


def runtime_error(exc: BaseException, cli: Any) -> UserError | None:
    """A :class:`UserError` for a failure of the run that a setting of the user causes (None for
    anything else, which keeps its traceback)."""
    for error in _chain(exc):
        if isinstance(error, UserError):
            return error
    for error in _chain(exc):
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            return UserError(disk_full_message(error.filename or "a file", error))
        if isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EROFS) and error.filename:
            return UserError(
                f"cannot write {error.filename}: {error.strerror}. Fix: make it writable, or write the run "
                "elsewhere (--trainer.logger.init_args.save_dir, --checkpoint.dirpath)"
            )
        if isinstance(error, MisconfigurationException):
            return UserError(f"{error}. Fix: change that setting in the config or on the command line")
        frames = _frames(error)
        in_optim = frames and f"{os.sep}torch{os.sep}optim{os.sep}" in frames[-1].f_code.co_filename
        if isinstance(error, ValueError) and in_optim:
            number = re.search(r"(-?\d[\d.]*(?:e[-+]?\d+)?)\s*$", str(error), re.I)
            where = _model_options_equal_to(cli, float(number.group(1))) if number else []
            given = f" ({', '.join(where[:2])})" if where else ""
            return UserError(
                f"the optimiser refused a setting: {error}{given}. Fix: set a valid value (learning rates and weight "
                "decay >= 0) in the config or on the command line"
            )
        if isinstance(error, RuntimeError) and "Error(s) in loading state_dict" in str(error):
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            detail = "; ".join(lines[1:3])[:300]
            overrides = getattr(cli, "command_line_overrides", None) or []
            fix = f"drop {', '.join(overrides)}" if overrides else "use the config the checkpoint was trained with"
            return UserError(
                f"the checkpoint's weights do not fit the model that the config and command line build ({detail}). "
                f"Fix: {fix}"
            )
    return None


def _resume_command(args: list[str], path: str) -> str:
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == "--ckpt_path":
            skip = True
            continue
        if arg.startswith("--ckpt_path="):
            continue
        kept.append(arg)
    return shlex.join([*program_name().split(), *kept, "--ckpt_path", os.path.abspath(path)])


def sigterm_message(cli: Any, args: list[str]) -> str | None:
    """The line printed when SIGTERM stopped the run (None on the processes other than rank 0)."""
    trainer = getattr(cli, "trainer", None)
    if trainer is None:
        return "stopped by SIGTERM before training started: nothing was saved; run the same command again"
    if not trainer.is_global_zero:
        return None
    where = f"at epoch {trainer.current_epoch}, step {trainer.global_step}"
    if getattr(cli, "subcommand", None) != "fit":
        sub = getattr(cli, "subcommand", None)
        return f"stopped by SIGTERM during {sub} {where}: nothing was saved; run the same command again"
    callback = trainer.checkpoint_callback
    path = getattr(callback, "interrupted_checkpoint", None) if callback is not None else None
    if path is None and callback is not None and callback.dirpath:
        newest = newest_checkpoint(Path(callback.dirpath))
        path = str(newest) if newest else None
    if path is None:
        return f"stopped by SIGTERM {where} before any checkpoint was written: run the same command again to start over"
    return (
        f"stopped by SIGTERM {where}; the last checkpoint is {os.path.abspath(path)}; resume with: "
        f"{_resume_command(args, path)}"
    )


def _all_options(parser: Any) -> list[str]:
    """Every ``--option`` of a parser and of its subcommand parsers."""
    options: list[str] = []
    for action in getattr(parser, "_actions", []):
        options += [o for o in action.option_strings if o.startswith("--")]
        for sub in (getattr(action, "_name_parser_map", None) or {}).values():
            options += _all_options(sub)
    return sorted(set(options))


def _init_parameters(class_path: str) -> list[str]:
    """Constructor parameter names of the class at ``class_path`` (for suggestions)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        names: list[str] = []
        for klass in cls.__mro__:
            if "__init__" in vars(klass):
                params = inspect.signature(klass.__init__).parameters
                names += [p for p in params if p not in ("self", "args", "kwargs")]
        return names
    except Exception:  # noqa: BLE001 - suggestions are best effort
        return []


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def short_error(exc: BaseException, parser: Any = None) -> str:
    """Turn jsonargparse's nested validation report into one line naming the mistake and the fix."""
    text = str(exc).strip()
    unknown = re.match(r"unrecognized arguments: (.*)", text, re.S)
    if unknown:
        options = _all_options(parser) if parser is not None else []
        bad = [a for a in unknown.group(1).split() if a.startswith("--")]
        parts = [f"{opt.split('=')[0]}{_suggest(opt.split('=')[0], options)}" for opt in bad]
        return f"unknown option {', '.join(parts) or unknown.group(1)}"
    key = re.match(r'Parser key "([^"]+)"', text)
    reasons: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        noise = ("Parser key", "Does not validate", "Subtypes:", "Errors:", "Given value type")
        if not line or "NoneType" in line or line.startswith(noise):
            continue
        if line.startswith(("- Problem with given class_path", "Given value: NestedArg")):
            continue
        option = re.search(r"Option '([^']+)' is not accepted", line)
        if option:
            path = re.search(r"class_path '([^']+)'", text)
            line = f"{line}{_suggest(option.group(1), _init_parameters(path.group(1)) if path else [])}"
        reasons.append(line.lstrip("- "))
    nested = re.search(r"NestedArg\(key='([^']+)'", text)
    where = f"--{key.group(1)}{'.' + nested.group(1) if nested else ''}: " if key else ""
    message = where + "; ".join(dict.fromkeys(reasons)) if reasons else text.splitlines()[0]
    return message if len(message) < 800 else message[:800] + " ..."


def _user_error_in_chain(exc: BaseException) -> UserError | None:
    return next((e for e in _chain(exc) if isinstance(e, UserError)), None)


def main(args: list[str] | None = None) -> int:
    """Entry point of ``python -m lightning_ebm``: returns 0; exits with status 2 on a user error (one
    ``error:`` line naming the problem and the fix, no traceback) and 143 when SIGTERM stopped the run."""
    given = list(sys.argv[1:] if args is None else args)
    if given and given[0] in ("configs", "--list-configs"):
        print(list_configs())
        return 0
    cli: EBMCLI | None = None
    try:
        argv = resolve_config_args(given)
        if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help", "--version")):
            raise UserError(
                f"first argument must be one of {', '.join(SUBCOMMANDS)} (or configs, to list the shipped configs), "
                f"e.g. `{program_name()} fit --config dem_toy.yaml`; shipped configs: " + ", ".join(shipped_configs())
            )
        cli = EBMCLI.__new__(EBMCLI)
        with warnings.catch_warnings():  # we always pass args, also when run from the shell
            warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
            EBMCLI.__init__(cli, args=argv)
    except SIGTERMException:
        message = sigterm_message(cli, given)
        if message:
            print(message, file=sys.stderr, flush=True)
        sys.exit(EXIT_SIGTERM)
    except Exception as exc:
        user_error = _user_error_in_chain(exc)
        if user_error is None and _is_parse_error(exc):
            parser = getattr(cli, "parser", None) if cli is not None else None
            print(f"error: {short_error(exc, parser)}. See --help for the valid options.", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        user_error = user_error or runtime_error(exc, cli)
        if user_error is None:
            raise
        if _rank_zero() or not getattr(user_error, "every_process", False):
            print(f"error: {user_error}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
    return 0


def _is_parse_error(exc: BaseException) -> bool:
    module = type(exc).__module__ or ""
    return module.startswith(("jsonargparse", "argparse"))


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
