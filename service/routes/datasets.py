"""/v1/datasets: upload an interaction log, derive a tenant-private scenario from it."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Response, UploadFile
from pydantic import ValidationError

from simulator.errors import SpecError

from ..datasets import Dataset, DeriveOverBudget, DeriveRequest, UnsupportedDataset
from ..deps import Svc, Tenant
from ..problems import ApiError
from ..schemas import DATASET_EXAMPLES, multipart_examples
from .audits import _problems, iso

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def _dataset(svc: Svc, row: dict[str, Any]) -> Dataset:
    job = json.loads(row["spec"])
    return Dataset(
        id=row["id"],
        status=row["status"],
        scenario=row["scenario"],
        progress=row["progress"],
        phase=row["phase"],
        error=row["error"],
        rows=job["rows"],
        cost=job["cost"],
        fit_cost=job.get("fit_cost"),
        created=iso(row["created_at"]),
        finished=iso(row["finished_at"]),
        derivation=svc.datasets.derivation(row) if svc.datasets else None,
    )


@router.post(
    "",
    status_code=202,
    response_model=Dataset,
    summary="Upload a log and derive a scenario",
    responses=_problems(401, 413, 415, 422),
    openapi_extra=multipart_examples(DATASET_EXAMPLES),
)
def submit_dataset(
    svc: Svc,
    tenant: Tenant,
    response: Response,
    log: Annotated[
        UploadFile,
        File(
            description="The interaction log, .csv or .parquet: user, item, timestamp columns "
            "(numbers or date-times), optional rating or 0/1 label."
        ),
    ],
    scenario_id: Annotated[
        str, Form(description="Id of the scenario to derive (name-v1), private to this tenant.")
    ],
    items: Annotated[
        UploadFile | None,
        File(description="Optional item table, .csv or .parquet: id, category, attributes."),
    ] = None,
    options: Annotated[
        str | None,
        Form(
            description="JSON object of derivation options, the CLI's flags: user_col, "
            "item_col, timestamp_col, rating_col, label_col, min_rating, item_id_col, "
            "category_col, polarity_column, polarity_labels ('left=-1,right=1'), model, dim, "
            "epochs, seed, steps, slate_size, dynamics ({'kind': 'trecs', 'delta': 0.05}) or "
            "fit ({'candidates': ['trecs'], 'max_events': 200, 'replicates': 200}: the "
            "dynamics fitted from the log, as recaudit fit does; see docs/derive.md)."
        ),
    ] = None,
) -> Dataset:
    """Check the upload (file type by content, schema, the derivation budget: log rows x
    dimension x epochs) and queue the derivation; answer 202 with the dataset's id. Bad
    rows are 422 naming the first of them; anything but CSV or parquet is 415; nothing is
    kept from a refused upload. Poll ``GET /v1/datasets/{id}``."""
    assert svc.datasets is not None
    try:
        extra = json.loads(options) if options else {}
        if not isinstance(extra, dict):
            raise SpecError("options must be a JSON object")
        request = DeriveRequest.model_validate({**extra, "scenario_id": scenario_id})
    except json.JSONDecodeError as exc:
        raise ApiError(422, f"options are not JSON: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ApiError(422, f"invalid {where}: {first['msg']}") from None
    except SpecError as exc:
        raise ApiError(422, str(exc)) from None
    log_file = (log.file.read(), log.filename)
    items_file = (items.file.read(), items.filename) if items is not None else None
    try:
        row = svc.datasets.submit(tenant, request, log_file, items_file)
    except UnsupportedDataset as exc:
        raise ApiError(415, str(exc), slug="unsupported-upload") from None
    except DeriveOverBudget as exc:
        raise ApiError(422, str(exc), slug="budget") from None
    except SpecError as exc:
        raise ApiError(422, str(exc), slug="invalid-dataset") from None
    if svc.dataset_runner is not None:
        svc.dataset_runner.wake()
    response.headers["Location"] = f"/v1/datasets/{row['id']}"
    return _dataset(svc, row)


@router.get(
    "/{dataset_id}",
    response_model=Dataset,
    summary="A dataset's derivation",
    responses=_problems(401, 404),
)
def get_dataset(dataset_id: str, svc: Svc, tenant: Tenant) -> Dataset:
    """Status of the derivation; once succeeded, its provenance (derivation.json) and
    the scenario id that this tenant's audits can name."""
    row = svc.datasets.get(tenant, dataset_id) if svc.datasets else None
    if row is None:
        raise ApiError(404, f"no dataset {dataset_id!r}")
    return _dataset(svc, row)


@router.delete(
    "/{dataset_id}",
    response_model=Dataset,
    summary="Cancel a derivation",
    responses={202: {"model": Dataset}, **_problems(401, 404, 409)},
)
def cancel_dataset(dataset_id: str, svc: Svc, tenant: Tenant, response: Response) -> Dataset:
    """Cancel a queued derivation (200, status 'cancelled') or ask a running one to stop
    (202): a fit step stops within about a second; the embedding training and the
    calibration before it are not interrupted (the job stops when they end). A finished
    derivation answers 409."""
    row = svc.datasets.get(tenant, dataset_id) if svc.datasets else None
    if row is None:
        raise ApiError(404, f"no dataset {dataset_id!r}")
    assert svc.datasets is not None
    after = None
    if row["status"] in ("queued", "running"):
        after = svc.datasets.jobs.request_cancel(tenant, dataset_id)
    if after is None or after["status"] not in ("running", "cancelled"):
        status = (after or row)["status"]
        raise ApiError(409, f"dataset {dataset_id} already {status}; there is nothing to cancel")
    if svc.dataset_runner is not None:
        svc.dataset_runner.wake()
    if after["status"] == "running":
        response.status_code = 202
    return _dataset(svc, after)
