"""Response bodies of the REST API (requests use the auditor's own AuditSpec)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from auditor.spec import AuditSpec, PolicySpec

Status = Literal["queued", "running", "succeeded", "failed", "cancelled"]

#: examples of POST /v1/audits bodies, shown in /docs (each one is accepted: a test posts it)
AUDIT_EXAMPLES = {
    "small": {
        "summary": "A small audit against two built-in references",
        "value": {
            "scenario": "polarity-1d-v1",
            "policy": {"kind": "myopic"},
            "references": [{"kind": "natural"}, {"kind": "popularity"}],
            "users": 50,
            "steps": 5,
            "replicates": 2,
        },
    },
    "criteria": {
        "summary": "Your own criterion: induced shift at most 0.02 above natural drift's",
        "value": {
            "scenario": "topics-tiny-v1",
            "policy": {"kind": "oracle-greedy", "label": "candidate"},
            "references": [{"kind": "natural"}, {"kind": "myopic"}],
            "users": 40,
            "steps": 6,
            "replicates": 3,
            "criteria": [
                {
                    "name": "shift-vs-natural",
                    "metric": "induced_shift",
                    "reference": "natural",
                    "margin": 0.02,
                    "description": "no more preference shift than drift alone",
                }
            ],
        },
    },
}


#: examples of the multipart uploads, shown in /docs; file fields name the file to attach
#: (a test posts each example with such a file)
DATASET_EXAMPLES = {
    "a log and an item table": {
        "summary": "Derive shop-v1 with a political-leaning axis",
        "description": "curl -H 'Authorization: Bearer $KEY' -F log=@log.csv "
        "-F items=@items.csv -F scenario_id=shop-v1 "
        '-F \'options={"item_id_col": "item_id", "polarity_column": '
        '"leaning", "dim": 8, "epochs": 5}\' http://127.0.0.1:8000/v1/datasets',
        "value": {
            "log": "log.csv (user_id,item_id,timestamp[,rating])",
            "items": "items.csv (item_id,genre,leaning)",
            "scenario_id": "shop-v1",
            "options": '{"item_id_col": "item_id", "polarity_column": "leaning", '
            '"dim": 8, "epochs": 5}',
        },
    }
}

POLICY_UPLOAD_EXAMPLES = {
    "a converted model": {
        "summary": "Upload the bundle written by recaudit model convert",
        "description": "curl -H 'Authorization: Bearer $KEY' "
        "-F weights=@bundle/model.safetensors -F config=@bundle/model.json "
        "-F name=shop-bpr http://127.0.0.1:8000/v1/policies",
        "value": {
            "weights": "model.safetensors",
            "config": "model.json",
            "name": "shop-bpr",
        },
    }
}


def multipart_examples(examples: dict) -> dict:
    """A route's ``openapi_extra`` giving its multipart/form-data body these examples."""
    return {"requestBody": {"content": {"multipart/form-data": {"examples": examples}}}}


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AuditLinks(_Out):
    self: str = Field(description="This audit.")
    report: str = Field(description="The JSON report (once status is 'succeeded').")
    report_html: str = Field(description="The HTML report (once status is 'succeeded').")
    figures: str = Field(description="The report's figures (once status is 'succeeded').")
    mlflow: str | None = Field(
        None, description="The audit's MLflow run in the MLflow UI (tracking server only)."
    )


class AuditSummary(_Out):
    """An audit job as listed."""

    id: str = Field(description="Audit id.")
    status: Status = Field(description="queued, running, succeeded, failed or cancelled.")
    policy: str = Field(description="Kind of the policy under audit.")
    scenario: str = Field(description="Scenario id.")
    progress: float = Field(description="Fraction done, 0 to 1.")
    verdict: Literal["pass", "flag", "inconclusive"] | None = Field(
        None, description="The verdict once succeeded."
    )
    created: str = Field(description="When it was submitted (UTC, ISO 8601).")
    links: AuditLinks = Field(description="Related resources.")


