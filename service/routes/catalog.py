"""/v1/scenarios and /v1/policies."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile

from auditor.budget import BudgetExceeded
from auditor.spec import PolicySpec
from simulator.errors import SpecError

from ..datasets import public_spec
from ..deps import Svc, Tenant
from ..intake import EXTRA_KIND_HELP, UPLOADED
from ..problems import ApiError
from ..schemas import (
    POLICY_UPLOAD_EXAMPLES,
    PolicyKindInfo,
    PolicyListing,
    ScenarioDetail,
    ScenarioSummary,
    UploadedPolicy,
    multipart_examples,
)
from .audits import _problems, iso

scenarios = APIRouter(prefix="/v1/scenarios", tags=["scenarios"])
policies = APIRouter(prefix="/v1/policies", tags=["policies"])

_POLICY_ID = re.compile(r"^p[0-9a-f]{16}$")


def _scenario(s: object) -> ScenarioSummary:
    from simulator.specs import ScenarioSpec

    assert isinstance(s, ScenarioSpec)
    return ScenarioSummary(
        id=s.id, title=s.title, source=s.source, shows=s.shows, fingerprint=s.fingerprint()
    )


@scenarios.get(
    "", response_model=list[ScenarioSummary], summary="List scenarios", responses=_problems(401)
)
def list_scenarios(svc: Svc, tenant: Tenant) -> list[ScenarioSummary]:
    """The scenario registry (the same as ``recaudit scenarios``), then this tenant's
    scenarios derived from its datasets (POST /v1/datasets)."""
    from simulator.scenarios import SCENARIOS

    own = svc.datasets.scenarios(tenant) if svc.datasets else []
    return [_scenario(s) for s in [*SCENARIOS.values(), *own]]


@scenarios.get(
    "/{scenario_id}",
    response_model=ScenarioDetail,
    summary="One scenario",
    responses=_problems(401, 404),
)
def get_scenario(scenario_id: str, svc: Svc, tenant: Tenant) -> ScenarioDetail:
    from simulator.scenarios import get_scenario

    try:
        s = get_scenario(scenario_id)
    except SpecError as exc:
        own = svc.datasets.scenario(tenant, scenario_id) if svc.datasets else None
        if own is None:
            raise ApiError(404, str(exc)) from None
        return ScenarioDetail(**_scenario(own).model_dump(), spec=public_spec(own))
    return ScenarioDetail(**_scenario(s).model_dump(), spec=s.model_dump(mode="json"))


def _kinds() -> list[PolicyKindInfo]:
    from recommenders.registry import POLICIES

    out = [
        PolicyKindInfo(
            name=p.name, summary=p.summary, oracle=p.oracle, trainable=p.trainable, source="builtin"
        )
        for p in POLICIES.values()
    ]
    out += [
        PolicyKindInfo(name=k, summary=v, oracle=False, trainable=False, source="service")
        for k, v in EXTRA_KIND_HELP.items()
    ]
    return out


def _uploaded(row: dict[str, object]) -> UploadedPolicy:
    return UploadedPolicy(
        id=str(row["id"]),
        name=str(row["name"]),
        model=str(row["model"]),
        model_type=str(row["model_type"]),
        num_items=int(row["num_items"]),  # type: ignore[call-overload]
        num_users=int(row["num_users"]),  # type: ignore[call-overload]
        sha256=str(row["sha256"]),
        size_bytes=int(row["size_bytes"]),  # type: ignore[call-overload]
        created=iso(float(row["created_at"])) or "",  # type: ignore[arg-type]
        usage=PolicySpec(kind=UPLOADED, params={"id": str(row["id"])}),
    )


@policies.get("", response_model=PolicyListing, summary="List policies", responses=_problems(401))
def list_policies(svc: Svc, tenant: Tenant) -> PolicyListing:
    """Policy kinds (the registry's, plus 'uploaded' and 'remote'), this tenant's
    uploaded policies and the hosts remote policies may live on."""
    return PolicyListing(
        kinds=_kinds(),
        uploaded=[_uploaded(r) for r in svc.uploads.list_policies(tenant)],
        remote_allowlist=list(svc.settings.remote_allowlist),
    )


@policies.post(
    "",
    status_code=201,
    response_model=UploadedPolicy,
    summary="Upload a RecBole model",
    responses=_problems(401, 413, 415, 422),
    openapi_extra=multipart_examples(POLICY_UPLOAD_EXAMPLES),
)
def upload_policy(
    svc: Svc,
    tenant: Tenant,
    weights: Annotated[
        UploadFile, File(description="model.safetensors: the weights (safetensors only).")
    ],
    config: Annotated[
        UploadFile,
        File(
            description="model.json as written by recommenders.recbole.save_model: the "
            "model class (BPR, GRU4Rec, SASRec), its settings, the item and user id maps "
            "(item_tokens, user_tokens) and the weights' SHA-256."
        ),
    ],
    name: Annotated[str | None, Form(description="A name for people (optional).")] = None,
) -> UploadedPolicy:
    """Upload a trained RecBole model to audit. Pickles, torch checkpoints and other
    non-safetensors weights are refused with 415; an unknown model class, settings,
    wrong tensor shapes or id maps that do not match the weights with 422. Nothing is
    kept from a refused upload."""
    from recommenders.recbole import UnsupportedUpload

    w = weights.file.read()
    c = config.file.read()
    try:
        row = svc.uploads.add(tenant, name, c, w, max_params=svc.settings.max_model_params)
    except UnsupportedUpload as exc:
        raise ApiError(415, str(exc), slug="unsupported-upload") from None
    except BudgetExceeded as exc:
        raise ApiError(422, str(exc), slug="budget") from None
    except SpecError as exc:
        raise ApiError(422, str(exc), slug="invalid-upload") from None
    return _uploaded(row)


@policies.get(
    "/{policy_id}",
    response_model=UploadedPolicy | PolicyKindInfo,
    summary="One policy",
    responses=_problems(401, 404),
)
def get_policy(policy_id: str, svc: Svc, tenant: Tenant) -> UploadedPolicy | PolicyKindInfo:
    """An uploaded policy of this tenant by id, or a policy kind by name."""
    if _POLICY_ID.match(policy_id):
        row = svc.uploads.get(tenant, policy_id)
        if row is not None:
            return _uploaded(row)
    for k in _kinds():
        if k.name == policy_id:
            return k
    raise ApiError(404, f"no policy {policy_id!r} (see GET /v1/policies)")
