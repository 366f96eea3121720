"""RecBole's configuration behind a fence: the supported models, the settings a caller
may not change, and :func:`_recbole_env`, which disables RecBole's global side effects
(command-line parsing, ``eval`` of string settings, ``CUDA_VISIBLE_DEVICES``, global RNG
state, logging, TensorBoard files, unpickling of saved datasets or dataloaders, torch's
anomaly detection).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import logging
import random
import threading
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simulator.errors import SpecError
from simulator.threads import torch_threads

#: models this adapter builds, trains, saves, loads and runs as policies (each is tested).
#: LightGCN is refused: it fails on this SciPy ("'dok_matrix' object has no attribute
#: '_update'").
SUPPORTED_MODELS: dict[str, str] = {
    "BPR": "general",
    "GRU4Rec": "sequential",
    "SASRec": "sequential",
}


#: settings that describe a model's inputs; saved with the model-specific ones
_STRUCTURAL_KEYS = (
    "USER_ID_FIELD",
    "ITEM_ID_FIELD",
    "TIME_FIELD",
    "NEG_PREFIX",
    "LIST_SUFFIX",
    "ITEM_LIST_LENGTH_FIELD",
    "MAX_ITEM_LIST_LENGTH",
    "POSITION_FIELD",
)
#: settings a caller may not change: they would write, read (unpickle) or download files
#: outside the run's temporary directory, or leave the CPU
_FORBIDDEN_KEYS = frozenset(
    {
        "model",
        "dataset",
        "data_path",
        "checkpoint_dir",
        "save_dataset",
        "dataset_save_path",
        "save_dataloaders",
        "dataloaders_save_path",
        "log_wandb",
        "gpu_id",
        "use_gpu",
        "local_rank",
        "nproc",
        "world_size",
        "offset",
        "ip",
        "port",
        "benchmark_filename",
        "additional_feat_suffix",
        "worker",
    }
)


class _NullWriter:
    """Stands in for TensorBoard's SummaryWriter (RecBole writes ./log_tensorboard)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


_torch_threads = torch_threads  # torch on N threads for a block (None: unchanged)


_IMPORT_LOCK = threading.Lock()


@functools.cache
def _import_recbole() -> Any:
    """Import RecBole's trainer and its models once, undoing what the import does to the
    process: ``sine.py`` switches torch's anomaly detection on, and some modules draw
    from the global RNGs. Under a lock: two jobs starting at once must not see each
    other's half-done import. Returns ``recbole.trainer.trainer``."""
    with _IMPORT_LOCK:
        anomaly = torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()
        py_state = random.getstate()
        np_state = np.random.get_state()  # noqa: NPY002 - the legacy global RNG
        try:
            with torch.random.fork_rng(devices=[]):
                import recbole.model.sequential_recommender  # noqa: F401 - see above
                import recbole.trainer.trainer as rb_trainer
        finally:
            torch.autograd.set_detect_anomaly(*anomaly)
            random.setstate(py_state)
            np.random.set_state(np_state)  # noqa: NPY002
        return rb_trainer


@contextlib.contextmanager
def _recbole_env(threads: int | None = 1) -> Iterator[None]:
    """Run RecBole code without letting it change the process.

    - the caller's global RNG states (``random``, numpy, torch) and cuDNN flags are
      restored afterwards (RecBole's ``init_seed`` sets them and its samplers draw from
      the legacy numpy RNG);
    - INFO logging (RecBole logs to the root logger) and library warnings are muted;
    - TensorBoard writers are replaced by a no-op (RecBole would create
      ``./log_tensorboard`` in the working directory);
    - torch runs on ``threads`` CPU threads (1 by default: RecBole's many tiny ops run far
      faster single-threaded on a busy 2-core machine; 10x measured here);
    - torch's anomaly detection stays as the caller had it. Importing RecBole's
      sequential models (``sine.py``) switches it on for the whole process, which slows
      every later backward pass, RecBole's own training included; they are imported here,
      once, and the switch undone before RecBole runs.
    """
    rb_trainer = _import_recbole()
    anomaly = torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()
    py_state = random.getstate()
    np_state = np.random.get_state()  # noqa: NPY002 - RecBole draws from the legacy global RNG
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    old_disable = logging.root.manager.disable
    old_tb = rb_trainer.get_tensorboard
    try:
        with (
            torch.random.fork_rng(devices=[]),
            warnings.catch_warnings(),
            _torch_threads(threads),
        ):
            warnings.simplefilter("ignore")
            logging.disable(max(old_disable, logging.INFO))
            rb_trainer.get_tensorboard = lambda logger: _NullWriter()
            yield
    finally:
        torch.autograd.set_detect_anomaly(*anomaly)
        rb_trainer.get_tensorboard = old_tb
        logging.disable(old_disable)
        random.setstate(py_state)
        np.random.set_state(np_state)  # noqa: NPY002
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn


