"""The `stitch` command line (recipes): one module per subcommand; the only place importing `analyses`.

    >>> from stitch.cli import main
    >>> main(["cka", "--config", "cka.yaml"])
"""

from stitch.cli.main import COMMANDS, build_parser, main, make_config, read_yaml

__all__ = ["COMMANDS", "build_parser", "main", "make_config", "read_yaml"]
