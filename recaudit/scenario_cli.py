"""``recaudit scenario derive``: a scenario from a team's interaction log."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from simulator.errors import SpecError


def add_parsers(sub: Any, positive_int: Any, non_negative_int: Any) -> None:
    sc = sub.add_parser("scenario", help="derive a scenario from your own interaction log")
    scsub = sc.add_subparsers(dest="scenario_command", parser_class=type(sc))
    de = scsub.add_parser(
        "derive",
        help="derive a scenario directory from an interaction log",
        description=(
            "Learn user and item embeddings from an interaction log with RecBole (your ids "
            "kept), calibrate the choice model to the log's consumption rate, take a polarity "
            "axis from an item attribute you name (or none), and write a scenario directory "
            "(items.parquet, users.parquet, scenario.json, derivation.json) that 'recaudit "
            "audit --scenario DIR' and 'recaudit simulate --scenario DIR' accept."
        ),
        epilog=(
            "The log's consumption rate is the share of (user, step) cells with at least one "
            "interaction, the log's time span cut into --steps equal steps. Bad rows are "
            "refused with their row numbers (data rows, counted from 1). Exit status 2 on bad "
            "input."
        ),
    )
    de.add_argument("log", type=Path, help="interaction log: .csv, .parquet or RecBole .inter")
    de.add_argument("--out", type=Path, required=True, help="scenario directory to write")
    de.add_argument("--force", action="store_true", help="replace --out if it is not empty")
    de.add_argument("--id", default="derived-v1", help="scenario id, name-v1 (default derived-v1)")
    de.add_argument("--items", type=Path, help="item table: .csv, .parquet or RecBole .item")
    g = de.add_argument_group("log columns (default: user_id/user, item_id/item, timestamp)")
    g.add_argument("--user-col", help="user column")
    g.add_argument("--item-col", help="item column")
    g.add_argument("--timestamp-col", help="timestamp column (numbers or date-times)")
    g.add_argument("--rating-col", help="rating column (default: rating, if present)")
    g.add_argument("--label-col", help="0/1 label column; rows labelled 0 are dropped")
    g.add_argument("--min-rating", type=float, help="drop interactions rated below this")
    it = de.add_argument_group("item table columns")
    it.add_argument("--item-id-col", help="item id column (default item_id/item)")
    it.add_argument("--category-col", help="category column (item topics)")
    it.add_argument("--polarity-column", help="numeric item attribute defining the polarity axis")
    it.add_argument(
        "--polarity-labels",
        help="polarity from category labels, e.g. left=-1,right=1 (needs --category-col)",
    )
    m = de.add_argument_group("model and scenario")
    m.add_argument("--model", default="BPR", help="RecBole model for the embeddings (BPR)")
    m.add_argument("--dim", type=positive_int, default=16, help="embedding dimension (16)")
    m.add_argument("--epochs", type=positive_int, default=20, help="training epochs (20)")
    m.add_argument("--learning-rate", type=float, default=0.005, help="Adam step (0.005)")
    m.add_argument("--seed", type=non_negative_int, default=0, help="seed (0)")
    m.add_argument("--steps", type=positive_int, default=50, help="horizon in steps (50)")
    m.add_argument("--slate-size", type=positive_int, default=10, help="items per slate (10)")
    m.add_argument(
        "--dynamics",
        default="trecs",
        help="drift model kind: none, trecs, biased_assimilation, bounded_confidence, ... (trecs)",
    )
    m.add_argument(
        "--dynamics-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter of the drift model (repeatable; default for trecs: delta=0.05)",
    )
    m.add_argument("--threads", type=positive_int, default=1, help="torch threads (1)")
    f = de.add_argument_group("fitting the dynamics from the log (recaudit fit's fitter)")
    f.add_argument(
        "--fit",
        nargs="?",
        const="",
        metavar="FAMILIES",
        help="fit the dynamics instead of --dynamics: comma-separated candidates besides "
        "static (default: all of them)",
    )
    f.add_argument("--fit-proxy", choices=("popularity", "sampled"), default="popularity")
    f.add_argument("--fit-max-events", type=positive_int, default=200, help="per user (200)")
    f.add_argument("--fit-replicates", type=positive_int, default=200, help="bootstrap (200)")
    de.add_argument(
        "--json", action="store_true", help="print derivation.json instead of a summary"
    )


def _dynamics(kind: str, params: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": kind}
    if kind == "trecs" and not params:
        out["delta"] = 0.05
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"cannot read --dynamics-param {item!r}; write KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _fitter(args: argparse.Namespace) -> Any:
    """The fit step asked for with --fit (None: the chosen --dynamics)."""
    if args.fit is None:
        return None
    if args.dynamics != "trecs" or args.dynamics_param:
        raise SpecError("give --dynamics or --fit, not both: a fit chooses the dynamics")
    import sys

    from recommenders.fit_step import fitted_dynamics
    from simulator.fitting.run import FitOptions, parse_candidates

    options = FitOptions(
        candidates=parse_candidates(args.fit or None),
        proxy=args.fit_proxy,
        slate_size=args.slate_size,
        max_events=args.fit_max_events,
        replicates=args.fit_replicates,
        seed=args.seed,
    )

    def progress(msg: str) -> None:
        print(f"recaudit scenario derive: fitting dynamics: {msg}", file=sys.stderr, flush=True)

    return fitted_dynamics(options, progress=progress, threads=args.threads)


def cmd_scenario(args: argparse.Namespace) -> int:
    if args.scenario_command != "derive":
        raise SpecError("give a subcommand: recaudit scenario derive LOG --out DIR")
    from recommenders.derive import (
        Columns,
        DeriveOptions,
        ItemColumns,
        derive,
        parse_labels,
    )

    if args.items is None and (args.category_col or args.polarity_column or args.polarity_labels):
        raise SpecError("--category-col, --polarity-column and --polarity-labels need --items")
    if args.polarity_column and args.polarity_labels:
        raise SpecError("give --polarity-column or --polarity-labels, not both")
    options = DeriveOptions(
        scenario_id=args.id,
        model=args.model,
        dim=args.dim,
        epochs=args.epochs,
        seed=args.seed,
        learning_rate=args.learning_rate,
        steps=args.steps,
        slate_size=args.slate_size,
        min_rating=args.min_rating,
        polarity_labels=parse_labels(args.polarity_labels) if args.polarity_labels else None,
        dynamics=_dynamics(args.dynamics, args.dynamics_param),
        threads=args.threads,
    )
    prov = derive(
        args.log,
        args.out,
        items_path=args.items,
        columns=Columns(
            user=args.user_col,
            item=args.item_col,
            timestamp=args.timestamp_col,
            rating=args.rating_col,
            label=args.label_col,
        ),
        item_columns=ItemColumns(
            id=args.item_id_col, category=args.category_col, polarity=args.polarity_column
        ),
        options=options,
        dynamics_fitter=_fitter(args),
        force=args.force,
    )
    if args.json:
        print(json.dumps(prov, indent=1, sort_keys=True))
        return 0
    cal, rows, pol = prov["calibration"], prov["rows"], prov["polarity"]
    dropped = ", ".join(f"{v} ({k})" for k, v in rows["dropped"].items()) or "none"
    print(f"scenario {prov['scenario']} (fingerprint {prov['fingerprint']}) written to {args.out}")
    print(
        f"  log: {rows['read']} rows read, {rows['kept']} kept, dropped: {dropped}; "
        f"{prov['items']['catalog']} items, {prov['users']} users"
    )
    print(
        f"  embeddings: {prov['embeddings']['model']} dim {prov['embeddings']['dim']}, "
        f"{prov['embeddings']['epochs']} epochs, seed {prov['embeddings']['seed']}"
    )
    print(
        f"  calibration: log rate {cal['log_rate']:.4f} per user-step, simulated "
        f"{cal['simulated_rate']:.4f} (error {cal['error']:+.4f}, {cal['relative_error']:+.1%}); "
        f"T {cal['temperature']:.4g}, no-click utility {cal['no_click_utility']:.4g}"
    )
    axis = (
        f"from {pol['source']} (R^2 {pol['r2']:.3f})"
        if pol["axis"] is not None
        else "none: axis-free scenario, audits default to axis-free criteria"
    )
    print(f"  polarity axis: {axis}")
    dyn = prov["dynamics"]
    fitted = ""
    if dyn.get("fitted"):
        lo, hi = dyn["vs_static_interval"]
        fitted = (
            f"; family {dyn['family']}, held-out log-likelihood per event vs static "
            f"{dyn['vs_static']:+.4f} [{lo:+.4f}, {hi:+.4f}]"
        )
    print(f"  dynamics: {dyn['kind']} ({dyn['by']}{fitted})")
    return 0
