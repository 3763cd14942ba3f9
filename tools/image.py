"""`pynydus-image`: build (`create`) and examine (`inspect`) RAFS images."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module exposing configure(parser) and run(args) -> int
SUBCOMMANDS = {
    "create": ("tools.create_cmd", "build a RAFS v5/v6 image from a directory"),
    "inspect": ("tools.inspect_cmd", "print an image's tree, or verify every chunk"),
    "prefetch-list": ("tools.prefetch_list_cmd",
                      "the paths a mount's recorded reads name, for --prefetch-files"),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the pynydus-image console script."""
    parser = argparse.ArgumentParser(prog="pynydus-image", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {}
    for name, (module, help_text) in SUBCOMMANDS.items():
        modules[name] = importlib.import_module(module)
        modules[name].configure(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    try:
        return modules[args.command].run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
