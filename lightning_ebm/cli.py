"""The command line: ``python -m lightning_ebm fit|validate|test|predict --config NAME.yaml``.

A thin :class:`~lightning.pytorch.cli.LightningCLI` with the defaults a user expects (TensorBoard,
progress bar, last and best checkpoints, the resolved config saved next to the logs, a fixed seed),
shipped configs addressable by bare name, and short error messages instead of tracebacks.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins import CheckpointIO, LayerSync

from lightning_ebm.callbacks.checkpoint import PeriodicMetricCheckpoint
from lightning_ebm.callbacks.utils import run_dir
from lightning_ebm.errors import UserError
from lightning_ebm.models.base import NetworkModule
from lightning_ebm.plugins import AtomicCheckpointIO, SyncBatchNormPlugin

#: Directory of the shipped configs (inside the package, also linked as ``configs/`` in the repo).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SUBCOMMANDS = ("fit", "validate", "test", "predict")


def shipped_configs() -> list[str]:
    """Names of the configs shipped with the package."""
    return sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))


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
            parser_kwargs={"exit_on_error": False, "allow_abbrev": False},
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

    def before_instantiate_classes(self) -> None:
        sub = self.subcommand
        config = self.config[sub] if sub else self.config
        if sub in SUBCOMMANDS and config.get("data") is None:
            raise UserError(
                "this config has no `data:` section, so there is nothing to train or evaluate on: "
                "add one, or pass --data CLASS --data.ARG VALUE "
                "(e.g. --data lightning_ebm.datamodules.Toy2DDataModule --data.name 25gaussians)"
            )

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
        if trainer.is_global_zero:
            log_dir = run_dir(trainer)
            ckpt = trainer.checkpoint_callback
            lines = [
                f"Logs and plots: {log_dir}",
                f"Checkpoints:    {Path(ckpt.dirpath) if ckpt and ckpt.dirpath else log_dir / 'checkpoints'}",
                f"TensorBoard:    tensorboard --logdir {log_dir.parent.parent}",
            ]
            print("\n".join(lines), flush=True)


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
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, UserError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def main(args: list[str] | None = None) -> int:
    """Entry point of ``python -m lightning_ebm``; returns 0 or exits with status 2 on a user error."""
    argv = list(sys.argv[1:] if args is None else args)
    cli: EBMCLI | None = None
    try:
        argv = resolve_config_args(argv)
        if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help", "--version")):
            raise UserError(
                f"first argument must be one of {', '.join(SUBCOMMANDS)}, e.g. "
                "`python -m lightning_ebm fit --config dem_toy.yaml`; shipped configs: " + ", ".join(shipped_configs())
            )
        cli = EBMCLI.__new__(EBMCLI)
        with warnings.catch_warnings():  # we always pass args, also when run from the shell
            warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python")
            EBMCLI.__init__(cli, args=argv)
    except Exception as exc:
        user_error = _user_error_in_chain(exc)
        if user_error is not None:
            print(f"error: {user_error}", file=sys.stderr)
        elif _is_parse_error(exc):
            parser = getattr(cli, "parser", None) if cli is not None else None
            print(f"error: {short_error(exc, parser)}. See --help for the valid options.", file=sys.stderr)
        else:
            raise
        sys.exit(2)
    return 0


def _is_parse_error(exc: BaseException) -> bool:
    module = type(exc).__module__ or ""
    return module.startswith(("jsonargparse", "argparse"))


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
