"""Uploaded models: the bytes are sniffed (no pickle), validated and loaded as a
:class:`~recommenders.recbole.training.TrainedModel`.
"""

from __future__ import annotations

import hashlib
import json
import struct
import tempfile
from pathlib import Path
from typing import Any

from simulator.errors import SpecError

from .bundle import _MAX_JSON_BYTES, CONFIG_FILE, WEIGHTS_FILE, load_model
from .fence import SUPPORTED_MODELS, _check_depth
from .training import TrainedModel


class UnsupportedUpload(SpecError):
    """An upload that is not the expected file type at all (a pickle, a torch checkpoint,
    not JSON): the service answers 415."""


_PICKLE_PROTOCOLS = tuple(bytes([0x80, p]) for p in range(2, 6))


def sniff_weights(data: bytes) -> None:
    """Refuse, by content, anything but a safetensors file: pickles (``\\x80`` protocol
    header), torch zip checkpoints (``PK\\x03\\x04``) and any other bytes whose first 8
    bytes are not a plausible header length followed by a JSON object. Nothing is
    parsed beyond that."""
    if data[:2] in _PICKLE_PROTOCOLS or (data[:1] in (b"(", b"]", b"}") and b"." in data[-2:]):
        raise UnsupportedUpload("the weights are a Python pickle; upload safetensors weights")
    if data[:4] == b"PK\x03\x04":
        raise UnsupportedUpload(
            "the weights are a zip archive (a torch checkpoint?); upload safetensors weights"
        )
    if len(data) < 10:
        raise UnsupportedUpload("the weights are not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", data[:8])
    if n < 2 or n > len(data) - 8 or not data[8:9] == b"{":
        raise UnsupportedUpload("the weights are not a safetensors file (no safetensors header)")


def sniff_config(data: bytes) -> dict[str, Any]:
    """The config as a JSON object; UnsupportedUpload when it is not UTF-8 JSON at all."""
    if data[:2] in _PICKLE_PROTOCOLS or data[:4] == b"PK\x03\x04":
        raise UnsupportedUpload("the config is a pickle or zip file; upload the JSON model config")
    if len(data) > _MAX_JSON_BYTES:
        raise SpecError("the config is too large")
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise UnsupportedUpload(f"the config is not JSON: {exc}") from None
    except RecursionError:
        raise SpecError("the config is nested too deeply") from None
    _check_depth(meta, "the config")
    if not isinstance(meta, dict):
        raise SpecError("the config must be a JSON object (model.json written by save_model)")
    return meta


def validate_upload(config: bytes, weights: bytes, directory: str | Path) -> dict[str, Any]:
    """Check an uploaded model and write it into ``directory`` (created; the caller
    removes it on failure): the bytes are sniffed first (UnsupportedUpload for pickles,
    torch checkpoints, non-JSON configs), then :func:`load_model` rebuilds it with every
    check (allowed class, settings, SHA-256, tensor names/shapes/dtypes against the item
    and user id maps). Returns a summary (model, type, items, users, SHA-256)."""
    sniff_weights(weights)
    meta = sniff_config(config)
    if meta.get("model") not in SUPPORTED_MODELS:
        raise SpecError(
            f"model class {meta.get('model')!r} is not allowed; allowed: {', '.join(SUPPORTED_MODELS)}"
        )
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_bytes(config)
    (out / WEIGHTS_FILE).write_bytes(weights)
    tm = load_model(out)
    return {
        "model": tm.model_name,
        "model_type": tm.kind,
        "num_items": len(tm.item_tokens) - 1,
        "num_users": len(tm.user_tokens) - 1,
        "sha256": hashlib.sha256(weights).hexdigest(),
        "size_bytes": len(weights) + len(config),
    }


def load_model_bytes(config: bytes, weights: bytes) -> TrainedModel:
    """:func:`load_model` from the two files' contents (through a temporary directory)."""
    with tempfile.TemporaryDirectory(prefix="recaudit-upload-") as tmp:
        (Path(tmp) / CONFIG_FILE).write_bytes(config)
        (Path(tmp) / WEIGHTS_FILE).write_bytes(weights)
        return load_model(tmp)
