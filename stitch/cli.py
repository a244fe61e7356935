"""The `stitch` command line: one entry point, one subcommand per job, each also driven by a YAML config.

stitch demo                          # tiny offline demo: self-stitch identity and a splice sweep
stitch demo --config demo.yaml       # the same, options from YAML (keys = option names)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import yaml

from stitch.demo import DemoConfig, run_demo

COMMANDS: dict[str, tuple[type, Callable, str]] = {
    "demo": (DemoConfig, run_demo, "offline demo on tiny random models built on the fly"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stitch", description="Cross-model stitching of language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (config_cls, _, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("--config", help="YAML file whose keys are this command's options")
        for key, default in config_cls().to_dict().items():
            cmd.add_argument(
                f"--{key.replace('_', '-')}",
                dest=key,
                type=type(default),
                default=None,
                help=f"default: {default}",
            )
    args = parser.parse_args(argv)
    config_cls, run, _ = COMMANDS[args.command]
    values = _read_yaml(args.config) if args.config else {}
    values.update({k: v for k, v in vars(args).items() if k not in ("command", "config") and v is not None})
    run(config_cls.from_dict(values))
    return 0


def _read_yaml(path: str) -> dict:
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(
            f"--config: {path} must hold a mapping of option names to values, got {type(data).__name__}"
        )
    return data


if __name__ == "__main__":
    sys.exit(main())
