"""The one module that writes to MLflow.

Default store: SQLite at ``$RECAUDIT_HOME/mlflow.db`` with artifacts under
``$RECAUDIT_HOME/mlartifacts`` (``RECAUDIT_HOME`` defaults to ``~/.recaudit``); a team
points ``MLFLOW_TRACKING_URI`` at an ``mlflow server``. Only the driver calls this
module; workers return data.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from simulator.errors import SpecError
from simulator.fitting.report import fit_summary
from simulator.metric_registry import HEADLINE

EXPERIMENT_TRAIN = "recaudit-training"
EXPERIMENT_AUDIT = "recaudit-audits"
#: MLflow 3 opens an experiment on its GenAI (traces) view unless this tag says otherwise
KIND_TAG, KIND_RUNS = "mlflow.experimentKind", "custom_model_development"
METRIC_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch


def home() -> Path:
    return Path(os.environ.get("RECAUDIT_HOME") or Path.home() / ".recaudit").expanduser()


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    h = home()
    h.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{h / 'mlflow.db'}"


# ------------------------------------------------------------------ what people may see
PUBLIC_URL_ENV = "RECAUDIT_PUBLIC_MLFLOW_URL"
_URL = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<userinfo>[^/\s@?#]*@)?(?P<rest>[^\s?#,;'\"()]*)"
    r"(?P<query>\?[^\s#,;'\"()]*)?(?P<frag>#[^\s,;'\"()]*)?"
)
_SECRET_WORD = re.compile(
    r"(?i)\b(token|password|passwd|pwd|secret|api[_-]?key|access[_-]?key)=([^\s&;,]+)"
)


def redact(text: str) -> str:
    """``text`` with every URL's user name, password, query values and fragment removed,
    and ``token=...``-like pairs masked: the one filter for anything that may name the
    tracking store (messages, links, provenance)."""

    def url(m: re.Match[str]) -> str:
        out = f"{m['scheme']}://{m['rest']}"
        if m["query"]:
            keys = [kv.partition("=")[0] for kv in m["query"][1:].split("&") if kv]
            out += "?" + "&".join(f"{k}=***" for k in keys)
        return out

    return _SECRET_WORD.sub(r"\1=***", _URL.sub(url, text))


def public_url() -> str | None:
    """The MLflow UI's address as the audit's readers reach it (``RECAUDIT_PUBLIC_MLFLOW_URL``),
    without a trailing slash, or None when not configured: links are then left out rather
    than built from the internal tracking URI."""
    url = os.environ.get(PUBLIC_URL_ENV, "").strip()
    if not url:
        return None
    if not url.startswith(("http://", "https://")):
        raise SpecError(f"{PUBLIC_URL_ENV} must be an http(s) URL, got {redact(url)!r}")
    return redact(url).rstrip("/")


def shown_store() -> str:
    """The tracking store as written in reports: the public URL when configured, else
    only its kind (``sqlite``, ``http``, ...), never the internal address or a path."""
    public = public_url()
    if public:
        return public
    scheme = tracking_uri().partition(":")[0] or "file"
    return f"{scheme} (address not public; see {PUBLIC_URL_ENV})"


def _client() -> Any:
    os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import logging

    # the store's one-time table creation is not news to a CLI user
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def experiment_id(client: Any, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    artifact_location = None
    if tracking_uri().startswith("sqlite:"):
        artifact_location = (home() / "mlartifacts").resolve().as_uri()
    try:
        return str(
            client.create_experiment(
                name, artifact_location=artifact_location, tags={KIND_TAG: KIND_RUNS}
            )
        )
    except Exception:  # created concurrently
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return str(exp.experiment_id)


def log_metric_rows(
    client: Any, run_id: str, rows: Iterable[Mapping[str, float]], start_step: int = 0
) -> None:
    """Per-step metrics, batched (one call per 900 points)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch: list[Any] = []
    for step, row in enumerate(rows, start=start_step):
        for key, value in row.items():
            batch.append(Metric(key=key, value=float(value), timestamp=now, step=step))
            if len(batch) >= METRIC_BATCH:
                client.log_batch(run_id, metrics=batch)
                batch = []
    if batch:
        client.log_batch(run_id, metrics=batch)


def _params(client: Any, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 90):
        client.log_batch(run_id, params=items[i : i + 90])


def registered_name(scenario_id: str, kind: str) -> str:
    return f"recaudit.{scenario_id}.{kind}"


