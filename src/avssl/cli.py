"""The ``avssl`` command line: thin; each subcommand lives in the module of its pipeline stage.

For a command ``NAME`` the stage module exposes ``add_NAME_arguments(parser)`` and ``run_NAME(args) -> int``. Only the
chosen subcommand's module is imported, so ``avssl embed`` never loads training code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__

COMMANDS: dict[str, tuple[str, str]] = {
    "ingest": ("avssl.ingest", "videos -> WebDataset shards of aligned audio + low-resolution frames"),
    "pretrain": ("avssl.train", "self-supervised pretraining from shards (also under torchrun)"),
    "embed": ("avssl.collection", "audio embeddings for files and folders with a checkpoint"),
    "export": ("avssl.export", "export a checkpoint's audio tower (with its log-mel front-end) to ONNX"),
    "eval": ("avssl.evaluate", "linear-probe evaluation of models and baselines on tasks"),
    "sweep": ("avssl.sweep", "experiment grids: pretrain at fixed steps + evaluate, per cell, with baselines"),
    "demo": ("avssl.demo", "the whole method end to end on a built-in audio-visual world"),
}


def _build_parser(command: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avssl",
        description="Self-supervised audio representations from video: ingest, pretrain, embed, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"avssl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            mod = importlib.import_module(module)
            getattr(mod, f"add_{name}_arguments")(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    parser = _build_parser(command)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.command is None:
        parser.print_help()
        return 0
    mod = importlib.import_module(COMMANDS[args.command][0])
    return int(getattr(mod, f"run_{args.command}")(args) or 0)
