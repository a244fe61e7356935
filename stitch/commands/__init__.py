"""One module per `stitch` subcommand: a frozen config dataclass and `run(config)`, a thin recipe over the
library (see `stitch.cli` for how flags and YAML become a config).

    >>> from stitch.commands.cka import CkaConfig, run
    >>> rec = run(CkaConfig(source_model="runs/a", target_model="runs/b", texts="texts.txt", out="runs/cka"))
"""
