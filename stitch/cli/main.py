"""The `stitch` command line: one entry point, one subcommand per job, each also driven by a YAML config.

stitch demo                                    # offline demo on two small models trained on stdlib text
stitch report stitch-demo                      # rebuild a run directory's report from its records
stitch align --source-tokenizer A --target-tokenizer B --texts texts.txt --out runs/align
stitch cka --source-model A --target-model B --texts texts.txt --pairing shared --out runs/cka
stitch fit --source-model A --target-model B --source-layer 8 --train-texts train.txt --out runs/l8.safetensors
stitch sweep --source-model A --target-model B --train-texts train.txt --eval-texts eval.txt --out runs/sweep
stitch generate --splice runs/l8 --prompts prompts.txt --policy all
stitch cka --config runs/cka/config.yaml --out runs/cka2    # replay a run (flags override the file)

Each subcommand's flags are built from the fields of its config dataclass (`stitch.cli.configs`, which
imports no torch): the annotation gives the type, the field's metadata the help and valid values; fields
without a default are required. A run goes: parse → config (checked on construction) → preflight (files,
outputs, devices, the models' config.json; `stitch.cli.preflight`) → only then the subcommand's module is
imported (`COMMANDS`, by module path) and run. Bad options exit with status 2 and the usage line; a
failure while running prints one line and exits 1 (`--debug` or STITCH_TRACEBACK=1: the traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import yaml

import stitch
from stitch.cli.communicate_config import CommunicateConfig
from stitch.cli.configs import (
    AlignConfig,
    CkaConfig,
    DemoConfig,
    FitConfig,
    ReportConfig,
    SweepConfig,
)
from stitch.cli.generate_config import GenerateConfig
from stitch.cli.options import flag
from stitch.cli.preflight import preflight
from stitch.cli.train_config import TrainCommandConfig
from stitch.kinds import ADAPTER_METHODS


class Command(NamedTuple):
    """A subcommand: its config class, its run function as "module:function" (imported when it runs), its help."""

    config: type
    run: str
    help: str

    def load(self) -> Callable:
        module, _, name = self.run.partition(":")
        return getattr(importlib.import_module(module), name)


COMMANDS: dict[str, Command] = {
    "demo": Command(DemoConfig, "stitch.cli.demo:run_demo", "offline demo: two small models trained on the standard library's text (cached), stitched; report"),
    "align": Command(AlignConfig, "stitch.cli.align:run", "how two tokenizers line up over a corpus: summary and report"),
    "cka": Command(CkaConfig, "stitch.cli.cka:run", "similarity of every layer of A to every layer of B: matrix and report"),
    "fit": Command(FitConfig, "stitch.cli.fit:run", "fit a closed-form adapter from A's layer N to B's layer M"),
    "sweep": Command(SweepConfig, "stitch.cli.sweep:run", "fit and score a splice at every layer: records and report"),
    "generate": Command(GenerateConfig, "stitch.cli.generate:run", "B's greedy continuations under the splice"),
    "train": Command(TrainCommandConfig, "stitch.cli.train:run", "train an adapter by gradient descent (torchrun: DDP)"),
    "report": Command(ReportConfig, "stitch.cli.report:run", "rebuild the HTML report of a run directory from its records"),
    "communicate": Command(CommunicateConfig, "stitch.cli.communicate:run", "activation communication between A and B over a (k, j) grid: records and report"),
}  # fmt: skip
RENAMED = {"fit": {"texts": "train_texts"}, "train": {"texts": "train_texts"}}  # old YAML keys still read
RUN_KEY = "stitch_run"  # what a saved config records about its run (versions, ...); ignored on replay
_EPILOG = (
    "Every option can also come from --config FILE.yaml (keys = option names); flags override it. "
    "Bad options exit with status 2 before anything loads."
)


def main(argv: Sequence[str] | None = None) -> int:
    """`main(["cka", "--config", "cka.yaml"])`: run a subcommand; 0 when it succeeded, 1 when it failed
    while running (one line on stderr); bad options exit with status 2 (argparse's convention)."""
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    command = COMMANDS[args.command]
    try:
        config = make_config(args.command, args.config, _flags(args, command.config))
        preflight(config)
    except (ValueError, TypeError, OSError) as err:
        commands[args.command].error(option_message(str(err), command.config))  # exits with status 2
    debug = args.debug or bool(os.environ.get("STITCH_TRACEBACK"))
    try:
        command.load()(config)
    except Exception as err:  # noqa: BLE001 — one line for any failure; --debug shows the traceback
        if debug:
            raise
        print(f"stitch {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The `stitch` parser and, by name, its subcommand parsers (flags from the configs' fields)."""
    parser = argparse.ArgumentParser(
        prog="stitch", description="Cross-model stitching of language models.", allow_abbrev=False
    )
    parser.add_argument("--version", action="version", version=f"stitch {stitch.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {}
    for name, command in COMMANDS.items():
        cmd = sub.add_parser(
            name, help=command.help, description=command.help, epilog=_EPILOG, allow_abbrev=False
        )
        cmd.add_argument(
            "--config", metavar="FILE.yaml", help="YAML file whose keys are this command's options"
        )
        cmd.add_argument("--debug", action="store_true", help="show the traceback of a failure")
        hints = typing.get_type_hints(command.config)
        positional = getattr(command.config, "POSITIONAL", ())  # e.g. `stitch report RUN_DIR`
        for field in dataclasses.fields(command.config):
            names = [field.name] if field.name in positional else [flag(field.name)]
            extra = {"nargs": "?", "metavar": field.name.upper()} if field.name in positional else {"dest": field.name}
            cmd.add_argument(*names, default=None, **extra, **_argument(field, hints[field.name]))
        commands[name] = cmd
    return parser, commands


def make_config(command: str, config_path: str | None, flags: dict[str, Any]):
    """`make_config("fit", "fit.yaml", {"kind": "affine"})`: defaults, then the YAML file, then the flags;
    paths become absolute, so the saved config replays from any working directory."""
    config_cls = COMMANDS[command].config
    values = read_yaml(command, config_path) if config_path else {}
    values.update(flags)
    fields = dataclasses.fields(config_cls)
    missing = [flag(f.name) for f in fields if _required(f) and f.name not in values]
    if missing:
        raise ValueError(
            f"missing required option(s) {', '.join(missing)}; give them as flags or as keys of --config"
        )
    for field in fields:
        if field.metadata.get("path") and isinstance(values.get(field.name), str):
            values[field.name] = absolute_path(values[field.name], field.metadata["path"])
    return config_cls.from_dict(values)


def absolute_path(value: str, role: str) -> str:
    """A path made absolute; a model or tokenizer that is not a local path stays a hub id, and an
    `--adapter` method name (identity, closed_form, trained) stays a name."""
    path = os.path.expanduser(value)
    if (role in ("model", "tokenizer") and not os.path.exists(path)) or (role == "adapter_method" and value in ADAPTER_METHODS):
        return value
    return os.path.abspath(path)


def read_yaml(command: str, path: str) -> dict[str, Any]:
    """`read_yaml("cka", "cka.yaml")` → {option: value}; keys (`source_model` or `source-model`) and
    values are checked against the command's config fields."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config: no file at {path!r}")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.load(f, Loader=StrictLoader)  # noqa: S506 (a SafeLoader: plain data only)
        except yaml.YAMLError as err:
            raise ValueError(f"--config: {path} is not valid YAML: {err}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(
            f"--config: {path} must hold a mapping of option names to values, got {type(data).__name__}"
        )
    config_cls = COMMANDS[command].config
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    hints = typing.get_type_hints(config_cls)
    values = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        name = RENAMED.get(command, {}).get(name, name)
        if name == RUN_KEY:
            continue
        if name not in fields:
            raise ValueError(
                f"--config {path}: unknown key {key!r} for `stitch {command}`; valid keys: {sorted(fields)}"
            )
        values[name] = coerce(f"--config {path}: key {key!r}", value, hints[name], _choices(fields[name]))
    return values


class StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice (the last would silently win) and nesting deeper than
    `MAX_DEPTH` (the composer recurses: a hostile file would crash it with a RecursionError)."""

    MAX_DEPTH = 64
    _depth = 0

    def compose_node(self, parent, index):
        if self._depth >= self.MAX_DEPTH:
            mark = self.peek_event().start_mark
            why = f"nesting deeper than {self.MAX_DEPTH} levels; options are flat values or lists"
            raise yaml.composer.ComposerError(None, None, why, mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` overrides by design
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                continue  # SafeLoader refuses it with its own message
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice (which value is meant?)", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def option_message(message: str, config_cls: type) -> str:
    """A library message that names fields (`batch_size: ...`) re-worded to name options (`--batch-size: ...`)."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    head, sep, rest = message.partition(": ")
    parts = [p.strip() for p in head.split(",")]
    if sep and parts and all(p in names for p in parts):
        return ", ".join(flag(p) for p in parts) + sep + rest
    return message


def coerce(where: str, value: Any, annotation: Any, choices: tuple | None = None) -> Any:
    """`coerce("--ridge", "1e-3", float | None)` → 0.001: a value checked against a field's annotation
    (and its valid values); lists become tuples, ints become floats where a float is expected."""
    base, optional = _unwrap_optional(annotation)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{where}: expected {_name(base)}, got null")
    if typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list of {_name(item)}, got {value!r}")
        return tuple(coerce(f"{where}[{i}]", v, item) for i, v in enumerate(value))
    value = _scalar(where, value, base)
    if choices is not None and value not in choices:
        raise ValueError(f"{where}: {value!r} is not one of {list(choices)}")
    return value


def _scalar(where: str, value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, str):
        try:  # YAML 1.1 reads `1e-3` (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ValueError(f"{where}: expected {_name(kind)}, got {value!r} ({type(value).__name__})")


def _argument(field: dataclasses.Field, annotation: Any) -> dict[str, Any]:
    """argparse keyword arguments for one config field."""
    base, _ = _unwrap_optional(annotation)
    help_text = field.metadata.get("help", "")
    if _required(field):
        help_text += " (required)"
    elif field.default is not None:  # a None default is described by the help text itself
        help_text += f" (default: {field.default})"
    kwargs: dict[str, Any] = {"help": help_text.strip()}
    if base is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(base) is tuple:
        kwargs.update(nargs="+", type=typing.get_args(base)[0])
    elif base in (int, float, str):
        kwargs.update(type=base, choices=_choices(field))
    else:
        raise TypeError(f"{field.name}: options of type {annotation!r} are not supported on the command line")
    return kwargs


def _flags(args: argparse.Namespace, config_cls: type) -> dict[str, Any]:
    """The options given on the command line, checked like YAML values (lists become tuples)."""
    hints = typing.get_type_hints(config_cls)
    return {
        f.name: coerce(flag(f.name), getattr(args, f.name), hints[f.name])
        for f in dataclasses.fields(config_cls)
        if getattr(args, f.name) is not None
    }


def _one_line(err: Exception) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    # a library error without a name of its own gets its type, so "CUDA out of memory" is not bare
    return text if isinstance(err, (ValueError, TypeError, OSError)) else f"{type(err).__name__}: {text}"


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """(T, True) for `T | None`, (T, False) for T."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], len(rest) < len(args)
    return annotation, False


def _required(field: dataclasses.Field) -> bool:
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


def _choices(field: dataclasses.Field) -> tuple | None:
    return field.metadata.get("choices")


def _name(kind: Any) -> str:
    return getattr(kind, "__name__", str(kind))


if __name__ == "__main__":
    sys.exit(main())
