"""A remote black-box policy: an HTTP endpoint, allowed by the operator, that answers
batched observations with slates.

Two protocols; an audit picks one with the ``protocol`` parameter (default ``v2``).

**v2, by ids** (``recaudit.remote-policy/v2``): what a production recommender speaks. For
every step ``t`` and batch of at most ``batch`` users the client POSTs::

    {"protocol": "recaudit.remote-policy/v2", "session": "3f0c9a1b2d4e5f60", "t": 1,
     "horizon": 50, "slate_size": 10,
     "users": [{"id": "sim-9b2f0c4e1a7d3e55", "history": ["1193", "661"]}, ...],
     "catalog": {"item_ids": ["1", "2", ...]}}

and expects ``{"slates": [["50", "181", ...], ...]}``: one slate per user of the batch, in
order, of exactly ``slate_size`` distinct item ids of the scenario's catalog. ``users[j].id``
is a simulated user's id, ``"sim-"`` + 16 hex digits of an HMAC keyed by a secret drawn
for each audit over the run's session, the user's index and the scenario's user id: stable
for one simulated run, never the same in another run or audit, and never a real account's
id (a real id would need the audit's secret). ``history`` holds the user's clicks in this
run, oldest first, as item ids, at most ``history`` of them (parameter, default 20).
``catalog`` is sent at ``t == 0`` only; with the parameter ``features: true`` it also
holds ``item_features`` ([num_items][dim], aligned with ``item_ids``) and ``item_topics``.

**v1, by indices** (``recaudit.remote-policy/v1``, kept for endpoints written for it):
``user_offset``, ``last_items`` (the item index each batch user clicked at ``t - 1``, -1
for none), ``num_users``, ``num_items`` and, at ``t == 0``, ``item_features`` and
``item_topics``; the answer holds slates of item indices in ``0..num_items-1``.

``session`` names one simulated run (one arm of one replicate); a server may keep state
per session.

Safety: the URL's scheme must be http or https, it may carry no user name or password,
and its host (or host:port) must be on the operator's allowlist: all checked before any
connection. Redirects are never followed. Every attempt of a call has a **total**
deadline (``timeout_s``: connecting, sending, the headers and the whole body; a body sent
one byte at a time cannot stretch it), calls are retried a bounded number of times
(connection errors, timeouts and 5xx answers only), and an audit's remote calls all end
by its deadline (``audit_s`` after the audit started). A call in flight is abandoned as
soon as the audit is cancelled (see :func:`stop_calls_when`). The response is read as a
stream and abandoned past ``max_bytes``; its JSON is parsed with recursion errors caught
and schema-checked: wrong lengths, unknown ids or indices and repeated items in a slate
are refused with the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import httpx
import torch
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from simulator.errors import SpecError
from simulator.policy import PolicyContext
from simulator.types import Feedback, Observation

PROTOCOL = "recaudit.remote-policy/v1"
PROTOCOL_V2 = "recaudit.remote-policy/v2"
PROTOCOLS = {"v1": PROTOCOL, "v2": PROTOCOL_V2}
DEFAULT_PROTOCOL = "v2"
USER_AGENT = "recaudit-remote-policy/2"
#: a simulated user's id: this prefix and 16 hex digits
SIM_PREFIX = "sim-"
DEFAULT_HISTORY = 20
MAX_HISTORY = 200
#: the parameters a remote policy takes in an audit spec
PARAMS = ("url", "protocol", "history", "features")


class RemoteRequest(BaseModel):
    """Protocol v1: what the service sends for one batch of users at one step."""

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


class RemoteUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., description="Simulated user id ('sim-' + 16 hex digits).")
    history: list[str] = Field(..., description="Clicked item ids in this run, oldest first.")


class RemoteCatalog(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_ids: list[str] = Field(..., description="The scenario's item ids.")
    item_features: list[list[float]] | None = Field(
        None, description="Item vectors aligned with item_ids (parameter features: true)."
    )
    item_topics: list[int] | None = Field(None, description="Item topics (features: true).")


class RemoteRequestV2(BaseModel):
    """Protocol v2: what the service sends for one batch of users at one step."""

    model_config = ConfigDict(extra="forbid")

    protocol: Literal["recaudit.remote-policy/v2"] = Field(
        "recaudit.remote-policy/v2", description="Protocol name and version."
    )
    session: str = Field(..., description="Id of one simulated run (arm x replicate).")
    t: int = Field(..., ge=0, description="Step, from 0.")
    horizon: int = Field(..., ge=0, description="Steps in the run.")
    slate_size: int = Field(..., ge=1, description="Items to recommend to each user.")
    users: list[RemoteUser]
    catalog: RemoteCatalog | None = Field(None, description="Sent at t == 0 only.")


class RemoteResponse(BaseModel):
    """Protocol v1 answer: one slate of item indices per user of the batch, in order."""

    model_config = ConfigDict(extra="forbid")

    slates: list[Annotated[list[StrictInt], Field(min_length=1)]] = Field(
        ..., description="[batch users][slate_size] item indices in 0..num_items-1."
    )


class RemoteResponseV2(BaseModel):
    """Protocol v2 answer: one slate of item ids per user of the batch, in order."""

    model_config = ConfigDict(extra="forbid")

    slates: list[Annotated[list[StrictStr], Field(min_length=1)]] = Field(
        ..., description="[batch users][slate_size] distinct item ids of the catalog."
    )


# ------------------------------------------------------------------------ URLs
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


def check_params(params: dict[str, Any], allowlist: Collection[str]) -> dict[str, Any]:
    """A remote policy's parameters, checked (no connection is made): ``url`` (required,
    allowlisted), ``protocol`` ('v1' or 'v2', default 'v2'), ``history`` (v2: clicks sent
    per user, 0..200, default 20), ``features`` (v2: send item vectors, default false)."""
    extra = sorted(set(params) - set(PARAMS))
    if extra:
        raise SpecError(
            f"policy kind 'remote' takes no parameter(s) {', '.join(extra)} "
            f"(it takes {', '.join(PARAMS)})"
        )
    url = params.get("url")
    if not isinstance(url, str):
        raise SpecError("policy kind 'remote' needs parameter 'url' (a string)")
    check_allowed(url, allowlist)
    protocol = params.get("protocol", DEFAULT_PROTOCOL)
    if protocol not in PROTOCOLS:
        raise SpecError(f"remote policy protocol must be 'v1' or 'v2', got {protocol!r}")
    history = params.get("history", DEFAULT_HISTORY)
    if isinstance(history, bool) or not isinstance(history, int):
        raise SpecError(f"remote policy history must be an integer, got {history!r}")
    if not 0 <= history <= MAX_HISTORY:
        raise SpecError(f"remote policy history must be in 0..{MAX_HISTORY}, got {history}")
    features = params.get("features", False)
    if not isinstance(features, bool):
        raise SpecError(f"remote policy features must be true or false, got {features!r}")
    if protocol == "v1" and ("history" in params or "features" in params):
        raise SpecError("remote policy parameters history and features are protocol v2 only")
    return {"url": url, "protocol": protocol, "history": history, "features": features}


# ----------------------------------------------------------------- cancellation
_local = threading.local()


class CallCancelled(SpecError):
    """A remote call abandoned because its audit was cancelled."""


@contextlib.contextmanager
def stop_calls_when(
    should_stop: Callable[[], bool] | None, error: type[BaseException] = CallCancelled
) -> Iterator[None]:
    """Within the block, remote calls made by this thread are abandoned, raising
    ``error``, as soon as ``should_stop()`` turns true (checked every 50 ms while a call
    waits). On Ray, a cancelled task's worker is ended, which ends its calls too."""
    old = getattr(_local, "stop", None)
    _local.stop = None if should_stop is None else (should_stop, error)
    try:
        yield
    finally:
        _local.stop = old