def _literal(value: str) -> Any:
    """RecBole ``eval``s string settings; this reads Python literals only."""
    low = value.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        lit = ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value
    if lit is None or isinstance(lit, (str, int, float, list, tuple, dict, bool)):
        return lit
    return value


@functools.cache
def _config_class() -> type:
    """RecBole's ``Config`` with three fences: no command-line parsing (it would read
    pytest's or the service's ``sys.argv``), no ``eval`` of string settings (literals
    only), and a CPU device without touching ``CUDA_VISIBLE_DEVICES``."""
    from recbole.config import Config

    class SafeConfig(Config):
        def _load_cmd_line(self) -> dict[str, Any]:
            return {}

        def _convert_config_dict(self, config_dict: dict[str, Any]) -> dict[str, Any]:
            return {k: _literal(v) if isinstance(v, str) else v for k, v in config_dict.items()}

        def _init_device(self) -> None:
            cfg = self.final_config_dict
            cfg["gpu_id"] = ""
            cfg["use_gpu"] = False
            cfg["single_spec"] = True
            cfg["local_rank"] = 0
            cfg["device"] = torch.device("cpu")

    return SafeConfig


def _model_kind(model_name: str) -> str:
    try:
        return SUPPORTED_MODELS[model_name]
    except (KeyError, TypeError):
        raise SpecError(
            f"RecBole model {model_name!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_MODELS)}"
        ) from None


@functools.cache
def _model_keys(model_name: str) -> tuple[str, ...]:
    """Settings saved with a model: its RecBole defaults file's keys + input fields."""
    import recbole
    import yaml

    path = Path(recbole.__file__).resolve().parent / "properties" / "model" / f"{model_name}.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return tuple(sorted(set(data) | set(_STRUCTURAL_KEYS)))


def _json_value(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return not isinstance(value, float) or np.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_json_value(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_value(v) for k, v in value.items())
    return False


#: deepest nesting a model.json may have (it needs 3)
_MAX_JSON_DEPTH = 32
#: parameters a model may be built with beyond twice what its weights file holds
_SLACK_PARAMS = 1_000_000


def _check_depth(value: Any, what: str) -> None:
    """Refuse JSON nested deeper than :data:`_MAX_JSON_DEPTH` (walked without recursion,
    so a deep document cannot exhaust the stack of the checks that follow)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > _MAX_JSON_DEPTH:
            raise SpecError(f"{what} is nested too deeply (more than {_MAX_JSON_DEPTH} levels)")
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)


def model_params(meta: Mapping[str, Any]) -> int:
    """A lower bound on the parameters of the model a ``model.json`` describes, from its
    settings and token maps alone (its embedding tables and main weight matrices), so a
    config announcing a huge model is refused before anything is built. SpecError when
    a size setting is not a positive integer."""
    name = str(meta.get("model"))
    _model_kind(name)
    settings = meta.get("settings")
    if not isinstance(settings, dict):
        raise SpecError("settings must be a JSON object of plain values")
    items, users = meta.get("item_tokens"), meta.get("user_tokens")
    n_items = len(items) if isinstance(items, list) else 0
    n_users = len(users) if isinstance(users, list) else 0
    defaults = {
        "embedding_size": 64,
        "hidden_size": 128 if name == "GRU4Rec" else 64,
        "num_layers": 1,
        "n_layers": 2,
        "inner_size": 256,
        "MAX_ITEM_LIST_LENGTH": 50,
    }

    def size(key: str) -> int:
        v = settings.get(key, defaults[key])
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SpecError(f"settings: {key} must be a positive integer, got {v!r}")
        return v

    if name == "BPR":
        return (n_users + n_items) * size("embedding_size")
    if name == "GRU4Rec":
        e, h, layers = size("embedding_size"), size("hidden_size"), size("num_layers")
        return n_items * e + 3 * h * (e + h) + (layers - 1) * 3 * h * 2 * h + h * e
    h, inner, layers = size("hidden_size"), size("inner_size"), size("n_layers")
    return (n_items + size("MAX_ITEM_LIST_LENGTH")) * h + layers * (4 * h * h + 2 * h * inner)


def _base_config(model_name: str) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "show_progress": False,
        "state": "ERROR",
        "reproducibility": True,
        "eval_batch_size": 1 << 20,  # scores per evaluation batch (RecBole: users = this // items)
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]},
    }
    if SUPPORTED_MODELS[model_name] == "sequential":
        cfg["train_neg_sample_args"] = None  # RecBole's CE loss (the default) needs this
    return cfg


def _make_config(model_name: str, dataset_name: str, values: Mapping[str, Any]) -> Any:
    try:
        return _config_class()(model=model_name, dataset=dataset_name, config_dict=dict(values))
    except (ValueError, TypeError, KeyError, NotImplementedError, RuntimeError) as exc:
        raise SpecError(f"RecBole refused the settings of {model_name}: {exc}") from None
