"""The one module that writes to MLflow.

Default store: SQLite at ``$RECAUDIT_HOME/mlflow.db`` with artifacts under
``$RECAUDIT_HOME/mlartifacts`` (``RECAUDIT_HOME`` defaults to ``~/.recaudit``); a team
points ``MLFLOW_TRACKING_URI`` at an ``mlflow server``. Only the driver calls this
module; workers return data.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from simulator.errors import SpecError

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


def _client() -> Any:
    os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
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
    """The newest finished training run with this config fingerprint: (run id, local
    directory holding policy.json and policy.safetensors), or None."""
    client = _client()
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
    import mlflow

    dst = Path(tempfile.mkdtemp(prefix="recaudit-policy-"))
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="policy", dst_path=str(dst)
    )
    return run_id, Path(local)


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
        raise SpecError(f"cannot use the MLflow tracking store {tracking_uri()}: {exc}") from None
