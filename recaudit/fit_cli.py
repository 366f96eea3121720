"""``recaudit fit``: fit users' preference dynamics from an interaction log.

The log (CSV, parquet or RecBole ``.inter``; columns user, item, timestamp, read by
:mod:`simulator.logs` as ``recaudit scenario derive`` reads it) is fitted against a
catalog: a registered scenario id, a parquet table of item features with an ``item_id``
column, or a scenario directory (``scenario.json``; its dynamics and ``fit``
field are updated in place). Logged consumptions carry no exposures, so the slates are
a stated logging-policy proxy. The fit section is written as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from simulator.errors import SpecError

SCENARIO_FILE = "scenario.json"


def add_parser(sub: Any, positive_int: Any, non_negative_int: Any) -> None:
    p = sub.add_parser(
        "fit",
        help="fit users' preference dynamics from an interaction log",
        description=(
            "Fit candidate dynamics families (static, T-RECS drift, biased assimilation, bounded "
            "confidence, anchored) to a timestamped log by maximum likelihood of each user's next "
            "interaction, select one by held-out likelihood against static, and report intervals "
            "and identifiability. Exposures are not in a log: slates come from --proxy."
        ),
    )
    p.add_argument("log", type=Path, help="interaction log: .csv, .parquet or .inter")
    p.add_argument(
        "--catalog",
        required=True,
        help="scenario id, parquet of item features with item_id, or a scenario directory",
    )
    p.add_argument(
        "--proxy",
        choices=("popularity", "sampled"),
        default="popularity",
        help="logging-policy proxy for the unlogged exposures (default popularity)",
    )
    p.add_argument("--slate-size", type=positive_int, default=10, help="proxy slate size (10)")
    p.add_argument(
        "--max-events", type=positive_int, default=200, help="each user's first N events (200)"
    )
    p.add_argument(
        "--candidates",
        default=None,
        help="comma-separated families (default: static,trecs,biased_assimilation,"
        "bounded_confidence,anchored_trecs)",
    )
    p.add_argument("--replicates", type=positive_int, default=200, help="bootstrap replicates")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed (default 0)")
    p.add_argument(
        "--temperature", type=float, default=None, help="MNL temperature for a parquet catalog"
    )
    p.add_argument(
        "--sensitivity",
        action="store_true",
        help="refit the selected family under the other proxy and report how estimates move",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="processes to fit the candidate families in (default 1; the result does not "
        "depend on it)",
    )
    p.add_argument("--out", type=Path, help="write the fit section here (default: stdout)")
    for role, names in (("user", "user_id, user"), ("item", "item_id, item")):
        p.add_argument(f"--{role}-col", help=f"the log's {role} column (default: {names})")
    p.add_argument(
        "--timestamp-col", help="the log's timestamp column (default: timestamp, time, ts)"
    )


def _catalog(text: str, temperature: float | None) -> tuple[Any, Any, list[str], Path | None]:
    """(Items, choice spec, item ids, scenario directory or None)."""
    from pydantic import TypeAdapter, ValidationError

    from simulator.catalog import build_catalog
    from simulator.fitting.likelihood import Items
    from simulator.scenarios import get_scenario
    from simulator.specs import ChoiceSpec, FileCatalog, MNLChoice

    def from_file(path: Path) -> tuple[Any, list[str]]:
        catalog = build_catalog(FileCatalog(path=str(path)), 0)
        return Items(catalog.features, catalog.appeal), list(catalog.item_ids)

    p = Path(text)
    if p.is_dir():
        spec_path = p / SCENARIO_FILE
        if not spec_path.is_file():
            raise SpecError(f"{p} is not a scenario directory (no {SCENARIO_FILE})")
        try:
            data = json.loads(spec_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise SpecError(f"{spec_path} is not JSON: {exc}") from None
        cat = data.get("catalog") if isinstance(data, dict) else None
        if not isinstance(cat, dict) or cat.get("kind") != "file":
            raise SpecError(f"{spec_path}: the catalog must be a file catalog")
        items, ids = from_file(p / Path(str(cat.get("path"))).name)
        try:
            choice = TypeAdapter(ChoiceSpec).validate_python(data.get("choice"))
        except ValidationError as exc:
            raise SpecError(
                f"{spec_path}: invalid choice model: {exc.errors()[0]['msg']}"
            ) from None
        return items, choice, ids, p
    if p.suffix.lower() == ".parquet":
        items, ids = from_file(p)
        return items, MNLChoice(temperature=temperature or 0.1), ids, None
    spec = get_scenario(text)
    catalog = build_catalog(spec.catalog, spec.env_seed)
    return Items(catalog.features, catalog.appeal), spec.choice, list(catalog.item_ids), None


def cmd_fit(args: argparse.Namespace) -> int:
    from simulator.fitting.run import FitOptions, fit_interactions, parse_candidates
    from simulator.logs import Columns, read_log

    options = FitOptions(
        candidates=parse_candidates(args.candidates),
        proxy=args.proxy,
        slate_size=args.slate_size,
        max_events=args.max_events,
        replicates=args.replicates,
        seed=args.seed,
        sensitivity=args.sensitivity,
        workers=args.workers,
    )
    if args.temperature is not None and not args.temperature > 0:
        raise SpecError("--temperature must be positive")
    if args.out is not None and args.out.exists() and args.out.is_dir():
        raise SpecError(f"--out {args.out} is a directory")
    items, choice_spec, ids, directory = _catalog(args.catalog, args.temperature)
    columns = Columns(user=args.user_col, item=args.item_col, timestamp=args.timestamp_col)
    raw = read_log(args.log, columns).log

    def progress(msg: str) -> None:
        print(f"recaudit fit: {msg}", file=sys.stderr, flush=True)

    section = fit_interactions(
        raw, ids, items, choice_spec, options, data={"log": str(args.log)}, progress=progress
    )
    payload = section.model_dump(mode="json")
    text = json.dumps(payload, indent=1) + "\n"
    if args.out is not None:
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    if directory is not None:
        spec_path = directory / SCENARIO_FILE
        data = json.loads(spec_path.read_text(encoding="utf-8"))
        data["dynamics"] = payload["dynamics"]
        data["fit"] = payload
        # written beside and renamed over it: a run stopped mid-write (kill, full disk)
        # leaves the scenario as it was, never half a file
        tmp = spec_path.with_name(f".{SCENARIO_FILE}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            shutil.copymode(spec_path, tmp)
            with tmp.open("rb") as fh:  # on disk before it replaces the scenario
                os.fsync(fh.fileno())
            os.replace(tmp, spec_path)
        finally:
            tmp.unlink(missing_ok=True)
        progress(f"{spec_path} now carries the fitted dynamics ({section.family}) and the fit")
    params = ", ".join(
        f"{p.name}={p.estimate:.4g}" if p.estimate is not None else f"{p.name}: {p.status}"
        for p in section.parameters
    )
    lo, hi = section.vs_static_interval
    progress(
        f"selected {section.family} ({params or 'no parameters'}); held-out log-likelihood per "
        f"event vs static {section.vs_static:+.4f} [{lo:+.4f}, {hi:+.4f}]"
    )
    return 0
