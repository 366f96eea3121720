"""What the service adds to the auditor's spec checks: the two policy kinds beyond the
registry (``uploaded`` and ``remote``), file paths, the device and the per-audit budget.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from auditor.budget import check, estimate
from auditor.spec import AuditSpec, PolicySpec
from simulator.errors import SpecError

from .config import Settings
from .uploads import PolicyStore

UPLOADED = "uploaded"
REMOTE = "remote"
EXTRA_KINDS = (UPLOADED, REMOTE)
#: service kinds whose users are independent given the policy: an uploaded model is frozen
#: and keeps per-user state only; a remote endpoint may learn from every user's clicks
INDEPENDENT_KINDS = (UPLOADED,)

#: how to ask for the two service kinds (shown by GET /v1/policies)
EXTRA_KIND_HELP = {
    UPLOADED: "an uploaded RecBole model (POST /v1/policies), never retrained: "
    'params {"id": "<policy id>"}',
    REMOTE: "a remote black-box policy at an operator-allowed http(s) URL (protocol "
    "recaudit.remote-policy/v2 by item ids, or v1 by indices; see docs/service.md): params "
    '{"url": "http://host:port/path", "protocol": "v2", "history": 20, "features": false}',
}


def _params(p: PolicySpec, allowed: set[str], required: set[str]) -> dict[str, Any]:
    extra = sorted(set(p.params) - allowed)
    if extra:
        raise SpecError(f"policy kind {p.kind!r} takes no parameter(s) {', '.join(extra)}")
    missing = sorted(required - set(p.params))
    if missing:
        raise SpecError(f"policy kind {p.kind!r} needs parameter(s) {', '.join(missing)}")
    for key in required:
        if not isinstance(p.params[key], str):
            raise SpecError(f"policy kind {p.kind!r}: parameter {key!r} must be a string")
    return dict(p.params)


def _file_paths(obj: Any, where: str = "scenario") -> list[str]:
    """Paths of file-backed parts of a scenario spec (catalog, population)."""
    out = []
    data = obj.model_dump() if hasattr(obj, "model_dump") else obj
    if isinstance(data, dict):
        if data.get("kind") == "file" and "path" in data:
            out.append(str(data["path"]))
        for v in data.values():
            out += _file_paths(v, where)
    elif isinstance(data, list | tuple):
        for v in data:
            out += _file_paths(v, where)
    return out


def check_audit(
    spec: AuditSpec,
    tenant: str,
    settings: Settings,
    uploads: PolicyStore,
    own: Any = None,
) -> int:
    """Refuse (SpecError) an audit the service cannot or may not run, and one over the
    budget (BudgetExceeded, from auditor.budget's estimate of its whole cost: catalog,
    simulations, trainings, remote calls); returns its cost in user-steps. ``own``: the
    tenant's derived scenario that ``spec`` names by id."""
    from auditor.plan import plan_audit
    from recommenders.remote import check_params

    if not isinstance(spec.scenario, str):
        for path in _file_paths(spec.scenario):
            if not path.startswith("data:"):
                raise SpecError(
                    f"the service reads no files from its disk: scenario file {path!r} must be "
                    "package data ('data:<dir>/<file>') or use a registered scenario id"
                )
    if spec.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SpecError("device 'cuda' was asked for but this service has no CUDA device")
    if own is not None:
        spec = spec.model_copy(update={"scenario": own})
    plan = plan_audit(spec, extra_kinds=EXTRA_KINDS, independent_kinds=INDEPENDENT_KINDS)
    # the whole cost, from the spec's fields alone, before anything is read or built
    cost = plan.cost = estimate(
        spec, remote_kind=REMOTE, remote_batch=settings.remote_batch, extra_kinds=EXTRA_KINDS
    )
    check(cost, settings.limits())
    for _label, p in spec.arms():
        if p.kind == REMOTE:
            check_params(dict(p.params), settings.remote_allowlist)
        elif p.kind == UPLOADED:
            params = _params(p, {"id"}, {"id"})
            row = uploads.get(tenant, str(params["id"]))
            if row is None:
                raise SpecError(
                    f"no uploaded policy {params['id']!r} (see GET /v1/policies; upload with "
                    "POST /v1/policies)"
                )
            _check_catalog(uploads, tenant, str(params["id"]), spec.scenario_spec())
    return cost.user_steps


def _check_catalog(uploads: PolicyStore, tenant: str, policy_id: str, scenario: Any) -> None:
    """After the budget check: the catalog is within the limits, so building it to read its
    item ids is bounded."""
    import json

    from recommenders.recbole import check_covers_catalog
    from simulator.catalog import build_catalog

    config, _ = uploads.files(tenant, policy_id)
    tokens = json.loads(config)["item_tokens"]
    check_covers_catalog(tokens, build_catalog(scenario.catalog, scenario.env_seed).item_ids)


def remote_settings(settings: Settings) -> Any:
    """The operator's limits for remote calls (the service's and the CLI's)."""
    from recommenders.remote import RemoteSettings

    return RemoteSettings(
        allowlist=settings.remote_allowlist,
        timeout_s=settings.remote_timeout_s,
        retries=settings.remote_retries,
        max_bytes=settings.remote_max_bytes,
        batch=settings.remote_batch,
        audit_s=settings.remote_audit_s,
    )


def resolver(
    settings: Settings, tenant: str, uploads: PolicyStore
) -> Callable[[PolicySpec], Callable[[], Any] | None]:
    """``resolve_policy`` for run_audit: picklable factories for the service kinds."""
    from recommenders.remote import RemotePolicyFactory

    remote = remote_settings(settings)

    def resolve(p: PolicySpec) -> Callable[[], Any] | None:
        if p.kind == REMOTE:
            return RemotePolicyFactory.for_audit(dict(p.params), remote, p.name)
        if p.kind == UPLOADED:
            from recommenders.recbole import UploadedModelFactory

            config, weights = uploads.files(tenant, str(p.params["id"]))
            return UploadedModelFactory(config=config, weights=weights, name=p.name)
        return None

    return resolve
