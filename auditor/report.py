"""The audit report: a versioned JSON schema (``recaudit.audit-report/v1``).

Everything a reader needs to trust and reproduce an audit is here: the spec and its
fingerprint, the seeds, code and package versions, timings, per-arm metrics with their
replicate values, per-step curves with confidence bands, preference distributions over
time, the paired effects and the verdict. Values that cannot be computed are ``null``.
The HTML report (:mod:`dashboards.report`) is rendered from this object alone.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .spec import AuditSpec

SCHEMA: Literal["recaudit.audit-report/v1"] = "recaudit.audit-report/v1"

Status = Literal["pass", "flag", "inconclusive"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Boundary(_Model):
    """How an arm's policy met the scenario's ids at the boundary (uploaded models and
    remote endpoints): the matching and cold-start rule in words, and the counts."""

    rule: str = Field(..., description="How items and users were matched; the cold-start rule.")
    kind: str = Field("", description="The model (class, training data) or the protocol.")
    catalog_items: int = Field(..., description="Items in the scenario's catalog.")
    model_items: int | None = Field(None, description="Items the model knows.")
    unknown_items: int = Field(0, description="Catalog items the model does not know.")
    model_items_outside_catalog: int | None = Field(
        None, description="Items the model knows that the catalog lacks (never shown)."
    )
    model_item_examples: list[str] = Field(default_factory=list, description="Its first item ids.")
    users: int = Field(..., description="Simulated users per replicate.")
    model_users: int | None = Field(None, description="Users the model knows.")
    model_user_examples: list[str] = Field(default_factory=list, description="Its first user ids.")
    cold_users: list[int] = Field(
        default_factory=list,
        description="Per replicate: simulated users the model could not serve (cold-start rule).",
    )
    cold_user_examples: list[str] = Field(default_factory=list)


class ArmInfo(_Model):
    label: str = Field(..., description="Arm name in this report ('policy' is the audited one).")
    kind: str = Field(..., description="Policy kind ('natural' for the counterfactual).")
    role: str = Field(..., description="audited, natural, myopic, rl, penalized or other.")
    params: dict[str, int | float | str | bool] = Field(default_factory=dict)
    oracle: bool = Field(False, description="Reads true preferences (not deployable).")
    trained_run_id: str | None = Field(None, description="MLflow run of the trained policy.")
    penalty_weight: float | None = Field(None, description="Penalty weight of penalized learners.")
    boundary: Boundary | None = Field(
        None, description="Ids at the boundary (uploaded models, remote endpoints)."
    )


class MetricSummary(_Model):
    mean: float | None
    sd: float | None = Field(None, description="Sample sd over replicates.")
    ci_low: float | None = Field(None, description="Bootstrap CI over replicates (1 - alpha).")
    ci_high: float | None = None
    per_replicate: list[float | None]


class Curve(_Model):
    """A per-step mean over replicates with a pointwise bootstrap band (1 - alpha)."""

    steps: list[int]
    mean: list[float | None]
    low: list[float | None]
    high: list[float | None]


class Distribution(_Model):
    """Users' positions on the polarity axis at checkpoints, pooled over replicates:
    ``density[i][j]`` is the share of users in bin j at ``steps[i]``."""

    steps: list[int]
    bin_edges: list[float]
    density: list[list[float]]


class Quantiles(_Model):
    p10: float | None
    p25: float | None
    p50: float | None
    p75: float | None
    p90: float | None
    mean: float | None


class Effect(_Model):
    """Paired effect metric(policy) - metric(reference) over replicates (same seeds)."""

    metric: str
    reference: str = Field(..., description="Reference arm label.")
    mean: float | None
    ci_low: float | None = Field(None, description="Expanded-percentile bootstrap CI (1 - alpha).")
    ci_high: float | None = None
    sd: float | None = Field(None, description="Sd of the per-replicate differences.")
    effect_size: float | None = Field(
        None, description="Cohen's d_z: mean difference / sd of differences (null when sd is 0)."
    )
    analysis: Literal["user", "replicate"] | None = Field(
        None, description="Units of the interval: users clustered by replicate, or replicates."
    )
    p_value: float | None = Field(
        None,
        description=(
            "Not computed: the table is descriptive and the verdict's tests are the criteria "
            "(kept null so that older reports still read)."
        ),
    )
    p_holm: float | None = Field(None, description="Not computed (see p_value).")
    per_replicate: list[float | None] = Field(default_factory=list)


class CriterionResult(_Model):
    name: str
    metric: str
    reference: str = Field(..., description="The role or label the criterion names.")
    reference_arm: str | None = Field(None, description="The arm it resolved to (null: none).")
    margin: float
    description: str = ""
    estimate: float | None = Field(None, description="Mean paired effect.")
    lower: float | None = Field(None, description="One-sided lower bound at level alpha/m.")
    upper: float | None = Field(None, description="One-sided upper bound at level alpha/m.")
    level: float | None = Field(None, description="Per-criterion level alpha/m (Bonferroni).")
    analysis: Literal["user", "replicate"] | None = Field(
        None,
        description=(
            "'user': per-user paired differences clustered by replicate (users independent "
            "given both policies, a per-user metric); 'replicate': replicate means."
        ),
    )
    analysis_reason: str = Field("", description="Why that analysis was used.")
    mde: float | None = Field(
        None,
        description=(
            "Minimum detectable effect: the distance from the margin this design detects with "
            "80% power at the criterion's level."
        ),
    )
    replicates_needed: int | None = Field(
        None, description="Inconclusive, replicate-level: replicates that would decide it."
    )
    users_needed: int | None = Field(
        None, description="Inconclusive, user-level: users per replicate that would decide it."
    )
    status: Status | Literal["skipped"] = Field(
        ...,
        description=(
            "pass, flag or inconclusive (also when the criterion cannot be evaluated); "
            "'skipped' appears only in reports written before that rule."
        ),
    )
    explanation: str


class Timings(_Model):
    total_s: float
    train_s: float = 0.0
    simulate_s: float = 0.0
    analyse_s: float = 0.0
    log_s: float = 0.0


class Provenance(_Model):
    fingerprint: str
    scenario_id: str
    scenario_fingerprint: str
    seeds: list[int]
    code_version: str = Field(..., description="recaudit version and git commit when known.")
    git_commit: str | None = None
    packages: dict[str, str]
    executor: str = Field(..., description="'in-process', 'ray-local' or the Ray address.")
    tracking_uri: str | None = None
    mlflow_run_id: str | None = None
    mlflow_experiment_id: str | None = None
    host: str = ""
    created: str = Field(..., description="UTC start time, ISO 8601.")
    timings: Timings


class AuditReport(_Model):
    schema_: Literal["recaudit.audit-report/v1"] = Field(SCHEMA, alias="schema")
    id: str = Field(..., description="Audit id.")
    spec: AuditSpec
    users: int
    steps: int
    alpha: float
    arms: list[ArmInfo]
    metrics: dict[str, dict[str, MetricSummary]] = Field(
        ..., description="arm label -> metric -> summary over replicates."
    )
    metric_descriptions: dict[str, str]
    curves: dict[str, dict[str, Curve]] = Field(..., description="arm label -> metric -> curve.")
    distributions: dict[str, Distribution] = Field(..., description="arm label -> distribution.")
    per_user: dict[str, dict[str, Quantiles]] = Field(
        ..., description="arm label -> 'shift' / 'induced_shift' -> quantiles over users."
    )
    effects: list[Effect]
    criteria: list[CriterionResult]
    verdict: Status
    summary: str = Field(..., description="One paragraph that explains the verdict.")
    provenance: Provenance

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def to_json(self, indent: int | None = 2) -> str:
        return self.model_dump_json(by_alias=True, indent=indent)


EXIT_CODES: dict[str, int] = {"pass": 0, "flag": 1, "inconclusive": 3}