def find_trained(fingerprint: str) -> tuple[str, Path] | None:
    """The newest trained policy with this config fingerprint: (run id, local directory
    holding policy.json and policy.safetensors), or None. Looked up in the model registry
    (versions carry the fingerprint as a tag), then among finished training runs."""
    client = _client()
    import mlflow

    run_id, source = None, None
    versions = client.search_model_versions(f"tags.`recaudit.fingerprint` = '{fingerprint}'")
    for mv in sorted(versions, key=lambda v: int(v.creation_timestamp or 0), reverse=True):
        if mv.run_id and client.get_run(mv.run_id).info.status == "FINISHED":
            run_id, source = mv.run_id, mv.source
            break
    if run_id is None:
        exp = client.get_experiment_by_name(EXPERIMENT_TRAIN)
        if exp is None:
            return None
        runs = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`recaudit.fingerprint` = '{fingerprint}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not runs:
            return None
        run_id = runs[0].info.run_id
    dst = Path(tempfile.mkdtemp(prefix="recaudit-policy-"))
    if source is not None:
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst))
    else:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="policy", dst_path=str(dst)
        )
    return str(run_id), Path(local)


def log_training(
    *,
    kind: str,
    scenario_id: str,
    fingerprint: str,
    params: Mapping[str, Any],
    history: Sequence[Mapping[str, float]],
    summary: Mapping[str, float],
    bundle_dir: Path,
    parent_run_id: str | None = None,
    register: bool = True,
) -> dict[str, Any]:
    """Record one training run; register its policy under a stable name. Returns ids."""
    client = _client()
    exp = experiment_id(client, EXPERIMENT_TRAIN)
    tags = {
        "recaudit.kind": kind,
        "recaudit.scenario": scenario_id,
        "recaudit.fingerprint": fingerprint,
        "mlflow.runName": f"{kind} {scenario_id} {fingerprint[:8]}",
    }
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp, tags=tags)
    run_id = run.info.run_id
    try:
        _params(client, run_id, params)
        log_metric_rows(client, run_id, history)
        log_metric_rows(client, run_id, [summary], start_step=len(history))
        client.log_artifacts(run_id, str(bundle_dir), artifact_path="policy")
        out: dict[str, Any] = {"run_id": run_id, "registered_model": None, "version": None}
        if register:
            name = registered_name(scenario_id, kind)
            try:
                client.create_registered_model(
                    name, description=f"recaudit {kind} policies for {scenario_id}"
                )
            except Exception:  # already registered
                pass
            source = f"{run.info.artifact_uri}/policy"
            mv = client.create_model_version(
                name, source=source, run_id=run_id, tags={"recaudit.fingerprint": fingerprint}
            )
            out.update(registered_model=name, version=int(mv.version))
        client.set_terminated(run_id, "FINISHED")
        return out
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise


def start_parent(name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
    client = _client()
    exp = experiment_id(client, EXPERIMENT_TRAIN)
    run = client.create_run(exp, tags={"mlflow.runName": name, **tags})
    _params(client, run.info.run_id, params)
    return str(run.info.run_id)


def end_run(run_id: str, ok: bool = True, status: str | None = None) -> None:
    """Close a run: FINISHED or FAILED, or ``status`` (KILLED for a cancelled one)."""
    _client().set_terminated(run_id, status or ("FINISHED" if ok else "FAILED"))


def ui_command(host: str, port: int) -> list[str]:
    """The `mlflow ui` command line for the configured store (SQLite default or server)."""
    import shutil
    import sys

    exe = (
        shutil.which("mlflow", path=os.path.dirname(sys.executable))
        or shutil.which("mlflow")
        or "mlflow"
    )
    uri = tracking_uri()
    cmd = [exe, "ui", "--host", host, "--port", str(port), "--backend-store-uri", uri]
    if uri.startswith("sqlite:"):
        cmd += ["--default-artifact-root", (home() / "mlartifacts").resolve().as_uri()]
    return cmd


def check_reachable() -> None:
    """Fail with a clear message if the tracking store cannot be used."""
    try:
        _client().search_experiments(max_results=1)
    except Exception as exc:
        # the details name the internal address: for the operator's log only
        import logging

        logging.getLogger("recaudit.tracking").warning(
            "%s", redact(f"MLflow tracking store {tracking_uri()}: {exc}")
        )
        raise SpecError(
            f"cannot use the MLflow tracking store ({shown_store()}): {type(exc).__name__}"
        ) from None


def mark_experiments() -> None:
    """Tag recaudit's existing experiments so that MLflow's UI opens them on the runs
    view (experiments made before the tag was set on creation)."""
    client = _client()
    for name in (EXPERIMENT_AUDIT, EXPERIMENT_TRAIN):
        exp = client.get_experiment_by_name(name)
        if exp is not None and exp.tags.get(KIND_TAG) != KIND_RUNS:
            client.set_experiment_tag(exp.experiment_id, KIND_TAG, KIND_RUNS)


def latest_audit() -> tuple[str, str] | None:
    """(experiment id, run id) of the newest audit's parent run, or None."""
    client = _client()
    exp = client.get_experiment_by_name(EXPERIMENT_AUDIT)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string="tags.`recaudit.audit` = 'true'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return (str(exp.experiment_id), str(runs[0].info.run_id)) if runs else None


# ----------------------------------------------------------------------------- audits


def _flat_params(prefix: str, data: Any, out: dict[str, Any]) -> None:
    if isinstance(data, dict):
        for k, v in data.items():
            _flat_params(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        for i, v in enumerate(data):
            _flat_params(f"{prefix}.{i}", v, out)
    else:
        out[prefix] = data


def run_link(experiment_id: str | None, run_id: str | None, base: str | None = None) -> str | None:
    """The MLflow UI page of a run under ``base`` (default: :func:`public_url`), or None
    when there is no public address (the internal tracking URI is never used)."""
    base = base if base is not None else public_url()
    if not (experiment_id and run_id and base):
        return None
    # the query opens MLflow 3 on its runs view (the experiment tag alone does not,
    # for a browser that has not chosen a view yet)
    return (
        f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
        "?workflowType=machine_learning"
    )


def _audit_tags(spec: Any, audit_id: str, scenario_id: str, fingerprint: str) -> dict[str, str]:
    return {
        "mlflow.runName": f"audit {spec.policy.name} on {scenario_id} {fingerprint[:8]}",
        "recaudit.audit": "true",
        "recaudit.audit_id": audit_id,
        "recaudit.policy": spec.policy.kind,
        "recaudit.policy_label": spec.policy.name,
        "recaudit.scenario": scenario_id,
        "recaudit.fingerprint": fingerprint,
    }


def _spec_params(spec: Any, scenario_id: str, steps: int) -> dict[str, Any]:
    """The spec as flat params, with the resolved horizon and the seeds."""
    params: dict[str, Any] = {}
    _flat_params("", spec.model_dump(mode="json"), params)
    if not isinstance(spec.scenario, str):
        params = {k: v for k, v in params.items() if not k.startswith("scenario.")}
        params["scenario"] = scenario_id
    params.update(steps=steps, seeds=",".join(str(spec.seed + r) for r in range(spec.replicates)))
    params.update(fit_summary(getattr(spec.scenario_spec(), "fit", None))[0])
    return params


@contextmanager
def live_audit(spec: Any, audit_id: str) -> Iterator[tuple[str, str]]:
    """The audit's parent run, created when the audit starts so that MLflow shows it
    RUNNING with its true duration; yields (run id, experiment id). An exception closes
    it FAILED, a cancellation (or Ctrl-C) KILLED; :func:`finish_audit` closes it
    FINISHED."""
    from .executor import Cancelled

    check_reachable()
    client = _client()
    exp = experiment_id(client, EXPERIMENT_AUDIT)
    scenario = spec.scenario_spec()
    fingerprint = spec.fingerprint()
    run = client.create_run(exp, tags=_audit_tags(spec, audit_id, scenario.id, fingerprint))
    run_id = str(run.info.run_id)
    close_interrupted(client, exp, audit_id, run_id)
    try:
        steps = spec.steps or scenario.default_steps
        _params(client, run_id, _spec_params(spec, scenario.id, steps))
        yield run_id, exp
    except (Cancelled, KeyboardInterrupt):
        client.set_terminated(run_id, "KILLED")
        raise
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise


def close_interrupted(client: Any, exp: str, audit_id: str, run_id: str) -> list[str]:
    """An audit is run again after its process died (kill -9, a crash, a lost host): the
    dead attempt's run was never closed and would show RUNNING for ever. Close every other
    RUNNING run of the same audit id KILLED, tagged with the run that replaced it. Only
    one attempt of an audit runs at a time (the job store hands each audit to one
    worker), so any other RUNNING run of the same id is a dead one."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", audit_id):
        return []
    stale = client.search_runs(
        [exp],
        f"tags.`recaudit.audit_id` = '{audit_id}' and attributes.status = 'RUNNING'",
    )
    closed = []
    for r in stale:
        if r.info.run_id == run_id:
            continue
        client.set_tag(r.info.run_id, "recaudit.interrupted", f"re-run as {run_id}")
        client.set_terminated(r.info.run_id, "KILLED")
        closed.append(str(r.info.run_id))
    return closed


def headline_metrics(report: Any) -> dict[str, float]:
    """The parent run's few metrics: the audited arm's headline figures
    (``policy/<metric>``) and, per criterion, its effect with the bounds it was judged
    on and its margin (``criterion/<name>/...``), plus the criterion's effect CI
    (``effect/<metric>/<arm>``...). Everything else goes to the run's tables."""
    out: dict[str, float] = {}
    audited = next((a.label for a in report.arms if a.role == "audited"), "policy")
    for name in HEADLINE:  # the registry's headline figures
        s = report.metrics.get(audited, {}).get(name)
        if s is not None and s.mean is not None:
            out[f"{audited}/{name}"] = s.mean
    effects = {(e.metric, e.reference): e for e in report.effects}
    for c in report.criteria:
        for key, value in (
            ("estimate", c.estimate),
            ("lower", c.lower),
            ("upper", c.upper),
            ("margin", c.margin),
        ):
            if value is not None:
                out[f"criterion/{c.name}/{key}"] = value
        e = effects.get((c.metric, c.reference_arm))
        if e is not None:
            for suffix, value in (("", e.mean), ("/ci_low", e.ci_low), ("/ci_high", e.ci_high)):
                if value is not None:
                    out[f"effect/{e.metric}/{e.reference}{suffix}"] = value
    return out


def report_tables(report: Any) -> dict[str, dict[str, list[Any]]]:
    """Every figure of the report as tables (column -> values), for MLflow's table view:
    ``tables/metrics.json`` (arm x metric) and ``tables/effects.json`` (metric x reference)."""
    metrics: dict[str, list[Any]] = {
        k: [] for k in ("arm", "metric", "mean", "sd", "ci_low", "ci_high")
    }
    for arm, rows in report.metrics.items():
        for name, s in rows.items():
            for key, value in zip(
                metrics, (arm, name, s.mean, s.sd, s.ci_low, s.ci_high), strict=True
            ):
                metrics[key].append(value)
    cols = ("metric", "reference", "mean", "ci_low", "ci_high", "sd", "effect_size")
    effects: dict[str, list[Any]] = {k: [] for k in (*cols, "p_value", "p_holm")}
    for e in report.effects:
        for key in effects:
            effects[key].append(getattr(e, key))
    return {"tables/metrics.json": metrics, "tables/effects.json": effects}


def start_audit(report: Any, live: tuple[str, str] | None = None) -> tuple[str, str]:
    """Record the finished analysis on the audit's parent run (``live``, from
    :func:`live_audit`; created now when None): verdict and criteria as tags, headline
    figures as metrics, every figure as tables, and one child run per arm with its
    per-step curves. Returns (run id, experiment id); the run stays open until
    :func:`finish_audit` adds the report."""
    client = _client()
    spec = report.spec
    prov = report.provenance
    if live is None:
        exp = experiment_id(client, EXPERIMENT_AUDIT)
        tags = _audit_tags(spec, report.id, prov.scenario_id, prov.fingerprint)
        run_id = str(client.create_run(exp, tags=tags).info.run_id)
        _params(client, run_id, _spec_params(spec, prov.scenario_id, report.steps))
    else:
        run_id, exp = live
    try:
        tags = {
            "recaudit.scenario_fingerprint": prov.scenario_fingerprint,
            "recaudit.code_version": prov.code_version,
            "recaudit.git_commit": prov.git_commit or "",
            "recaudit.verdict": report.verdict,
        }
        for c in report.criteria:
            tags[f"recaudit.criterion.{c.name}"] = c.status
        from mlflow.entities import RunTag

        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        fit_metrics = fit_summary(getattr(spec.scenario_spec(), "fit", None))[1]
        log_metric_rows(client, run_id, [{**headline_metrics(report), **fit_metrics}])
        for artifact_file, table in report_tables(report).items():
            client.log_table(run_id, data=table, artifact_file=artifact_file)
        for arm in report.arms:
            _log_arm(client, exp, run_id, report, arm)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id, exp


def _log_arm(client: Any, exp: str, parent: str, report: Any, arm: Any) -> None:
    from mlflow.entities import Metric

    tags = {
        "mlflow.runName": f"{arm.label} ({arm.kind})",
        "mlflow.parentRunId": parent,
        "recaudit.arm": arm.label,
        "recaudit.kind": arm.kind,
        "recaudit.role": arm.role,
        "recaudit.audit_id": report.id,
    }
    if arm.trained_run_id:
        tags["recaudit.trained_run_id"] = arm.trained_run_id
    child = client.create_run(exp, tags=tags)
    cid = child.info.run_id
    params = {"kind": arm.kind, "role": arm.role, "oracle": arm.oracle}
    params.update({f"params.{k}": v for k, v in arm.params.items()})
    _params(client, cid, params)
    now = int(time.time() * 1000)
    points: list[Any] = []
    for name, curve in report.curves.get(arm.label, {}).items():
        for step, value in zip(curve.steps, curve.mean, strict=True):
            if value is not None:
                points.append(Metric(key=name, value=float(value), timestamp=now, step=step))
    for i in range(0, len(points), METRIC_BATCH):
        client.log_batch(cid, metrics=points[i : i + METRIC_BATCH])
    client.set_terminated(cid, "FINISHED")


def finish_audit(run_id: str, report: Any, directory: Path) -> None:
    """Attach the report (JSON, HTML, figures) to the audit's run and close it."""
    client = _client()
    client.log_artifacts(run_id, str(directory))
    client.set_terminated(run_id, "FINISHED")
