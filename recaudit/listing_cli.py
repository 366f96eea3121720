"""``recaudit scenarios`` and ``recaudit policies``: the registries, one line each."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .args import Command


def register(sub: Any) -> dict[str, Command]:
    scen = sub.add_parser("scenarios", help="list the scenario registry")
    scen.add_argument("--json", action="store_true", help="print JSON")
    pol = sub.add_parser("policies", help="list the policy kinds")
    pol.add_argument("--json", action="store_true", help="print JSON")
    return {"scenarios": cmd_scenarios, "policies": cmd_policies}


def _print_listing(rows: list[dict[str, Any]], key: str, text: str, as_json: bool) -> None:
    """A registry listing: JSON, or one line per entry (its key, then a description)."""
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    width = max(len(r[key]) for r in rows)
    for r in rows:
        print(f"{r[key]:<{width}}  {r[text]}")


def cmd_scenarios(args: argparse.Namespace) -> int:
    from simulator.scenarios import SCENARIOS

    rows = [
        {
            "id": s.id,
            "title": s.title,
            "source": s.source,
            "shows": s.shows,
            "fingerprint": s.fingerprint(),
        }
        for s in SCENARIOS.values()
    ]
    _print_listing(rows, "id", "title", args.json)
    return 0


def cmd_policies(args: argparse.Namespace) -> int:
    from recommenders.registry import POLICIES

    rows = [
        {"name": p.name, "summary": p.summary, "oracle": p.oracle, "trainable": p.trainable}
        for p in POLICIES.values()
    ]
    _print_listing(rows, "name", "summary", args.json)
    return 0
