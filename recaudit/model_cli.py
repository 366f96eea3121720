"""``recaudit model``: bring your own RecBole model.

``recaudit model convert CHECKPOINT --out DIR --trust-pickle`` turns a RecBole checkpoint
into the safetensors + JSON bundle that ``recaudit audit --policy bundle:DIR`` and the
service's ``POST /v1/policies`` accept. A checkpoint is a Python pickle, which can run
code when loaded: the command refuses (exit 2) without ``--trust-pickle``, which says
that the file is the caller's own. Nothing else in recaudit unpickles.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from simulator.errors import SpecError

PICKLE_WARNING = (
    "a RecBole checkpoint is a Python pickle, and loading a pickle can run any code it "
    "carries: convert only checkpoints you made yourself, and say so with --trust-pickle"
)


def register(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    model = sub.add_parser(
        "model",
        help="convert a RecBole checkpoint into an auditable model bundle",
        description="Bring your own RecBole model (BPR, GRU4Rec, SASRec): convert its "
        "checkpoint, on your machine, into the safetensors + JSON bundle that "
        "'recaudit audit --policy bundle:DIR' and the REST service accept.",
    )
    ms = model.add_subparsers(dest="model_command", metavar="{convert}")
    conv = ms.add_parser(
        "convert",
        help="RecBole checkpoint (.pth) -> model.safetensors + model.json",
        description="Read a checkpoint written by RecBole's trainer.fit(saved=True), rebuild "
        "its dataset from the atomic files it was trained on (to keep the model's own user "
        "and item ids) and write model.safetensors + model.json into --out. "
        + PICKLE_WARNING[0].upper()
        + PICKLE_WARNING[1:]
        + ".",
    )
    conv.add_argument("checkpoint", type=Path, help="the .pth file RecBole saved")
    conv.add_argument("--out", type=Path, required=True, help="directory for the bundle")
    conv.add_argument(
        "--trust-pickle",
        action="store_true",
        help="I made this checkpoint myself: unpickle it (required)",
    )
    conv.add_argument(
        "--data-path",
        type=Path,
        help="directory holding <dataset>.inter (default: the data_path in the checkpoint)",
    )
    conv.add_argument("--json", action="store_true", help="print one JSON object")
    return {"model": cmd_model}


def cmd_model(args: argparse.Namespace) -> int:
    if args.model_command != "convert":
        raise SpecError("give a subcommand: recaudit model convert CHECKPOINT --out DIR")
    return cmd_convert(args)


def cmd_convert(args: argparse.Namespace) -> int:
    if not args.trust_pickle:
        raise SpecError(f"refusing to load {args.checkpoint}: {PICKLE_WARNING}")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise SpecError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        raise SpecError(f"--out {out} is not empty; choose a new directory")
    if not args.checkpoint.is_file():
        raise SpecError(f"checkpoint not found: {args.checkpoint}")
    from recommenders.recbole import convert_checkpoint

    summary = convert_checkpoint(args.checkpoint, out, data_path=args.data_path)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(
        f"{summary['model']} ({summary['model_type']}) trained on {summary['dataset']}: "
        f"{summary['num_items']} items, {summary['num_users']} users"
    )
    print(f"item ids: {', '.join(summary['item_tokens_head'])}, ...")
    print(f"user ids: {', '.join(summary['user_tokens_head'])}, ...")
    print(
        f"wrote {out / 'model.safetensors'} and {out / 'model.json'} (sha256 {summary['sha256']})"
    )
    print(f"audit it: recaudit audit --policy bundle:{out} --scenario ID")
    return 0
