"""Policies from outside the registry, for ``recaudit audit``: a model bundle on disk and a
remote endpoint, under the same rules as the REST service.

- ``bundle:DIR`` (spec: ``{"kind": "bundle", "params": {"path": "DIR"}}``): the
  ``model.safetensors`` + ``model.json`` that ``recaudit model convert`` writes. It is
  loaded with every check of an upload (nothing unpickled) and matched to the scenario by
  item id before anything runs: a model that does not know every catalog item is refused
  with the count and the first missing ids (exit 2).
- ``remote:URL`` (spec: ``{"kind": "remote", "params": {"url": "URL", ...}}``): a remote
  endpoint (protocol v2 by ids unless ``protocol`` says v1). Its host must be on
  ``RECAUDIT_REMOTE_ALLOWLIST``, and the call limits are the service's
  ``RECAUDIT_REMOTE_*`` settings.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simulator.errors import SpecError

BUNDLE = "bundle"
REMOTE = "remote"
KINDS = (BUNDLE, REMOTE)
#: frozen models keep per-user state only, as the service's uploads (PolicyKind.users_independent)
INDEPENDENT = (BUNDLE,)


def shorthand(text: str) -> dict[str, Any] | None:
    """``bundle:PATH`` / ``remote:URL`` -> a policy spec dict; None for other text."""
    kind, sep, rest = text.strip().partition(":")
    if not sep or kind not in KINDS:
        return None
    if not rest:
        raise SpecError(f"write {kind}:{'PATH' if kind == BUNDLE else 'URL'}")
    if kind == BUNDLE:
        return {"kind": BUNDLE, "params": {"path": rest}}
    return {"kind": REMOTE, "params": {"url": rest}}


def _remote_settings() -> Any:
    from service.config import Settings
    from service.intake import remote_settings

    return remote_settings(Settings.from_env())


def _bundle_files(params: dict[str, Any]) -> tuple[bytes, bytes]:
    from recommenders.recbole import CONFIG_FILE, WEIGHTS_FILE

    extra = sorted(set(params) - {"path"})
    if extra or not isinstance(params.get("path"), str):
        raise SpecError("policy kind 'bundle' takes one parameter, path (a directory)")
    d = Path(params["path"]).expanduser()
    if not d.is_dir():
        raise SpecError(
            f"bundle {d}: no such directory (write bundle:DIR, the --out of "
            "'recaudit model convert')"
        )
    files = []
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (d / name).is_file():
            raise SpecError(f"bundle {d} has no {name}")
        files.append((d / name).read_bytes())
    return files[0], files[1]


def check(spec: Any) -> Callable[[Any], Callable[[], Any] | None]:
    """Check the bundle and remote arms of an audit before anything runs (SpecError:
    exit 2) and return the ``resolve_policy`` that builds their factories."""
    from recommenders.recbole import (
        UploadedModelFactory,
        check_covers_catalog,
        validate_upload,
    )
    from recommenders.remote import RemotePolicyFactory, check_params
    from simulator.catalog import build_catalog

    scenario = spec.scenario_spec()
    bundles: dict[str, tuple[bytes, bytes]] = {}
    remote = None
    for _label, p in spec.arms():
        if p.kind == BUNDLE:
            config, weights = _bundle_files(dict(p.params))
            with tempfile.TemporaryDirectory(prefix="recaudit-bundle-") as tmp:
                validate_upload(config, weights, tmp)  # the service's checks
            catalog = build_catalog(scenario.catalog, scenario.env_seed)
            check_covers_catalog(json.loads(config)["item_tokens"], catalog.item_ids)
            bundles[p.params["path"]] = (config, weights)
        elif p.kind == REMOTE:
            remote = remote or _remote_settings()
            check_params(dict(p.params), remote.allowlist)

    def resolve(p: Any) -> Callable[[], Any] | None:
        if p.kind == BUNDLE:
            config, weights = bundles[p.params["path"]]
            return UploadedModelFactory(config=config, weights=weights, name=p.name)
        if p.kind == REMOTE:
            assert remote is not None
            return RemotePolicyFactory.for_audit(dict(p.params), remote, p.name)
        return None

    return resolve
