"""A trained model as files: safetensors weights plus a JSON file naming the model
class, the settings that rebuild it and the token <-> id maps. Loading checks every
tensor name, shape and dtype and never unpickles (no ``torch.load``, no ``pickle``).
"""

from __future__ import annotations

import hashlib
import json
import struct
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simulator.errors import SpecError

from .atomic import PAD, _check_name
from .fence import (
    _SLACK_PARAMS,
    SUPPORTED_MODELS,
    _base_config,
    _check_depth,
    _json_value,
    _make_config,
    _model_keys,
    _model_kind,
    _recbole_env,
    model_params,
)
from .training import TrainedModel

FORMAT = "recaudit-recbole-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model.json"


_MAX_JSON_BYTES = 256 << 20
_MAX_HEADER_BYTES = 100 << 20


def save_model(trained: TrainedModel, directory: str | Path) -> Path:
    """Write ``model.safetensors`` (weights) and ``model.json`` (class, settings, token
    maps, the weights' SHA-256) into ``directory``; returns the directory."""
    return _write_bundle(
        directory,
        model_name=trained.model_name,
        dataset_name=trained.dataset_name,
        settings=trained.settings,
        state_dict=trained.model.state_dict(),
        item_tokens=trained.item_tokens,
        user_tokens=trained.user_tokens,
    )


def _write_bundle(
    directory: str | Path,
    *,
    model_name: str,
    dataset_name: str,
    settings: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    item_tokens: Sequence[str],
    user_tokens: Sequence[str],
) -> Path:
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": FORMAT})
    import recbole

    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model": model_name,
        "model_type": SUPPORTED_MODELS[model_name],
        "recbole_version": recbole.__version__,
        "dataset": dataset_name,
        "settings": dict(settings),
        "item_tokens": list(item_tokens),
        "user_tokens": list(user_tokens),
        "weights_sha256": _sha256(out / WEIGHTS_FILE),
    }
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return out


