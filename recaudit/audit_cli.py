"""``recaudit audit`` and ``recaudit history``.

Exit status of ``audit``: 0 pass, 1 flag, 3 inconclusive, 2 bad input (one line on
stderr), 4 internal error, so that a release can be gated on it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from simulator.errors import SpecError

from .args import add_ray_flags, prepare_out_dir, requested_backend

_SPEC_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9_.-]*)\s*(?:\[(.*)\])?\s*$")


def parse_policy(text: str) -> dict[str, Any]:
    """'kind' or 'kind[key=value,key=value]' -> a PolicySpec dict. Values are read as
    JSON when they parse (numbers, true/false), otherwise kept as strings."""
    from .policy_sources import shorthand

    short = shorthand(text)
    if short is not None:
        return short
    m = _SPEC_RE.match(text)
    if not m:
        raise SpecError(f"cannot read policy {text!r}; write KIND or KIND[key=value,...]")
    out: dict[str, Any] = {"kind": m.group(1)}
    params: dict[str, Any] = {}
    if m.group(2):
        for item in m.group(2).split(","):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or not key:
                raise SpecError(f"cannot read {item!r} in policy {text!r}; write key=value")
            if key == "label":
                out["label"] = value.strip()
                continue
            try:
                params[key] = json.loads(value)
            except json.JSONDecodeError:
                params[key] = value.strip()
    if params:
        out["params"] = params
    return out


def split_list(text: str) -> list[str]:
    """Split on commas outside brackets."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p for p in (p.strip() for p in parts) if p]


def add_parsers(sub: Any, positive_int: Any, non_negative_int: Any) -> None:
    au = sub.add_parser(
        "audit",
        help="audit a policy: paired simulations, effects with CIs and a verdict",
        description=(
            "Run the policy under audit and its references (default: natural, ppo-myopic, "
            "ppo, ppo-distance) on the same simulated users with common random numbers, "
            "every (policy, replicate) beside the natural counterfactual as a job, and test "
            "the paired effects against the criteria. The backend is chosen by the work unless a flag names it: a cluster "
            "when RAY_ADDRESS is set, in this process for small audits with nothing to "
            "train, embedded Ray for large ones or when two or more learners must be "
            "trained; the output says which and why, and the numbers are the same on "
            "every backend. The default references include three PPO learners "
            "(4,096 users x 60 iterations each): the first audit of a scenario trains them "
            "(minutes on 2 cores, with a progress bar), later audits take them from the "
            "trained-policy cache. Cheaper: --references natural,myopic,popularity (nothing "
            "to train) or fewer iterations, e.g. 'ppo[iterations=10,users=1024]'. "
            "Exit status: 0 pass, 1 flag, 3 inconclusive, 2 bad input, 4 internal error."
        ),
        epilog=(
            "policy syntax: KIND or KIND[key=value,...], e.g. 'ppo-distance[penalty_weight=2,"
            "iterations=20]'; trained kinds take training overrides. A spec file (YAML or "
            "JSON) holds the same fields as the REST request body; flags given with --spec "
            "override its fields."
        ),
    )
    au.add_argument("--spec", type=Path, help="audit spec file (.yaml, .yml or .json)")
    au.add_argument(
        "--scenario",
        help="scenario id (see 'recaudit scenarios') or a derived scenario's directory",
    )
    au.add_argument(
        "--policy",
        help="the policy under audit: KIND or KIND[key=value,...]; bundle:DIR (a model "
        "converted by 'recaudit model convert'); remote:URL (an endpoint on "
        "RECAUDIT_REMOTE_ALLOWLIST)",
    )
    au.add_argument(
        "--references",
        help="comma-separated reference policies (default: natural,ppo-myopic,ppo,ppo-distance)",
    )
    au.add_argument("--users", type=positive_int, help="users per replicate (default 1000)")
    au.add_argument("--steps", type=positive_int, help="steps (default: the scenario's)")
    au.add_argument("--replicates", type=positive_int, help="replicates (default 8)")
    au.add_argument("--seed", type=non_negative_int, help="first replicate's seed (default 0)")
    add_ray_flags(au, "task")
    au.add_argument("--out", type=Path, help="write report.json, report.html and figures here")
    au.add_argument("--json", action="store_true", help="print the JSON report")
    au.add_argument("--no-track", action="store_true", help="do not log the audit to MLflow")
    au.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    hi = sub.add_parser(
        "history",
        help="every audit of a policy over time (from MLflow), to catch regressions",
        description="List the audits recorded in MLflow, oldest first, with their verdicts, "
        "code versions and key figures; --html writes a page with a chart.",
    )
    hi.add_argument("--policy", help="only audits of this policy kind")
    hi.add_argument("--scenario", help="only audits on this scenario")
    hi.add_argument("--html", type=Path, help="write a self-contained HTML page here")
    hi.add_argument("--json", action="store_true", help="print JSON rows")


