"""The fit section: what a fitted scenario carries and reports show (JSON-able, frozen)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class ParameterFit(_Frozen):
    """One parameter of the selected family. ``estimate`` is None when the parameter is
    not identified: the interval then says only what the data do not rule out, and it is
    None too when the likelihood's maximum was not located (``note`` says which)."""

    name: str
    status: str = Field(description="identified, weakly identified or not identified")
    estimate: float | None
    interval: tuple[float, float] | None = Field(
        description="95% bootstrap over users; null when the maximum was not located"
    )
    relative_se: float | None = Field(description="standard error / scale of the estimate")
    note: str = ""


class CandidateFit(_Frozen):
    """One candidate family on the selection split."""

    family: str
    parameters: dict[str, float] = Field(description="estimates on the training split")
    heldout_loglik_per_event: float = Field(
        description="held-out users' whole histories, marginal log-likelihood per event "
        "(initial preferences integrated out)"
    )
    later_loglik_per_event: float | None = Field(
        default=None,
        description="no longer scored: one-step-ahead prediction of later events favours drift",
    )
    heldout_users_loglik_per_event: float | None = Field(
        description="the same as heldout_loglik_per_event"
    )
    vs_static: float = Field(description="held-out log-likelihood per event minus static's")
    vs_static_interval: tuple[float, float] = Field(description="95% bootstrap over users")


class FitSection(_Frozen):
    """A dynamics fit: the selected family, its parameters with intervals and
    identifiability, and every candidate's held-out likelihood against static."""

    family: str
    dynamics: dict[str, Any] = Field(description="the selected dynamics as a scenario spec")
    parameters: tuple[ParameterFit, ...]
    vs_static: float = Field(description="selected family's held-out gain per event over static")
    vs_static_interval: tuple[float, float]
    candidates: tuple[CandidateFit, ...]
    selection_rule: str
    method: str
    data: dict[str, Any] = Field(description="events, users, exposures (logged or proxy)")
    assumptions: tuple[str, ...]
    proxy_sensitivity: dict[str, Any] | None = None
    seconds: float = 0.0


def fit_summary(fit: dict[str, Any] | None) -> tuple[dict[str, str], dict[str, float]]:
    """(params, metrics) to log for a scenario's fit section: the family, each
    parameter's status, estimate and interval, and the held-out gain over static."""
    if not fit:
        return {"fit.family": "assumed"}, {}
    params = {"fit.family": str(fit.get("family"))}
    metrics: dict[str, float] = {}
    if fit.get("vs_static") is not None:
        metrics["fit/vs_static"] = float(fit["vs_static"])
    for p in fit.get("parameters") or []:
        params[f"fit.{p['name']}.status"] = str(p.get("status"))
        if p.get("estimate") is not None:
            metrics[f"fit/{p['name']}"] = float(p["estimate"])
        if p.get("interval"):
            metrics[f"fit/{p['name']}/ci_low"] = float(p["interval"][0])
            metrics[f"fit/{p['name']}/ci_high"] = float(p["interval"][1])
    return params, metrics