def convert_checkpoint(
    checkpoint: str | Path, directory: str | Path, *, data_path: str | Path | None = None
) -> dict[str, Any]:
    """Turn a RecBole checkpoint (the ``.pth`` file ``trainer.fit(saved=True)`` writes)
    into the safetensors + JSON bundle that :func:`load_model` and the service accept.

    **This unpickles the checkpoint** (``torch.load(weights_only=False)``: RecBole saves
    its Config object in it), which can run arbitrary code: it is for a model's owner, on
    their own machine, with their own file. The service never calls it.

    A checkpoint holds no id maps, so the dataset is rebuilt as RecBole's own
    ``load_data_and_model`` does (``create_dataset`` on the checkpoint's config, reading
    the atomic files at the recorded ``data_path``, or at ``data_path`` when given: the
    directory that holds ``<dataset>.inter``) and its user and item token maps are kept
    in the bundle: the model keeps its own ids. No saved dataset is ever loaded. The
    written bundle is then loaded back with every check of :func:`load_model`. Returns a
    summary (model, dataset, item and user counts, the first tokens, the SHA-256).
    """
    src = Path(checkpoint)
    if not src.is_file():
        raise SpecError(f"checkpoint not found: {src}")
    with tempfile.TemporaryDirectory(prefix="recaudit-convert-") as tmp, _recbole_env(None):
        from recbole.data import create_dataset

        try:
            ckpt = torch.load(src, map_location="cpu", weights_only=False)
        except Exception as exc:  # any unpickling failure: not a checkpoint we can read
            raise SpecError(f"cannot read {src} as a RecBole checkpoint: {exc}") from None
        if not isinstance(ckpt, dict) or not {"config", "state_dict"} <= set(ckpt):
            raise SpecError(
                f"{src} is not a RecBole checkpoint (expected a dict with 'config' and "
                "'state_dict', as trainer.fit(saved=True) writes)"
            )
        config = ckpt["config"]
        try:
            name = str(config["model"])
            dataset_name = str(config["dataset"])
        except (KeyError, TypeError):
            raise SpecError(f"{src}: the checkpoint's config names no model or dataset") from None
        _model_kind(name)
        _check_name(dataset_name)
        if ckpt.get("other_parameter"):
            raise SpecError(f"{src}: {name} with extra non-tensor parameters is not supported")
        if data_path is not None:
            config["data_path"] = str(Path(data_path).resolve())
        inter = Path(str(config["data_path"])) / f"{dataset_name}.inter"
        if not inter.is_file():
            raise SpecError(
                f"the training data {inter} is not there: give --data-path, the directory that "
                f"holds {dataset_name}.inter"
            )
        # never load (unpickle) a saved dataset, never write one
        config["checkpoint_dir"] = tmp
        config["dataset_save_path"] = None
        config["save_dataset"] = False
        try:
            dataset = create_dataset(config)
        except (ValueError, KeyError, IndexError, OSError) as exc:
            raise SpecError(f"RecBole could not rebuild the dataset from {inter}: {exc}") from None
        items = [str(t) for t in dataset.field2id_token[config["ITEM_ID_FIELD"]]]
        users = [str(t) for t in dataset.field2id_token[config["USER_ID_FIELD"]]]
        settings = {k: config[k] for k in _model_keys(name) if k in config}
        bad = sorted(k for k, v in settings.items() if not _json_value(v))
        if bad:
            raise SpecError(f"{src}: settings {bad} are not plain JSON values")
        state = ckpt["state_dict"]
        if not isinstance(state, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise SpecError(f"{src}: 'state_dict' is not a mapping of tensors")
    out = _write_bundle(
        directory,
        model_name=name,
        dataset_name=dataset_name,
        settings=settings,
        state_dict=state,
        item_tokens=items,
        user_tokens=users,
    )
    tm = load_model(out)  # the same checks as an upload
    return {
        "model": tm.model_name,
        "model_type": tm.kind,
        "dataset": dataset_name,
        "num_items": len(items) - 1,
        "num_users": len(users) - 1,
        "item_tokens_head": items[1:6],
        "user_tokens_head": users[1:6],
        "sha256": _sha256(out / WEIGHTS_FILE),
        "out": str(out),
    }


class _TokenMapDataset:
    """The part of a RecBole Dataset that model constructors read (``num``), rebuilt from
    the saved token maps."""

    def __init__(self, maps: Mapping[str, list[str]]) -> None:
        self.field2id_token = {f: np.array(t) for f, t in maps.items()}
        self.field2token_id = {f: {x: i for i, x in enumerate(t)} for f, t in maps.items()}

    def num(self, field: str) -> int:
        if field not in self.field2id_token:
            raise SpecError(f"the saved model has no token map for field {field!r}")
        return len(self.field2id_token[field])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_tokens(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not value or value[0] != PAD:
        raise SpecError(f"{what} must be a list of tokens starting with {PAD!r}")
    if not all(isinstance(t, str) for t in value) or len(set(value)) != len(value):
        raise SpecError(f"{what} must be distinct strings")
    return value


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file after checking that it is one: an 8-byte little-endian
    header length, then a JSON header that fits in the file. Pickles and torch zip
    checkpoints fail the check before any parser sees them."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SpecError(f"{path.name} is not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > min(_MAX_HEADER_BYTES, size - 8):
            raise SpecError(f"{path.name} is not a safetensors file (bad header length)")
        header = f.read(n)
    if not header.lstrip().startswith(b"{"):
        raise SpecError(f"{path.name} is not a safetensors file (header is not JSON)")
    try:
        json.loads(header)
        return load_file(str(path), device="cpu")
    except (SafetensorError, ValueError, OSError) as exc:
        raise SpecError(f"{path.name} is not a valid safetensors file: {exc}") from None
    except RecursionError:
        raise SpecError(f"{path.name}: its header is nested too deeply") from None


def load_model(directory: str | Path) -> TrainedModel:
    """Rebuild a model saved by :func:`save_model`; never unpickles.

    Refuses (SpecError, nothing loaded) a JSON that is malformed or names an unsupported
    class or unknown settings, a weights file that is not safetensors or does not match
    the recorded SHA-256, and missing, extra, mis-shaped or mis-typed tensors.
    """
    src = Path(directory)
    cfg_path, w_path = src / CONFIG_FILE, src / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise SpecError(f"model file not found: {p}")
    if cfg_path.stat().st_size > _MAX_JSON_BYTES:
        raise SpecError(f"{cfg_path.name} is too large")
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SpecError(f"{cfg_path.name} is not JSON: {exc}") from None
    except RecursionError:
        raise SpecError(f"{cfg_path.name} is nested too deeply") from None
    _check_depth(meta, cfg_path.name)
    expected = {
        "format",
        "version",
        "model",
        "model_type",
        "recbole_version",
        "dataset",
        "settings",
        "item_tokens",
        "user_tokens",
        "weights_sha256",
    }
    if not isinstance(meta, dict) or set(meta) != expected:
        got = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
        raise SpecError(f"{cfg_path.name} must have exactly the keys {sorted(expected)}, got {got}")
    if meta["format"] != FORMAT or meta["version"] != FORMAT_VERSION:
        raise SpecError(f"{cfg_path.name} is not a {FORMAT} v{FORMAT_VERSION} file")
    name = meta["model"]
    kind = _model_kind(name)
    if meta["model_type"] != kind:
        raise SpecError(f"{cfg_path.name}: {name} is a {kind} model, not {meta['model_type']}")
    _check_name(meta["dataset"])
    settings = meta["settings"]
    allowed = set(_model_keys(name))
    if not isinstance(settings, dict) or not _json_value(settings):
        raise SpecError(f"{cfg_path.name}: settings must be a JSON object of plain values")
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise SpecError(f"{cfg_path.name}: settings {unknown} are not {name} settings")
    items = _check_tokens(meta["item_tokens"], "item_tokens")
    users = _check_tokens(meta["user_tokens"], "user_tokens")
    need = model_params(meta)
    holds = max(0, w_path.stat().st_size - 8) // 4  # float32 values the file could hold
    # building a model costs its parameters: refuse before building one far larger than
    # its weights (a small mismatch is left to the precise shape check below)
    if need > 2 * holds + _SLACK_PARAMS:
        raise SpecError(
            f"{cfg_path.name}: its settings imply at least {need:,} parameters but "
            f"{w_path.name} holds {holds:,} float32 values at most"
        )
    if _sha256(w_path) != meta["weights_sha256"]:
        raise SpecError(f"{w_path.name} does not match the SHA-256 recorded in {cfg_path.name}")
    tensors = _read_safetensors(w_path)

    with _recbole_env(threads=None):
        from recbole.utils import get_model

        config = _make_config(
            name,
            "recaudit-saved-model",
            {**_base_config(name), **settings, "train_neg_sample_args": None},
        )
        maps = {config["USER_ID_FIELD"]: users, config["ITEM_ID_FIELD"]: items}
        try:
            model = get_model(name)(config, _TokenMapDataset(maps))
        except (ValueError, TypeError, KeyError, RuntimeError, NotImplementedError) as exc:
            raise SpecError(f"cannot build {name} from {cfg_path.name}: {exc}") from None
    want = model.state_dict()
    missing = sorted(set(want) - set(tensors))
    extra = sorted(set(tensors) - set(want))
    if missing or extra:
        raise SpecError(f"{w_path.name}: missing tensors {missing}, unexpected tensors {extra}")
    wrong = [
        f"{k}: {tuple(tensors[k].shape)} {tensors[k].dtype} (expected {tuple(v.shape)} {v.dtype})"
        for k, v in want.items()
        if tensors[k].shape != v.shape or tensors[k].dtype != v.dtype
    ]
    if wrong:
        raise SpecError(f"{w_path.name}: wrong tensor shapes/dtypes: {'; '.join(wrong)}")
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise SpecError(f"{w_path.name}: tensors {bad} hold NaN or infinite values")
    model.load_state_dict(tensors, strict=True)
    model.eval()
    return TrainedModel(
        model_name=name,
        model=model,
        config=config,
        dataset_name=meta["dataset"],
        item_tokens=items,
        user_tokens=users,
        settings=dict(settings),
    )