# ----------------------------------------------------------------------- client
@dataclass(frozen=True)
class RemoteSettings:
    """Operator limits for remote calls (never taken from the audit spec).

    ``timeout_s`` bounds each attempt of a call from start to the last byte; ``audit_s``
    bounds all of an audit's calls (they must end by ``audit_s`` after it started)."""

    allowlist: tuple[str, ...] = ()
    timeout_s: float = 10.0
    retries: int = 2
    max_bytes: int = 8 << 20
    batch: int = 1024
    backoff_s: float = 0.2
    audit_s: float = 3600.0


class _Retryable(Exception):
    pass


def _too_big(url: str, cap: int) -> str:
    return f"remote policy {url} answered more than {cap} bytes (the response size cap)"


class RemoteClient:
    """POSTs JSON to one allowed URL with the safety rules above. ``not_after`` (a
    ``time.time()`` value) is when every call must have ended."""

    def __init__(self, url: str, settings: RemoteSettings, not_after: float | None = None):
        check_allowed(url, settings.allowlist)
        self.url = url
        self.settings = settings
        self.not_after = not_after

    def close(self) -> None:
        return None

    def post(self, payload: dict[str, Any]) -> Any:
        """The decoded JSON answer; SpecError after the retries are spent, past the
        audit's deadline or when the audit is cancelled."""
        check_allowed(self.url, self.settings.allowlist)
        body = json.dumps(payload, separators=(",", ":")).encode()
        last = ""
        for attempt in range(self.settings.retries + 1):
            if attempt:
                self._sleep(self.settings.backoff_s * 2 ** (attempt - 1))
            try:
                return self._attempt(body)
            except _Retryable as exc:
                last = str(exc)
        raise SpecError(
            f"remote policy {self.url} failed after {self.settings.retries + 1} attempt(s): {last}"
        )

    def _left(self) -> float:
        """Seconds this audit may still spend on remote calls."""
        if self.not_after is None:
            return float("inf")
        left = self.not_after - time.time()
        if left <= 0:
            raise SpecError(
                f"remote policy {self.url}: the audit's remote time is spent (every call must "
                f"end within {self.settings.audit_s:g} s of the audit's start)"
            )
        return left

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + min(seconds, self._left())
        while (now := time.monotonic()) < end:
            self._check_stop()
            time.sleep(min(0.05, end - now))

    @staticmethod
    def _check_stop() -> None:
        stop = getattr(_local, "stop", None)
        if stop is not None and stop[0]():
            raise stop[1]("the audit was cancelled during a remote call")

    def _attempt(self, body: bytes) -> Any:
        """One attempt, on a helper thread, waited for at most ``timeout_s`` (and the
        audit's remaining time); on expiry or cancellation its connection is closed and
        the attempt abandoned."""
        budget = min(self.settings.timeout_s, self._left())
        done = threading.Event()
        box: dict[str, Any] = {}
        client = httpx.Client(
            follow_redirects=False,
            timeout=httpx.Timeout(budget),
            trust_env=False,  # no proxies from the environment
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
        )

        def run() -> None:
            try:
                box["data"] = self._once(client, body, box)
            except BaseException as exc:  # handed to the waiting thread
                box["error"] = exc
            finally:
                done.set()

        worker = threading.Thread(target=run, name="recaudit-remote-call", daemon=True)
        end = time.monotonic() + budget
        worker.start()
        try:
            while not done.wait(min(0.05, max(0.0, end - time.monotonic()))):
                self._check_stop()
                if time.monotonic() >= end:
                    box["abandoned"] = True
                    if self.not_after is not None and time.time() >= self.not_after:
                        self._left()  # raises: the audit's remote time is spent
                    raise _Retryable(f"no complete answer within {budget:g} s (the call deadline)")
        except BaseException:
            box["abandoned"] = True
            _close(box.get("response"), client)
            raise
        client.close()
        if "error" in box:
            raise box["error"]
        return box["data"]

    def _once(self, client: httpx.Client, body: bytes, box: dict[str, Any]) -> Any:
        headers = {"Content-Type": "application/json"}
        try:
            with client.stream("POST", self.url, content=body, headers=headers) as resp:
                box["response"] = resp
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
                    if box.get("abandoned"):
                        return None
                    size += len(chunk)
                    if size > cap:
                        raise SpecError(_too_big(self.url, cap))
                    chunks.append(chunk)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None
        return decode_json(b"".join(chunks), self.url)


