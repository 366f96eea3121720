"""A remote black-box policy: an HTTP endpoint, allowed by the operator, that answers
batched observations with slates.

Protocol ``recaudit.remote-policy/v1``. For every step ``t`` the client POSTs, for each
batch of at most ``batch`` users, a JSON :class:`RemoteRequest` and expects a JSON
:class:`RemoteResponse` with one slate per user of the batch::

    POST <url>   Content-Type: application/json
    {"protocol": "recaudit.remote-policy/v1", "session": "3f0c9a1b2d4e5f60", "t": 0,
     "horizon": 50, "num_users": 1000, "num_items": 200, "slate_size": 10,
     "user_offset": 0, "last_items": [-1, -1, ...],
     "item_features": [[...], ...], "item_topics": [...]}

    200 OK   Content-Type: application/json
    {"slates": [[3, 17, ...], ...]}

``session`` names one simulated run (one arm of one replicate); a server may keep state
per session. ``last_items[j]`` is the item user ``user_offset + j`` clicked at step
``t - 1`` (-1: no click, or ``t == 0``). ``item_features`` ([num_items, dim]) and
``item_topics`` are sent at ``t == 0`` only. The response must hold exactly
``len(last_items)`` slates of exactly ``slate_size`` item indices in ``0..num_items-1``.

Safety: the URL's scheme must be http or https, it may carry no user name or password,
and its host (or host:port) must be on the operator's allowlist: all checked before any
connection. Redirects are never followed, every call has a timeout and a bounded number
of retries (connection errors, timeouts and 5xx answers only), the response is read as a
stream and abandoned past ``max_bytes``, and its content is schema-checked.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import httpx
import torch
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from simulator.errors import SpecError
from simulator.policy import PolicyContext
from simulator.types import Feedback, Observation

PROTOCOL = "recaudit.remote-policy/v1"
USER_AGENT = "recaudit-remote-policy/1"


class RemoteRequest(BaseModel):
    """What the service sends to a remote policy for one batch of users at one step."""

    model_config = ConfigDict(extra="forbid")

    protocol: Literal["recaudit.remote-policy/v1"] = Field(
        "recaudit.remote-policy/v1", description="Protocol name and version."
    )
    session: str = Field(..., description="Id of one simulated run (arm x replicate).")
    t: int = Field(..., ge=0, description="Step, from 0.")
    horizon: int = Field(..., ge=0, description="Steps in the run.")
    num_users: int = Field(..., ge=1, description="Users in the whole run.")
    num_items: int = Field(..., ge=1, description="Items in the catalog.")
    slate_size: int = Field(..., ge=1, description="Items to recommend to each user.")
    user_offset: int = Field(..., ge=0, description="Index of the batch's first user.")
    last_items: list[int] = Field(
        ..., description="Item each batch user clicked at step t-1 (-1: none)."
    )
    item_features: list[list[float]] | None = Field(
        None, description="Catalog item vectors [num_items, dim]; sent at t == 0 only."
    )
    item_topics: list[int] | None = Field(
        None, description="Catalog item topics [num_items]; sent at t == 0 only."
    )


class RemoteResponse(BaseModel):
    """What a remote policy answers: one slate per user of the batch, in order."""

    model_config = ConfigDict(extra="forbid")

    slates: list[Annotated[list[StrictInt], Field(min_length=1)]] = Field(
        ..., description="[batch users][slate_size] item indices in 0..num_items-1."
    )


def url_host(url: str) -> tuple[str, int | None]:
    """(host, port) of an http(s) URL without credentials; SpecError otherwise."""
    try:
        u = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise SpecError(f"remote policy URL {url!r} is not a valid URL: {exc}") from None
    if u.scheme not in ("http", "https"):
        raise SpecError(f"remote policy URL {url!r} must use http or https")
    if u.userinfo:
        raise SpecError("remote policy URL must not carry a user name or password")
    if not u.host:
        raise SpecError(f"remote policy URL {url!r} has no host")
    return u.host.lower(), u.port


def check_allowed(url: str, allowlist: Collection[str]) -> None:
    """Refuse a URL whose host is not on the allowlist (entries: ``host`` or
    ``host:port``; IPv6 as ``[::1]:8080``). No connection is made."""
    host, port = url_host(url)
    shown = f"[{host}]" if ":" in host else host
    allowed = {a.strip().lower() for a in allowlist}
    if shown in allowed or host in allowed:
        return
    default = 443 if url.lower().startswith("https") else 80
    if f"{shown}:{port or default}" in allowed:
        return
    if not allowed:
        raise SpecError(
            f"remote policy host {shown} is not allowed: the operator allows no remote hosts "
            "(RECAUDIT_REMOTE_ALLOWLIST)"
        )
    raise SpecError(
        f"remote policy host {shown}{':' + str(port) if port else ''} is not on the operator's "
        f"allowlist ({', '.join(sorted(allowed))})"
    )


@dataclass(frozen=True)
class RemoteSettings:
    """Operator limits for remote calls (never taken from the audit spec)."""

    allowlist: tuple[str, ...] = ()
    timeout_s: float = 10.0
    retries: int = 2
    max_bytes: int = 8 << 20
    batch: int = 1024
    backoff_s: float = 0.2


class RemoteClient:
    """POSTs JSON to one allowed URL with the safety rules above."""

    def __init__(self, url: str, settings: RemoteSettings) -> None:
        check_allowed(url, settings.allowlist)
        self.url = url
        self.settings = settings
        self._client = httpx.Client(
            follow_redirects=False,
            timeout=httpx.Timeout(settings.timeout_s),
            trust_env=False,  # no proxies from the environment
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
        )

    def close(self) -> None:
        self._client.close()

    def post(self, payload: dict[str, Any]) -> Any:
        """The decoded JSON answer; SpecError after the retries are spent."""
        check_allowed(self.url, self.settings.allowlist)
        body = json.dumps(payload, separators=(",", ":")).encode()
        last = ""
        for attempt in range(self.settings.retries + 1):
            if attempt:
                time.sleep(self.settings.backoff_s * 2 ** (attempt - 1))
            try:
                return self._once(body)
            except _Retryable as exc:
                last = str(exc)
        raise SpecError(
            f"remote policy {self.url} failed after {self.settings.retries + 1} attempt(s): {last}"
        )

    def _once(self, body: bytes) -> Any:
        headers = {"Content-Type": "application/json"}
        try:
            with self._client.stream("POST", self.url, content=body, headers=headers) as resp:
                if 300 <= resp.status_code < 400:
                    raise SpecError(
                        f"remote policy {self.url} answered a redirect ({resp.status_code}); "
                        "redirects are not followed"
                    )
                if resp.status_code >= 500:
                    raise _Retryable(f"HTTP {resp.status_code}")
                if resp.status_code != 200:
                    raise SpecError(f"remote policy {self.url} answered HTTP {resp.status_code}")
                ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
                if ctype != "application/json":
                    raise SpecError(
                        f"remote policy {self.url} answered {ctype or 'no content type'}, "
                        "expected application/json"
                    )
                declared = resp.headers.get("content-length")
                cap = self.settings.max_bytes
                if declared and declared.isdigit() and int(declared) > cap:
                    raise SpecError(_too_big(self.url, cap))
                chunks, size = [], 0
                for chunk in resp.iter_bytes():
                    size += len(chunk)
                    if size > cap:
                        raise SpecError(_too_big(self.url, cap))
                    chunks.append(chunk)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None
        try:
            return json.loads(b"".join(chunks))
        except ValueError as exc:
            raise SpecError(f"remote policy {self.url} answered invalid JSON: {exc}") from None


class _Retryable(Exception):
    pass


def _too_big(url: str, cap: int) -> str:
    return f"remote policy {url} answered more than {cap} bytes (the response size cap)"


def parse_slates(data: Any, rows: int, slate_size: int, num_items: int, url: str) -> torch.Tensor:
    """The answer as a [rows, slate_size] long tensor, or SpecError naming what is wrong."""
    try:
        resp = RemoteResponse.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SpecError(
            f"remote policy {url} answered an invalid body at {where or 'top level'}: {first['msg']}"
        ) from None
    if len(resp.slates) != rows or any(len(s) != slate_size for s in resp.slates):
        shape = (len(resp.slates), max((len(s) for s in resp.slates), default=0))
        raise SpecError(
            f"remote policy {url} answered slates of shape {shape}, expected {(rows, slate_size)}"
        )
    out = torch.tensor(resp.slates, dtype=torch.long)
    if out.numel() and (int(out.min()) < 0 or int(out.max()) >= num_items):
        raise SpecError(f"remote policy {url} answered item indices outside 0..{num_items - 1}")
    return out


class RemotePolicy:
    """A :class:`~simulator.policy.Policy` whose slates come from a remote endpoint."""

    oracle = False

    def __init__(self, url: str, settings: RemoteSettings, name: str = "remote") -> None:
        self.url = url
        self.settings = settings
        self.name = name
        self.client = RemoteClient(url, settings)  # refuses a disallowed URL here
        self.last_items: torch.Tensor | None = None
        self.calls = 0

    def reset(self, ctx: PolicyContext) -> None:
        self.ctx = ctx
        self.session = secrets.token_hex(8)
        self.last_items = torch.full((ctx.num_users,), -1, dtype=torch.long)

    def act(self, obs: Observation) -> torch.Tensor:
        ctx = self.ctx
        assert self.last_items is not None
        n, k, num_items = obs.num_users, ctx.slate_size, ctx.catalog.size
        out = torch.empty(n, k, dtype=torch.long)
        batch = self.settings.batch
        for start in range(0, n, batch):
            stop = min(n, start + batch)
            payload: dict[str, Any] = {
                "protocol": PROTOCOL,
                "session": self.session,
                "t": obs.t,
                "horizon": ctx.horizon,
                "num_users": ctx.num_users,
                "num_items": num_items,
                "slate_size": k,
                "user_offset": start,
                "last_items": self.last_items[start:stop].tolist(),
            }
            if obs.t == 0:
                payload["item_features"] = ctx.catalog.features.detach().cpu().tolist()
                payload["item_topics"] = ctx.catalog.topic.detach().cpu().tolist()
            data = self.client.post(payload)
            self.calls += 1
            out[start:stop] = parse_slates(data, stop - start, k, num_items, self.url)
        return out.to(ctx.device)

    def update(self, feedback: Feedback) -> None:
        self.last_items = feedback.item.detach().cpu().long().clone()


@dataclass(frozen=True)
class RemotePolicyFactory:
    """A picklable zero-argument factory (it travels to Ray workers)."""

    url: str
    settings: RemoteSettings = field(default_factory=RemoteSettings)
    name: str = "remote"

    def __call__(self) -> RemotePolicy:
        return RemotePolicy(self.url, self.settings, self.name)