def _read_spec_file(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise SpecError(f"--spec {path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise SpecError(f"--spec {path}: expected a .yaml, .yml or .json file")
    try:
        text = path.read_text()
        data = yaml.safe_load(text) if suffix != ".json" else json.loads(text)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "JSON" if suffix == ".json" else "YAML"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpecError(f"--spec {path}: not valid {kind}: {first}") from None
    if not isinstance(data, dict):
        raise SpecError(f"--spec {path}: expected a mapping of audit fields at the top level")
    return data


def build_spec(args: argparse.Namespace) -> Any:
    from auditor.spec import AuditSpec

    data: dict[str, Any] = {}
    if args.spec is not None:
        if args.scenario or args.policy or args.references:
            raise SpecError("give either --spec or --scenario/--policy/--references, not both")
        data = _read_spec_file(args.spec)
    else:
        if not args.scenario or not args.policy:
            raise SpecError("give --spec FILE, or --scenario and --policy")
        data["scenario"] = args.scenario
        data["policy"] = parse_policy(args.policy)
        if args.references:
            data["references"] = [parse_policy(p) for p in split_list(args.references)]
    from simulator.derived import is_scenario_dir, load_scenario_dir

    if isinstance(data.get("scenario"), str) and is_scenario_dir(data["scenario"]):
        data["scenario"] = load_scenario_dir(data["scenario"])
    for key in ("users", "steps", "replicates", "seed"):
        value = getattr(args, key)
        if value is not None:
            data[key] = value
    return AuditSpec.model_validate(data)


def render_table(report: Any) -> str:
    """The verdict, the criteria and each arm's key figures, as plain text."""

    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.4g}"

    lines = [
        f"audit {report.id}: {report.spec.policy.name} on {report.provenance.scenario_id} "
        f"({report.users} users x {report.steps} steps x {len(report.provenance.seeds)} replicates)",
        "",
    ]
    # the headline metrics present, in the report's order (an axis-free scenario's
    # report leads with shift, induced shift, dispersion), at most 6
    headline = {"engagement", "welfare", "shift", "induced_shift", "dispersion"}
    headline |= {"polarization", "extreme_share"}
    keys = [k for k in next(iter(report.metrics.values())) if k in headline][:6]
    header = f"{'arm':<30}" + "".join(f"{k:>15}" for k in keys)
    lines += [header, "-" * len(header)]
    for arm in report.arms:
        row = report.metrics[arm.label]
        name = f"{arm.label}" + (f" ({arm.kind})" if arm.kind != arm.label else "")
        lines.append(f"{name[:29]:<30}" + "".join(f"{f(row[k].mean):>15}" for k in keys))
    lines += ["", f"{'criterion':<30}{'effect':>10}{'bounds':>24}{'margin':>9}  status"]
    for c in report.criteria:
        bounds = f"[{f(c.lower)}, {f(c.upper)}]" if c.lower is not None else "-"
        lines.append(
            f"{c.name[:29]:<30}{f(c.estimate):>10}{bounds:>24}{f(c.margin):>9}  {c.status.upper()}"
            + (f" vs {c.reference_arm}" if c.reference_arm else "")
            + (f" ({c.analysis}-level)" if c.analysis else "")
        )
    from dashboards.report import boundary_lines

    ids = boundary_lines(report)
    if ids:
        lines += ["", "ids at the boundary:", *(f"  {line}" for line in ids)]
    lines += ["", f"verdict: {report.verdict.upper()}", "", report.summary]
    return "\n".join(lines)


def cmd_audit(args: argparse.Namespace) -> int:
    from auditor.audit import plan_audit, run_audit

    from .policy_sources import INDEPENDENT, KINDS, check

    spec = build_spec(args)
    plan = plan_audit(spec, extra_kinds=KINDS, independent_kinds=INDEPENDENT)  # checked once
    resolve = check(spec)  # bundles and remote endpoints, before anything runs
    address = requested_backend(args)
    out: Path | None = args.out
    if out is not None:
        prepare_out_dir(out, "report.json")

    from tqdm import tqdm

    bar = tqdm(
        total=100,
        desc="audit",
        unit="%",
        disable=args.no_progress or not sys.stderr.isatty(),
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}",
    )

    def progress(fraction: float, phase: str) -> None:
        bar.n = round(100 * fraction)
        bar.set_postfix_str(phase)
        bar.refresh()

    from dashboards.report import write_report

    try:
        result = run_audit(
            spec,
            ray_address=address,
            progress=progress,
            track=not args.no_track,
            render=write_report,
            out_dir=out,
            plan=plan,
            resolve_policy=resolve,
            extra_kinds=KINDS,
            independent_kinds=INDEPENDENT,
        )
    finally:
        bar.close()
    report = result.report
    p = report.provenance
    print(f"backend: {p.executor} ({p.executor_reason})", file=sys.stderr)
    if args.json:
        print(report.to_json())
    else:
        print(render_table(report))
        if out is not None:
            print(f"\nreport: {out / 'report.html'}  (JSON: {out / 'report.json'})")
        if result.run_id:
            print(f"MLflow run {result.run_id}: see it with 'recaudit ui'")
    return result.exit_code


def cmd_history(args: argparse.Namespace) -> int:
    from dashboards.history import audit_history, render_history_html

    df = audit_history(policy=args.policy, scenario=args.scenario)
    if args.html is not None:
        title = f"audits of {args.policy or 'every policy'}" + (
            f" on {args.scenario}" if args.scenario else ""
        )
        args.html.parent.mkdir(parents=True, exist_ok=True)
        args.html.write_text(render_history_html(df, title))
    if args.json:
        print(df.to_json(orient="records", date_format="iso"))
        return 0
    if df.empty:
        print("no audits recorded yet (run 'recaudit audit ...')")
        return 0
    cols = [c for c in ("started", "policy", "scenario", "code_version", "verdict") if c in df]
    cols += [
        c for c in ("policy/induced_shift", "policy/polarization", "policy/engagement") if c in df
    ]
    print(df[cols].to_string(index=False))
    if args.html is not None:
        print(f"\npage: {args.html}")
    return 0