def _close(resp: Any, client: httpx.Client) -> None:
    """Close an abandoned attempt's connection (from the waiting thread)."""
    with contextlib.suppress(Exception):
        stream = resp.stream if resp is not None else None
        if stream is not None:
            stream.close()
    with contextlib.suppress(Exception):
        client.close()


def decode_json(data: bytes, url: str) -> Any:
    """JSON text -> Python, with every parse failure (including nesting deep enough to
    exhaust the parser's recursion) a SpecError naming the endpoint."""
    try:
        return json.loads(data)
    except RecursionError:
        raise SpecError(f"remote policy {url} answered JSON nested too deeply") from None
    except ValueError as exc:
        raise SpecError(f"remote policy {url} answered invalid JSON: {exc}") from None


# ----------------------------------------------------------------------- parsing
def _validated(model: type[BaseModel], data: Any, url: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SpecError(
            f"remote policy {url} answered an invalid body at {where or 'top level'}: {first['msg']}"
        ) from None
    except RecursionError:
        raise SpecError(f"remote policy {url} answered JSON nested too deeply") from None


def _check_shape(slates: list[list[Any]], rows: int, slate_size: int, url: str) -> None:
    if len(slates) != rows or any(len(s) != slate_size for s in slates):
        bad = next(
            (j for j, s in enumerate(slates) if len(s) != slate_size), min(len(slates), rows)
        )
        raise SpecError(
            f"remote policy {url} answered {len(slates)} slate(s) for {rows} user(s) of "
            f"{slate_size} items each (first wrong: slate {bad}"
            + (f", {len(slates[bad])} items)" if bad < len(slates) else ", missing)")
        )


def _check_distinct(slates: list[list[Any]], url: str, offset: int) -> None:
    for j, s in enumerate(slates):
        seen: set[Any] = set()
        for x in s:
            if x in seen:
                raise SpecError(
                    f"remote policy {url} answered a slate that repeats item {x!r} "
                    f"(user {offset + j} of the run)"
                )
            seen.add(x)


def parse_slates(
    data: Any, rows: int, slate_size: int, num_items: int, url: str, offset: int = 0
) -> torch.Tensor:
    """Protocol v1: the answer as a [rows, slate_size] long tensor, or SpecError naming
    what is wrong (shape, indices out of range, an item repeated in a slate)."""
    resp = _validated(RemoteResponse, data, url)
    _check_shape(resp.slates, rows, slate_size, url)
    bad = [x for s in resp.slates for x in s if not 0 <= x < num_items]
    if bad:
        raise SpecError(
            f"remote policy {url} answered {len(bad)} item indices outside 0..{num_items - 1} "
            f"(first: {bad[0]})"
        )
    _check_distinct(resp.slates, url, offset)
    return torch.tensor(resp.slates, dtype=torch.long)


def parse_id_slates(
    data: Any, rows: int, slate_size: int, index: dict[str, int], url: str, offset: int = 0
) -> torch.Tensor:
    """Protocol v2: slates of item ids -> [rows, slate_size] item indices, or SpecError
    naming what is wrong (shape, ids not in the catalog, an item repeated in a slate)."""
    resp = _validated(RemoteResponseV2, data, url)
    _check_shape(resp.slates, rows, slate_size, url)
    unknown = [x for s in resp.slates for x in s if x not in index]
    if unknown:
        first = list(dict.fromkeys(unknown))[:5]
        raise SpecError(
            f"remote policy {url} answered {len(unknown)} item id(s) that are not in the "
            f"scenario's catalog (first: {', '.join(map(repr, first))})"
        )
    _check_distinct(resp.slates, url, offset)
    return torch.tensor([[index[x] for x in s] for s in resp.slates], dtype=torch.long)


# ----------------------------------------------------------------------- policy
def sim_user_ids(salt: str, session: str, user_ids: tuple[str, ...]) -> list[str]:
    """The simulated users' ids sent to a remote policy: ``"sim-"`` + 16 hex digits of
    HMAC-SHA256(salt, session, index, scenario user id); distinct within a run."""
    key = salt.encode()
    out = [
        SIM_PREFIX
        + hmac.new(key, f"{session}\x00{b}\x00{u}".encode(), hashlib.sha256).hexdigest()[:16]
        for b, u in enumerate(user_ids)
    ]
    if len(set(out)) != len(out):  # pragma: no cover - 2^-64 per pair
        raise SpecError("simulated user ids collided; run the audit again")
    return out


class RemotePolicy:
    """A :class:`~simulator.policy.Policy` whose slates come from a remote endpoint."""

    oracle = False

    def __init__(
        self,
        url: str,
        settings: RemoteSettings,
        name: str = "remote",
        *,
        protocol: str = DEFAULT_PROTOCOL,
        history: int = DEFAULT_HISTORY,
        features: bool = False,
        salt: str | None = None,
        not_after: float | None = None,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise SpecError(f"remote policy protocol must be 'v1' or 'v2', got {protocol!r}")
        self.url = url
        self.settings = settings
        self.name = name
        self.protocol = protocol
        self.history = int(history)
        self.features = bool(features)
        self.salt = salt or secrets.token_hex(16)
        self.client = RemoteClient(url, settings, not_after)  # refuses a disallowed URL here
        self.last_items: torch.Tensor | None = None
        self.calls = 0

    def reset(self, ctx: PolicyContext) -> None:
        self.ctx = ctx
        self.session = secrets.token_hex(8)
        self.last_items = torch.full((ctx.num_users,), -1, dtype=torch.long)
        if self.protocol == "v2":
            self.item_ids = list(ctx.catalog.item_ids)
            self.index = {x: i for i, x in enumerate(self.item_ids)}
            self.sim_ids = sim_user_ids(self.salt, self.session, ctx.user_ids)
            self.recent = torch.full((ctx.num_users, max(1, self.history)), -1, dtype=torch.long)

    def boundary(self) -> dict[str, Any]:
        """What crossed the boundary, for the report."""
        ctx = self.ctx
        if self.protocol == "v1":
            rule = (
                "protocol v1: users by index (user_offset + j), items by catalog index "
                "(0..num_items-1), item vectors sent"
            )
        else:
            rule = (
                f"protocol v2: users as per-run ids '{SIM_PREFIX}<hmac>' (salted per audit), "
                f"each with its last {self.history} clicks as item ids; slates of the "
                "catalog's item ids, any other id refused"
                + ("; item features sent" if self.features else "; no item features sent")
            )
        return {
            "kind": PROTOCOLS[self.protocol],
            "rule": rule,
            "catalog_items": ctx.catalog.size,
            "users": ctx.num_users,
            "cold_users": 0,
        }

    def act(self, obs: Observation) -> torch.Tensor:
        ctx = self.ctx
        n, k = obs.num_users, ctx.slate_size
        out = torch.empty(n, k, dtype=torch.long)
        batch = self.settings.batch
        for start in range(0, n, batch):
            stop = min(n, start + batch)
            if self.protocol == "v1":
                payload = self._payload_v1(obs.t, start, stop)
            else:
                payload = self._payload_v2(obs.t, start, stop)
            data = self.client.post(payload)
            self.calls += 1
            if self.protocol == "v1":
                out[start:stop] = parse_slates(
                    data, stop - start, k, ctx.catalog.size, self.url, start
                )
            else:
                out[start:stop] = parse_id_slates(
                    data, stop - start, k, self.index, self.url, start
                )
        return out.to(ctx.device)

    def _payload_v1(self, t: int, start: int, stop: int) -> dict[str, Any]:
        ctx = self.ctx
        assert self.last_items is not None
        payload: dict[str, Any] = {
            "protocol": PROTOCOL,
            "session": self.session,
            "t": t,
            "horizon": ctx.horizon,
            "num_users": ctx.num_users,
            "num_items": ctx.catalog.size,
            "slate_size": ctx.slate_size,
            "user_offset": start,
            "last_items": self.last_items[start:stop].tolist(),
        }
        if t == 0:
            payload["item_features"] = ctx.catalog.features.detach().cpu().tolist()
            payload["item_topics"] = ctx.catalog.topic.detach().cpu().tolist()
        return payload

    def _payload_v2(self, t: int, start: int, stop: int) -> dict[str, Any]:
        ctx = self.ctx
        ids = self.item_ids
        users = []
        for b, row in zip(range(start, stop), self.recent[start:stop].tolist(), strict=True):
            hist = [ids[i] for i in row if i >= 0] if self.history else []
            users.append({"id": self.sim_ids[b], "history": hist})
        payload: dict[str, Any] = {
            "protocol": PROTOCOL_V2,
            "session": self.session,
            "t": t,
            "horizon": ctx.horizon,
            "slate_size": ctx.slate_size,
            "users": users,
        }
        if t == 0:
            catalog: dict[str, Any] = {"item_ids": ids}
            if self.features:
                catalog["item_features"] = ctx.catalog.features.detach().cpu().tolist()
                catalog["item_topics"] = ctx.catalog.topic.detach().cpu().tolist()
            payload["catalog"] = catalog
        return payload

    def update(self, feedback: Feedback) -> None:
        item = feedback.item.detach().cpu().long().clone()
        self.last_items = item
        if self.protocol == "v2" and self.history:
            users = torch.nonzero(item >= 0).flatten()
            self.recent[users] = torch.cat([self.recent[users, 1:], item[users, None]], dim=1)


@dataclass(frozen=True)
class RemotePolicyFactory:
    """A picklable zero-argument factory (it travels to Ray workers). ``salt`` is the
    audit's secret for simulated user ids; ``not_after`` when its remote calls must end."""

    url: str
    settings: RemoteSettings = field(default_factory=RemoteSettings)
    name: str = "remote"
    protocol: str = DEFAULT_PROTOCOL
    history: int = DEFAULT_HISTORY
    features: bool = False
    salt: str = field(default_factory=lambda: secrets.token_hex(16))
    not_after: float | None = None

    def __call__(self) -> RemotePolicy:
        return RemotePolicy(
            self.url,
            self.settings,
            self.name,
            protocol=self.protocol,
            history=self.history,
            features=self.features,
            salt=self.salt,
            not_after=self.not_after,
        )

    @classmethod
    def for_audit(cls, params: dict[str, Any], settings: RemoteSettings, name: str) -> Any:
        """The factory of one audit's remote arm: checked params, a fresh salt and the
        audit's remote deadline starting now."""
        p = check_params(params, settings.allowlist)
        return cls(
            url=p["url"],
            settings=settings,
            name=name,
            protocol=p["protocol"],
            history=p["history"],
            features=p["features"],
            not_after=time.time() + settings.audit_s,
        )
