"""The ``avssl`` command line: thin; each subcommand lives in the module of its pipeline stage.

For a command ``NAME`` the stage module exposes ``add_NAME_arguments(parser)`` and ``run_NAME(args) -> int``. Only the
chosen subcommand's module is imported, so ``avssl embed`` never loads training code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from avssl import __version__

COMMANDS: dict[str, tuple[str, str]] = {
    "ingest": ("avssl.ingest.run", "videos -> WebDataset shards of aligned audio + low-resolution frames"),
    "pretrain": ("avssl.train.pretrain", "self-supervised pretraining from shards (also under torchrun)"),
    "embed": ("avssl.embed.collection", "audio embeddings for files and folders with a checkpoint"),
    "export": ("avssl.export", "export a checkpoint's audio tower (with its log-mel front-end) to ONNX"),
    "eval": ("avssl.evaluate.run", "linear-probe evaluation of models and baselines on tasks"),
    "finetune": ("avssl.finetune.run", "train a checkpoint's audio tower end to end with a classification head on labelled clips"),
    "classify": ("avssl.finetune.classify", "label audio/video files, folders and lists with a fine-tuned classifier"),
    "sweep": ("avssl.sweep.run", "experiment grids: pretrain at fixed steps + evaluate, per cell, with baselines"),
    "demo": ("avssl.demo.run", "the whole method end to end on a built-in audio-visual world"),
}


def _top_parser() -> argparse.ArgumentParser:
    """``avssl [-v] [--version] COMMAND ...``: lists the commands (their options are parsed by :func:`_command_parser`)."""
    parser = argparse.ArgumentParser(
        prog="avssl",
        description="Self-supervised audio representations from video: ingest, pretrain, embed, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"avssl {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, description=help_text)
    return parser


def _command_parser(command: str) -> argparse.ArgumentParser:
    module, help_text = COMMANDS[command]
    parser = argparse.ArgumentParser(prog=f"avssl {command}", description=help_text)
    getattr(importlib.import_module(module), f"add_{command}_arguments")(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Options may come before or after a command's positional arguments
    (``avssl eval CKPT --features layers logmel-stats``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    at = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if at is None or argv[at] not in COMMANDS:
        parser = _top_parser()
        parser.parse_args(argv)  # --help, --version, or an unknown command: argparse says which
        parser.print_help()
        return 0
    top = _top_parser().parse_args(argv[:at])
    args = _command_parser(argv[at]).parse_intermixed_args(argv[at + 1 :])
    args.command, args.verbose = argv[at], top.verbose
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    mod = importlib.import_module(COMMANDS[args.command][0])
    return int(getattr(mod, f"run_{args.command}")(args) or 0)