class AuditTimings(_Out):
    queued_s: float | None = Field(None, description="Seconds between submission and start.")
    running_s: float | None = Field(
        None, description="Seconds since the start (running) or from start to finish."
    )


class Audit(AuditSummary):
    """One audit job in full."""

    phase: str = Field(description="What it is doing now (or how it ended).")
    started: str | None = Field(None, description="When its current run started (UTC).")
    finished: str | None = Field(None, description="When it finished (UTC).")
    timings: AuditTimings = Field(description="Durations.")
    exit_code: int | None = Field(
        None, description="The CLI's exit status for the verdict: 0 pass, 1 flag, 3 inconclusive."
    )
    error: str | None = Field(None, description="Why it failed.")
    attempts: int = Field(description="Runs so far (a restart of the service re-runs a job).")
    cancel_requested: bool = Field(description="A cancellation was asked for.")
    mlflow_run_id: str | None = Field(None, description="The audit's MLflow parent run.")
    mlflow_experiment_id: str | None = Field(None, description="Its MLflow experiment.")
    mlflow_url: str | None = Field(
        None, description="The run's page in the MLflow UI (when tracking to a server)."
    )
    spec: AuditSpec = Field(description="The audit spec as submitted.")


class AuditPage(_Out):
    items: list[AuditSummary] = Field(description="Audits, newest first.")
    total: int = Field(description="Audits matching the filter.")
    limit: int = Field(description="Page size.")
    offset: int = Field(description="Index of the first item.")
    next: str | None = Field(None, description="The next page, if any.")


class Figures(_Out):
    figures: dict[str, str] = Field(description="Figure name -> URL of its PNG.")


class ScenarioSummary(_Out):
    id: str = Field(description="Scenario id, versioned (e.g. polarity-1d-v1).")
    title: str = Field(description="One-line title.")
    source: str = Field(description="Where the model comes from.")
    shows: str = Field(description="What the scenario is meant to show.")
    fingerprint: str = Field(description="Fingerprint of its full spec.")


class ScenarioDetail(ScenarioSummary):
    spec: dict[str, object] = Field(description="The full scenario spec.")


class PolicyKindInfo(_Out):
    name: str = Field(description="Kind, as used in a PolicySpec's 'kind'.")
    summary: str = Field(description="What it does.")
    oracle: bool = Field(description="Reads true preferences (a bound, not deployable).")
    trainable: bool = Field(description="Trained by recaudit before use (PPO learners).")
    source: Literal["builtin", "service"] = Field(
        description="builtin: the registry; service: uploaded and remote policies."
    )


class UploadedPolicy(_Out):
    id: str = Field(
        description="Policy id; audit it as {'kind': 'uploaded', 'params': {'id': ...}}."
    )
    name: str = Field(description="A name for people.")
    model: str = Field(description="RecBole model class.")
    model_type: str = Field(description="general or sequential.")
    num_items: int = Field(description="Items the model knows (simulator item i is token 'i').")
    num_users: int = Field(description="Users the model knows (simulated user b is token 'b').")
    sha256: str = Field(description="SHA-256 of the weights file.")
    size_bytes: int = Field(description="Size of the upload.")
    created: str = Field(description="When it was uploaded (UTC).")
    usage: PolicySpec = Field(description="The policy spec that audits it.")


class PolicyListing(_Out):
    kinds: list[PolicyKindInfo] = Field(description="Policy kinds a spec may name.")
    uploaded: list[UploadedPolicy] = Field(description="This tenant's uploaded policies.")
    remote_allowlist: list[str] = Field(description="Hosts a remote policy may live on.")


class Health(_Out):
    status: Literal["ok", "unavailable"] = Field(description="ok when every check passed.")
    checks: dict[str, str] = Field(
        default_factory=dict, description="Check name -> 'ok' or what is wrong."
    )
