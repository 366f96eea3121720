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
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from simulator.errors import SpecError
from simulator.fitting.report import fit_summary

EXPERIMENT_TRAIN = "recaudit-training"
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
        return str(client.create_experiment(name, artifact_location=artifact_location))
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


def end_run(run_id: str, ok: bool = True) -> None:
    _client().set_terminated(run_id, "FINISHED" if ok else "FAILED")


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


# ----------------------------------------------------------------------------- audits
EXPERIMENT_AUDIT = "recaudit-audits"


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
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def start_audit(report: Any) -> tuple[str, str]:
    """Create the audit's parent run and one child run per arm, with params, tags and
    metrics (per-step curves batched with their step). Returns (run id, experiment id);
    the run stays open until :func:`finish_audit` adds the artifacts."""
    client = _client()
    exp = experiment_id(client, EXPERIMENT_AUDIT)
    spec = report.spec
    prov = report.provenance
    tags = {
        "mlflow.runName": f"audit {spec.policy.name} on {prov.scenario_id} {prov.fingerprint[:8]}",
        "recaudit.audit": "true",
        "recaudit.audit_id": report.id,
        "recaudit.policy": spec.policy.kind,
        "recaudit.policy_label": spec.policy.name,
        "recaudit.scenario": prov.scenario_id,
        "recaudit.fingerprint": prov.fingerprint,
        "recaudit.scenario_fingerprint": prov.scenario_fingerprint,
        "recaudit.code_version": prov.code_version,
        "recaudit.git_commit": prov.git_commit or "",
        "recaudit.verdict": report.verdict,
    }
    for c in report.criteria:
        tags[f"recaudit.criterion.{c.name}"] = c.status
    run = client.create_run(exp, tags=tags)
    run_id = str(run.info.run_id)
    try:
        params: dict[str, Any] = {}
        _flat_params("", spec.model_dump(mode="json"), params)
        if not isinstance(spec.scenario, str):
            params = {k: v for k, v in params.items() if not k.startswith("scenario.")}
            params["scenario"] = prov.scenario_id
        params.update(steps=report.steps, seeds=",".join(map(str, prov.seeds)))
        fit_params, fit_metrics = fit_summary(getattr(spec.scenario, "fit", None))
        params.update(fit_params)
        _params(client, run_id, params)
        final: dict[str, float] = {}
        for arm, metrics in report.metrics.items():
            for name, s in metrics.items():
                if s.mean is not None:
                    final[f"{arm}/{name}"] = s.mean
        for e in report.effects:
            for suffix, value in (("", e.mean), ("/ci_low", e.ci_low), ("/ci_high", e.ci_high)):
                if value is not None:
                    final[f"effect/{e.metric}/{e.reference}{suffix}"] = value
        for c in report.criteria:
            if c.estimate is not None:
                final[f"criterion/{c.name}/estimate"] = c.estimate
        log_metric_rows(client, run_id, [{**final, **fit_metrics}])
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
    for name, s in report.metrics.get(arm.label, {}).items():
        if s.mean is not None:
            points.append(Metric(key=f"final/{name}", value=s.mean, timestamp=now, step=0))
    for i in range(0, len(points), METRIC_BATCH):
        client.log_batch(cid, metrics=points[i : i + METRIC_BATCH])
    client.set_terminated(cid, "FINISHED")


def finish_audit(run_id: str, report: Any, directory: Path) -> None:
    """Attach the report (JSON, HTML, figures) to the audit's run and close it."""
    client = _client()
    client.log_artifacts(run_id, str(directory))
    client.set_terminated(run_id, "FINISHED")
