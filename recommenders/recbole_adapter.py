"""RecBole in the loop: the only module of recaudit that imports ``recbole``.

What is here, in the order of a workflow:

1. **Atomic files.** :func:`write_atomic_files` writes an interaction log (a DataFrame with
   columns ``user``, ``item``, ``timestamp``) as RecBole atomic files: ``<name>.inter``
   (``user_id:token item_id:token timestamp:float``) and, when item topics are known,
   ``<name>.item`` (``item_id:token genre:token_seq``), which also makes every listed item
   known to RecBole even if nobody clicked it. :func:`read_atomic` reads them back;
   :func:`load_ml100k` reads the MovieLens 100k files bundled with RecBole (nothing is
   ever downloaded); :func:`feedback_to_frame` turns simulator feedback into a log.
2. **Training.** :func:`train_model` runs RecBole's own pipeline (``Config``,
   ``create_dataset``, ``data_preparation``, ``get_model``, ``get_trainer``,
   ``fit(saved=False)``, ``evaluate(load_best_model=False)``) without
   ``recbole.quick_start`` (it imports ``ray.tune``). RecBole's global side effects are
   fenced (see :func:`_recbole_env`): command-line parsing, ``eval`` of string settings,
   ``CUDA_VISIBLE_DEVICES``, global RNG state, logging, TensorBoard files in the working
   directory, and unpickling of saved datasets or dataloaders are all disabled.
3. **Saving.** :func:`save_model` writes the weights as safetensors plus a JSON file
   naming the model class, the settings that rebuild it and the token <-> id maps.
   :func:`load_model` rebuilds the model from RecBole's defaults and the JSON settings,
   checks every tensor name, shape and dtype, then ``load_state_dict(strict=True)``. It
   never unpickles (no ``torch.load``, no ``pickle``).
4. **The policy.** :class:`RecBolePolicy` shows each simulated user the top-k catalog
   items by the model's scores, logs clicks as interactions and retrains every ``R``
   steps on the accumulated log: the feedback loop of Chaney, Stewart and Engelhardt
   (RecSys 2018).
5. **Scenario data.** :func:`train_embeddings` learns user and item embeddings from a
   log, for ``recommenders.derive`` (``recaudit scenario derive``), which also derives the
   ``movielens-100k-v1`` scenario's catalog and population.

A policy retrained in the loop logs simulator item ``i`` as token ``str(i)`` and user ``b``
as ``str(b)`` (its own log); a frozen model trained elsewhere is matched by the catalog's
item ids and the population's user ids. RecBole runs on the CPU here.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import functools
import hashlib
import json
import logging
import math
import random
import re
import struct
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from simulator.errors import SpecError
from simulator.logs import read_atomic
from simulator.policy import SCORE_BLOCK, PolicyContext
from simulator.threads import torch_threads
from simulator.types import Feedback, Observation, default_ids

#: models this adapter builds, trains, saves, loads and runs as policies (each is tested).
#: LightGCN is refused: it fails on this SciPy ("'dok_matrix' object has no attribute
#: '_update'").
SUPPORTED_MODELS: dict[str, str] = {
    "BPR": "general",
    "GRU4Rec": "sequential",
    "SASRec": "sequential",
}

FORMAT = "recaudit-recbole-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model.json"
PAD = "[PAD]"

INTER_FIELDS = ("user_id:token", "item_id:token", "timestamp:float")
ITEM_FIELDS = ("item_id:token", "genre:token_seq")

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
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAX_JSON_BYTES = 256 << 20
_MAX_HEADER_BYTES = 100 << 20


# =============================================================================== files
def _token(value: Any, what: str) -> str:
    tok = str(value)
    if not tok or any(c in tok for c in "\t\n\r") or tok == PAD:
        raise SpecError(f"{what} token {tok!r} is empty, is {PAD!r} or contains a tab/newline")
    return tok


def _tokens(values: pd.Series, what: str) -> np.ndarray:
    """:func:`_token` of every value, vectorized (logs have millions of rows)."""
    tok = values.astype(str)
    bad = tok.eq("") | tok.eq(PAD) | tok.str.contains(r"[\t\n\r]", regex=True)
    if bad.any():
        _token(tok[bad.to_numpy()].iloc[0], what)  # raises with the first bad token
    return tok.to_numpy(dtype=object)


def write_atomic_files(
    interactions: pd.DataFrame,
    data_dir: str | Path,
    dataset_name: str,
    *,
    item_genres: pd.Series | Mapping[Any, Any] | None = None,
) -> Path:
    """Write ``<data_dir>/<dataset_name>/<dataset_name>.inter`` (and ``.item``).

    ``interactions`` has columns ``user``, ``item``, ``timestamp`` (tokens are ``str`` of
    the values; timestamps finite floats). ``item_genres`` maps item -> genre(s): a string
    of space-separated genre tokens or a sequence of tokens; every item it lists is
    written to ``.item``, so RecBole knows it even without interactions. Returns the
    dataset directory.
    """
    _check_name(dataset_name)
    missing = {"user", "item", "timestamp"} - set(interactions.columns)
    if missing:
        raise SpecError(f"interaction log lacks column(s) {sorted(missing)}")
    ts = pd.to_numeric(interactions["timestamp"], errors="coerce").to_numpy(dtype=np.float64)
    if not np.isfinite(ts).all():
        raise SpecError("interaction timestamps must be finite numbers")
    out = Path(data_dir) / dataset_name
    out.mkdir(parents=True, exist_ok=True)
    inter = pd.DataFrame(
        {
            INTER_FIELDS[0]: _tokens(interactions["user"], "user"),
            INTER_FIELDS[1]: _tokens(interactions["item"], "item"),
            INTER_FIELDS[2]: ts,
        }
    )
    _write_tsv(inter, out / f"{dataset_name}.inter")
    if item_genres is not None:
        genres = pd.Series(item_genres)
        rows = []
        for item, g in genres.items():
            tokens = g.split() if isinstance(g, str) else [str(x) for x in g]
            if any(not t or any(c.isspace() for c in t) for t in tokens):
                raise SpecError(f"genre tokens of item {item!r} must be non-empty words")
            rows.append((_token(item, "item"), " ".join(tokens)))
        item_df = pd.DataFrame(rows, columns=list(ITEM_FIELDS))
        if item_df[ITEM_FIELDS[0]].duplicated().any():
            raise SpecError("item_genres lists an item twice")
        _write_tsv(item_df, out / f"{dataset_name}.item")
    return out


def _write_tsv(df: pd.DataFrame, path: Path) -> None:
    # floats are written with repr (shortest round-tripping form)
    df.to_csv(path, sep="\t", index=False, quoting=csv.QUOTE_NONE, lineterminator="\n")


def read_atomic_files(
    data_dir: str | Path, dataset_name: str
) -> tuple[pd.DataFrame, pd.Series | None]:
    """The inverse of :func:`write_atomic_files`: (log with ``user``, ``item``,
    ``timestamp``; genres by item as space-separated strings, or None)."""
    base = Path(data_dir) / dataset_name
    inter = read_atomic(base / f"{dataset_name}.inter")
    log = pd.DataFrame(
        {"user": inter["user_id"], "item": inter["item_id"], "timestamp": inter["timestamp"]}
    )
    item_path = base / f"{dataset_name}.item"
    if not item_path.is_file():
        return log, None
    items = read_atomic(item_path)
    return log, pd.Series(items["genre"].to_numpy(), index=items["item_id"].to_numpy())


def ml100k_dir() -> Path:
    """RecBole's bundled MovieLens 100k atomic files (site-packages; never downloaded)."""
    import recbole

    path = Path(recbole.__file__).resolve().parent / "dataset_example" / "ml-100k"
    if not (path / "ml-100k.inter").is_file():
        raise SpecError(f"RecBole's bundled ml-100k is missing at {path}")
    return path


def load_ml100k() -> tuple[pd.DataFrame, pd.Series]:
    """MovieLens 100k from RecBole's bundled files: (log with ``user``, ``item``,
    ``timestamp`` tokens as in the files; genres by item, RecBole's ``class`` field)."""
    src = ml100k_dir()
    inter = read_atomic(src / "ml-100k.inter")
    items = read_atomic(src / "ml-100k.item")
    log = pd.DataFrame(
        {"user": inter["user_id"], "item": inter["item_id"], "timestamp": inter["timestamp"]}
    )
    genres = pd.Series(items["class"].to_numpy(), index=items["item_id"].to_numpy())
    return log, genres


def feedback_to_frame(feedback: Feedback, *, timestamp: float | None = None) -> pd.DataFrame:
    """The clicks of one step as a log: user = row index, item = chosen item index,
    timestamp = ``feedback.t`` unless given. Users who did not click are left out."""
    item = feedback.item.detach().cpu()
    users = torch.nonzero(item >= 0).flatten()
    ts = float(feedback.t if timestamp is None else timestamp)
    return pd.DataFrame(
        {
            "user": users.numpy(),
            "item": item[users].numpy(),
            "timestamp": np.full(users.numel(), ts, dtype=np.float64),
        }
    )


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise SpecError(
            f"dataset name {name!r} must be 1-64 letters, digits, '_', '.', '-' (no paths)"
        )


# ====================================================================== RecBole fences
class _NullWriter:
    """Stands in for TensorBoard's SummaryWriter (RecBole writes ./log_tensorboard)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


_torch_threads = torch_threads  # torch on N threads for a block (None: unchanged)


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
      faster single-threaded on a busy 2-core machine; 10x measured here).
    """
    import recbole.trainer.trainer as rb_trainer

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


# ============================================================================= training
@dataclass
class TrainedModel:
    """A RecBole model with what is needed to use it outside RecBole's trainer.

    ``item_tokens[j]`` / ``user_tokens[j]`` is the token of internal id ``j`` (id 0 is
    RecBole's padding ``[PAD]``). ``config`` is RecBole's Config; ``settings`` the JSON
    values that rebuild the model. ``splits`` holds RecBole's (train, valid, test)
    dataloaders after :func:`train_model`, None after :func:`load_model`.
    ``valid_result`` is RecBole's best validation result during ``fit``; ``test_result``
    its ``evaluate`` of the final weights on the test split (None without one).
    """

    model_name: str
    model: torch.nn.Module
    config: Any
    dataset_name: str
    item_tokens: list[str]
    user_tokens: list[str]
    settings: dict[str, Any]
    fit_seconds: float = 0.0
    valid_result: dict[str, float] | None = None
    test_result: dict[str, float] | None = None
    splits: tuple[Any, Any, Any] | None = None
    _item_ids: dict[str, int] = field(default_factory=dict, repr=False)
    _user_ids: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._item_ids = {t: i for i, t in enumerate(self.item_tokens)}
        self._user_ids = {t: i for i, t in enumerate(self.user_tokens)}

    @property
    def kind(self) -> str:
        return SUPPORTED_MODELS[self.model_name]

    @property
    def max_seq_length(self) -> int:
        return int(self.config["MAX_ITEM_LIST_LENGTH"])

    def item_ids(self, tokens: Sequence[Any]) -> torch.Tensor:
        """Internal ids of item tokens; 0 (padding) for unknown ones."""
        return torch.tensor([self._item_ids.get(str(t), 0) for t in tokens], dtype=torch.long)

    def user_ids(self, tokens: Sequence[Any]) -> torch.Tensor:
        """Internal ids of user tokens; 0 (padding) for unknown ones."""
        return torch.tensor([self._user_ids.get(str(t), 0) for t in tokens], dtype=torch.long)

    @torch.no_grad()
    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        """[n, n_items] scores of every internal item id for internal user ids (general
        models; ``full_sort_predict``)."""
        if self.kind != "general":
            raise SpecError(f"{self.model_name} is sequential: use score_sequences")
        from recbole.data.interaction import Interaction

        self.model.eval()
        inter = Interaction({self.config["USER_ID_FIELD"]: users.long().cpu()})
        predict: Any = self.model.full_sort_predict
        return predict(inter).reshape(users.numel(), -1)

    @torch.no_grad()
    def score_sequences(self, item_seq: torch.Tensor, item_seq_len: torch.Tensor) -> torch.Tensor:
        """[n, n_items] scores from item sequences (sequential models): ``item_seq`` is
        [n, L] internal ids, left-aligned, zero-padded, L <= MAX_ITEM_LIST_LENGTH;
        lengths must be >= 1."""
        if self.kind != "sequential":
            raise SpecError(f"{self.model_name} is a general model: use score_users")
        if item_seq.shape[1] > self.max_seq_length or int(item_seq_len.min()) < 1:
            raise SpecError("sequences must be 1..MAX_ITEM_LIST_LENGTH items long")
        from recbole.data.interaction import Interaction

        self.model.eval()
        item_field = self.config["ITEM_ID_FIELD"]
        inter = Interaction(
            {
                item_field + self.config["LIST_SUFFIX"]: item_seq.long().cpu(),
                self.config["ITEM_LIST_LENGTH_FIELD"]: item_seq_len.long().cpu(),
            }
        )
        predict: Any = self.model.full_sort_predict
        return predict(inter).reshape(item_seq.shape[0], -1)


def train_model(
    model_name: str,
    data_dir: str | Path,
    dataset_name: str,
    *,
    epochs: int,
    seed: int,
    extra_config: Mapping[str, Any] | None = None,
    threads: int | None = 1,
    init_from: TrainedModel | None = None,
) -> TrainedModel:
    """Train ``model_name`` on ``<data_dir>/<dataset_name>/<dataset_name>.inter`` with
    RecBole's pipeline; the final weights are kept (``fit(saved=False)``). With
    ``init_from`` (a model of the same class and settings) training continues from its
    weights instead of a fresh initialization (warm start; item rows matched by token).

    Settings: RecBole's defaults, then ``extra_config`` (e.g. ``embedding_size``,
    ``learning_rate``, ``eval_args``; Python-literal strings are read as literals, never
    ``eval``ed), then ``epochs`` and ``seed``. Settings that move files, load saved
    datasets, or leave the CPU are refused. With RecBole's default split (80/10/10 for
    general models, leave-one-out for sequential ones) validation runs during ``fit``
    (early stopping at ``stopping_step``) and the test split is evaluated; with
    ``eval_args={"split": {"RS": [1.0, 0.0, 0.0]}}`` everything trains and nothing is
    evaluated.
    """
    _model_kind(model_name)
    _check_name(dataset_name)
    if _is_builtin_dataset(dataset_name):
        raise SpecError(
            f"dataset name {dataset_name!r} is one RecBole treats specially; pick another "
            "(load_ml100k + write_atomic_files for MovieLens)"
        )
    inter_path = Path(data_dir) / dataset_name / f"{dataset_name}.inter"
    if not inter_path.is_file():  # RecBole would try to download it
        raise SpecError(f"interaction file not found: {inter_path}")
    if not isinstance(epochs, int) or epochs < 1:
        raise SpecError("epochs must be a positive integer")
    if not isinstance(seed, int) or seed < 0:
        raise SpecError("seed must be a non-negative integer")
    extra = dict(extra_config or {})
    bad = sorted(set(extra) & _FORBIDDEN_KEYS)
    if bad:
        raise SpecError(f"RecBole setting(s) {bad} cannot be changed here")
    if not all(isinstance(k, str) for k in extra) or not _json_value(extra):
        raise SpecError("extra_config must map names to JSON-like values")

    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    with tempfile.TemporaryDirectory(prefix="recaudit-recbole-") as tmp, _recbole_env(threads):
        values = {
            **_base_config(model_name),
            **extra,
            "epochs": epochs,
            "seed": seed,
            "data_path": str(Path(data_dir).resolve()),
            # a fresh directory: RecBole unpickles '<checkpoint_dir>/<dataset>-*.pth' if found
            "checkpoint_dir": tmp,
            "save_dataset": False,
            "save_dataloaders": False,
            "dataset_save_path": None,
            "dataloaders_save_path": None,
            "log_wandb": False,
            "worker": 0,
        }
        config = _make_config(model_name, dataset_name, values)
        init_seed(seed, True)
        try:
            dataset = create_dataset(config)
            train_data, valid_data, test_data = data_preparation(config, dataset)
        except (ValueError, KeyError, IndexError) as exc:
            raise SpecError(f"RecBole could not prepare {inter_path}: {exc}") from None
        if len(train_data._dataset) == 0:
            raise SpecError(f"{inter_path} gives {model_name} no training examples")
        init_seed(seed, True)
        try:
            model = get_model(model_name)(config, train_data._dataset).to(config["device"])
        except (ValueError, TypeError, KeyError, RuntimeError, NotImplementedError) as exc:
            raise SpecError(f"cannot build {model_name} with these settings: {exc}") from None
        if init_from is not None:
            _warm_start(model, init_from, dataset, config)
        trainer = get_trainer(config["MODEL_TYPE"], model_name)(config, model)
        has_valid = len(valid_data._dataset) > 0
        has_test = len(test_data._dataset) > 0
        start = time.perf_counter()
        _, best_valid = trainer.fit(
            train_data,
            valid_data if has_valid else None,
            verbose=False,
            saved=False,
            show_progress=False,
        )
        fit_seconds = time.perf_counter() - start
        test_result = (
            trainer.evaluate(test_data, load_best_model=False, show_progress=False)
            if has_test
            else None
        )
        model.eval()
    settings = {k: config[k] for k in _model_keys(model_name) if k in config}
    return TrainedModel(
        model_name=model_name,
        model=model,
        config=config,
        dataset_name=dataset_name,
        item_tokens=[str(t) for t in dataset.field2id_token[config["ITEM_ID_FIELD"]]],
        user_tokens=[str(t) for t in dataset.field2id_token[config["USER_ID_FIELD"]]],
        settings=settings,
        fit_seconds=fit_seconds,
        valid_result=dict(best_valid) if best_valid else None,
        test_result=dict(test_result) if test_result else None,
        splits=(train_data, valid_data, test_data),
    )


def _warm_start(model: Any, prev: TrainedModel, dataset: Any, config: Any) -> None:
    """Load ``prev``'s weights into ``model``: tensors indexed by item (first dimension
    the number of items) are re-ordered by item token, every other tensor must match."""
    if prev.model_name != type(model).__name__:
        raise SpecError(f"cannot warm-start {type(model).__name__} from {prev.model_name}")
    tokens = [str(t) for t in dataset.field2id_token[config["ITEM_ID_FIELD"]]]
    old_pos = {t: i for i, t in enumerate(prev.item_tokens)}
    if set(tokens) != set(old_pos):
        raise SpecError("a warm start needs the same items as the model it continues")
    order = torch.tensor([old_pos[t] for t in tokens], dtype=torch.long)
    new_state = model.state_dict()
    state = {}
    for key, old in prev.model.state_dict().items():
        if key not in new_state or new_state[key].shape != old.shape:
            raise SpecError(f"cannot warm-start: parameter {key} does not match")
        item_rows = old.dim() >= 1 and old.shape[0] == len(tokens)
        state[key] = old.index_select(0, order) if item_rows else old
    model.load_state_dict(state, strict=True)


def sequence_recall(
    trained: TrainedModel, histories: Sequence[Sequence[str]], targets: Sequence[str], k: int = 10
) -> float:
    """Recall@k (hit rate) of a sequential model on next-item prediction: for each
    history of item tokens (the last ``MAX_ITEM_LIST_LENGTH`` are used), whether the
    target token is among the ``k`` best scored items (padding excluded)."""
    if trained.kind != "sequential":
        raise SpecError("sequence_recall needs a sequential model")
    length = trained.max_seq_length
    seqs = torch.zeros(len(histories), length, dtype=torch.long)
    lens = torch.zeros(len(histories), dtype=torch.long)
    for row, hist in enumerate(histories):
        ids = trained.item_ids(list(hist)[-length:])
        seqs[row, : ids.numel()] = ids
        lens[row] = ids.numel()
    with torch.no_grad():
        scores = trained.score_sequences(seqs, lens).clone()
    scores[:, 0] = -torch.inf
    top = scores.topk(k, dim=1).indices
    want = trained.item_ids(list(targets))
    return float((top == want[:, None]).any(dim=1).double().mean())


def _is_builtin_dataset(name: str) -> bool:
    import recbole

    props = Path(recbole.__file__).resolve().parent / "properties" / "dataset"
    return (props / f"{name}.yaml").is_file()


def full_sort_recall(trained: TrainedModel, k: int = 10, split: str = "test") -> float:
    """Recall@k of a general model on a split of its own training run, computed here from
    ``full_sort_predict`` (independently of RecBole's evaluator): items the user had in
    the earlier splits are masked, as RecBole does; the mean over users with positives
    of ``|top-k & positives| / |positives|``."""
    if trained.splits is None or trained.kind != "general":
        raise SpecError("full_sort_recall needs a general model fresh from train_model")
    parts = {"valid": 1, "test": 2}
    if split not in parts:
        raise SpecError("split must be 'valid' or 'test'")
    uid, iid = trained.config["USER_ID_FIELD"], trained.config["ITEM_ID_FIELD"]
    datasets = [s._dataset for s in trained.splits]
    history = [(d.inter_feat[uid], d.inter_feat[iid]) for d in datasets[: parts[split]]]
    target = datasets[parts[split]].inter_feat
    users = torch.unique(target[uid])
    scores = trained.score_users(users).clone()
    row_of = torch.full((len(trained.user_tokens),), -1, dtype=torch.long)
    row_of[users] = torch.arange(users.numel())
    scores[:, 0] = -torch.inf
    for hu, hi in history:
        rows = row_of[hu]
        keep = rows >= 0
        scores[rows[keep], hi[keep]] = -torch.inf
    top = scores.topk(k, dim=1).indices
    hit = torch.zeros_like(scores, dtype=torch.bool)
    hit.scatter_(1, top, True)
    pos = torch.zeros_like(hit)
    pos[row_of[target[uid]], target[iid]] = True
    per_user = (hit & pos).sum(1).double() / pos.sum(1).double()
    return float(per_user.mean())


# ============================================================================ save/load
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


# =============================================================================== policy
class RecBolePolicy:
    """A RecBole model in the simulation loop, retrained every ``retrain_every`` steps.

    - **Acting.** General models (BPR) score every catalog item for each user with
      ``full_sort_predict``; sequential models (GRU4Rec, SASRec) score from the user's
      last ``MAX_ITEM_LIST_LENGTH`` clicks, so they react to new clicks between retrains
      while a general model sees them only after retraining. The top ``k`` items are
      shown, best first. Nothing is excluded: items the user already clicked can be
      shown again (the simulator allows repeat consumption).
    - **Cold start.** Users the model cannot score (a general model: not in the last
      training log; a sequential model: no clicks yet), and everyone before the first
      training, get the most-clicked items of the log, ties broken by a random item
      order fixed at reset (as the ``popularity`` baseline does).
    - **Feedback loop.** Clicks are logged as (user, item, step) interactions, the
      catalog topics as item genres; every ``retrain_every`` steps the model is trained
      from scratch (``epochs`` epochs) on the whole log so far, never evaluated. With
      ``warm_start`` (the default for sequential models) only the first training starts
      from scratch; later ones continue from the current weights for ``warm_epochs``
      epochs on the new interactions: the users who clicked since the last training,
      each with their last ``2 * retrain_every`` clicks (the new ones and as many before
      them as context). An
      ``initial_log`` (columns ``user``, ``item`` as simulator indices, ``timestamp``
      before step 0) warm-starts the log and trains the first model at reset.
    - **Randomness.** Training seeds and the tie-break order come from the policy's
      stream (``PolicyContext.generator``); RecBole's global seeding is fenced off, so a
      run is reproducible from its seed.

    ``train_seconds`` lists the wall-clock seconds of each retraining.
    """

    oracle = False

    def __init__(
        self,
        model: str = "BPR",
        *,
        retrain_every: int = 5,
        epochs: int = 10,
        extra_config: Mapping[str, Any] | None = None,
        initial_log: pd.DataFrame | None = None,
        threads: int | None = 1,
        name: str | None = None,
        warm_start: bool | None = None,
        warm_epochs: int = 2,
    ) -> None:
        self.kind = _model_kind(model)
        if retrain_every < 1 or epochs < 1 or warm_epochs < 1:
            raise SpecError("retrain_every, epochs and warm_epochs must be positive")
        self.warm_start = self.kind == "sequential" if warm_start is None else bool(warm_start)
        if self.warm_start and self.kind != "sequential":
            raise SpecError("warm_start is for sequential models (GRU4Rec, SASRec)")
        self.warm_epochs = int(warm_epochs)
        self.model_name = model
        self.retrain_every = int(retrain_every)
        self.epochs = int(epochs)
        self.extra_config = {
            "eval_args": {"split": {"RS": [1.0, 0.0, 0.0]}, "order": "TO", "mode": "full"},
            **dict(extra_config or {}),
        }
        self.initial_log = initial_log
        self.threads = threads
        self.name = name or f"recbole-{model.lower()}"
        self.trained: TrainedModel | None = None
        self.train_seconds: list[float] = []

    # ------------------------------------------------------------------ protocol
    def reset(self, ctx: PolicyContext) -> None:
        self.ctx = ctx
        n_items, n_users = ctx.catalog.size, ctx.num_users
        self.base_seed = int(
            torch.randint(0, 2**31 - 1, (1,), generator=ctx.generator, device=ctx.device)
        )
        perm = torch.randperm(n_items, generator=ctx.generator, device=ctx.device).cpu()
        self.tiebreak = torch.empty(n_items, dtype=torch.float64)
        self.tiebreak[perm] = torch.arange(n_items, dtype=torch.float64) / (2 * n_items)
        self.counts = torch.zeros(n_items, dtype=torch.float64)
        self.genres = pd.Series(
            [f"t{int(t)}" for t in ctx.catalog.topic.cpu().tolist()], index=range(n_items)
        )
        self.log_users: list[torch.Tensor] = []
        self.log_items: list[torch.Tensor] = []
        self.log_times: list[torch.Tensor] = []
        self.seq_len = 50  # RecBole's MAX_ITEM_LIST_LENGTH unless set in extra_config
        if "MAX_ITEM_LIST_LENGTH" in self.extra_config:
            self.seq_len = int(self.extra_config["MAX_ITEM_LIST_LENGTH"])
        self.recent = torch.full((n_users, self.seq_len), -1, dtype=torch.long)  # right-aligned
        self.n_recent = torch.zeros(n_users, dtype=torch.long)
        self.trained = None
        self.train_seconds = []
        self.retrains = 0
        self.rows_trained = 0  # log rows at the last training
        self.t_offset = 0.0
        if self.initial_log is not None and len(self.initial_log):
            self._add_initial_log(self.initial_log, n_users, n_items)
            self._retrain()

    def act(self, obs: Observation) -> torch.Tensor:
        k, n = self.ctx.slate_size, obs.num_users
        popular = (self.counts + self.tiebreak).topk(k).indices
        slate = popular[None, :].expand(n, k).clone()
        tm = self.trained
        if tm is not None:
            with _torch_threads(self.threads):
                self._model_slates(tm, slate, n, k)
        return slate.to(self.ctx.device)

    def _model_slates(self, tm: TrainedModel, slate: torch.Tensor, n: int, k: int) -> None:
        """Overwrite the rows of users the model can score with its top-k."""
        if tm.kind == "general":
            ids = self.user_map[:n]
            warm = torch.nonzero(ids > 0).flatten()
            if warm.numel():
                slate[warm] = self._top_k(lambda rows: tm.score_users(ids[rows]), warm, k)
        else:
            warm = torch.nonzero(self.n_recent[:n] > 0).flatten()
            if warm.numel():
                slate[warm] = self._top_k(lambda rows: self._score_seq(tm, rows), warm, k)

    def update(self, feedback: Feedback) -> None:
        item = feedback.item.detach().cpu().long()
        users = torch.nonzero(item >= 0).flatten()
        clicked = item[users]
        ts = torch.full((users.numel(),), self.t_offset + float(feedback.t), dtype=torch.float64)
        self._append(users, clicked, ts)
        if (feedback.t + 1) % self.retrain_every == 0:
            self._retrain()

    # ----------------------------------------------------------------- internals
    def _add_initial_log(self, log: pd.DataFrame, n_users: int, n_items: int) -> None:
        missing = {"user", "item", "timestamp"} - set(log.columns)
        if missing:
            raise SpecError(f"initial_log lacks column(s) {sorted(missing)}")
        users = torch.as_tensor(pd.to_numeric(log["user"]).to_numpy(), dtype=torch.long)
        items = torch.as_tensor(pd.to_numeric(log["item"]).to_numpy(), dtype=torch.long)
        ts = torch.as_tensor(pd.to_numeric(log["timestamp"]).to_numpy(), dtype=torch.float64)
        if users.min() < 0 or users.max() >= n_users or items.min() < 0 or items.max() >= n_items:
            raise SpecError("initial_log users/items must be simulator indices in range")
        if not torch.isfinite(ts).all():
            raise SpecError("initial_log timestamps must be finite")
        order = torch.from_numpy(np.lexsort((ts.numpy(), users.numpy())))  # by user, then time
        self._append(users[order], items[order], ts[order], sequential_order=True)
        # run steps come after the initial log
        self.t_offset = float(ts.max()) + 1.0 if float(ts.max()) >= 0 else 0.0

    def _append(
        self,
        users: torch.Tensor,
        items: torch.Tensor,
        ts: torch.Tensor,
        sequential_order: bool = False,
    ) -> None:
        if not users.numel():
            return
        self.log_users.append(users)
        self.log_items.append(items)
        self.log_times.append(ts)
        self.counts += torch.bincount(items, minlength=self.counts.numel()).double()
        if sequential_order:  # several clicks per user: append one at a time, in order
            for u, i in zip(users.tolist(), items.tolist(), strict=True):
                self.recent[u] = torch.cat([self.recent[u, 1:], torch.tensor([i])])
                self.n_recent[u] = min(self.seq_len, int(self.n_recent[u]) + 1)
        else:  # at most one click per user (one simulator step)
            self.recent[users] = torch.cat([self.recent[users, 1:], items[:, None]], dim=1)
            self.n_recent[users] = (self.n_recent[users] + 1).clamp_max(self.seq_len)

    def _log_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "user": torch.cat(self.log_users).numpy(),
                "item": torch.cat(self.log_items).numpy(),
                "timestamp": torch.cat(self.log_times).numpy(),
            }
        )

    def _trainable(self, log: pd.DataFrame) -> bool:
        if not len(log):
            return False
        if self.kind == "general":
            return True
        # a sequential model needs a user with two clicks (a prefix and a next item)
        return bool((log["user"].value_counts() >= 2).any())

    def _new_interactions(self, log: pd.DataFrame) -> pd.DataFrame:
        """The warm start's data: users who clicked since the last training, each with
        their last ``2 * retrain_every`` clicks."""
        active = log["user"].iloc[self.rows_trained :].unique()
        sub = log[log["user"].isin(active)]
        keep = sub.groupby("user").cumcount(ascending=False) < 2 * self.retrain_every
        return sub[keep]

    def _retrain(self) -> None:
        if not self.log_users:
            return
        log = self._log_frame()
        warm = self.warm_start and self.trained is not None
        data = self._new_interactions(log) if warm else log
        if not self._trainable(data):
            return
        seed = (self.base_seed + self.retrains) % (2**31 - 1)
        self.retrains += 1
        self.rows_trained = len(log)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="recaudit-loop-") as tmp:
            write_atomic_files(data, tmp, "loop", item_genres=self.genres)
            tm = train_model(
                self.model_name,
                tmp,
                "loop",
                epochs=self.warm_epochs if warm else self.epochs,
                seed=seed,
                extra_config=self.extra_config,
                threads=self.threads,
                init_from=self.trained if warm else None,
            )
        self.train_seconds.append(time.perf_counter() - start)
        n_items = self.ctx.catalog.size
        self.item_map = tm.item_ids([str(i) for i in range(n_items)])
        if bool((self.item_map == 0).any()):  # pragma: no cover - the .item file lists all
            raise SpecError("RecBole dropped catalog items from its item map")
        self.user_map = tm.user_ids([str(b) for b in range(self.ctx.num_users)])
        if tm.kind == "sequential" and tm.max_seq_length != self.seq_len:
            raise SpecError("MAX_ITEM_LIST_LENGTH changed between reset and training")
        self.trained = tm

    def _score_seq(self, tm: TrainedModel, rows: torch.Tensor) -> torch.Tensor:
        lengths = self.n_recent[rows]
        length = self.seq_len
        # right-aligned buffer -> left-aligned, zero-padded internal ids
        pos = torch.arange(length)[None, :] + (length - lengths)[:, None]
        valid = pos < length
        seq = self.recent[rows].gather(1, pos.clamp_max(length - 1))
        ids = torch.where(valid, self.item_map[seq.clamp_min(0)], torch.zeros_like(seq))
        return tm.score_sequences(ids, lengths)

    def _top_k(self, score: Any, rows: torch.Tensor, k: int) -> torch.Tensor:
        out = torch.empty(rows.numel(), k, dtype=torch.long)
        assert self.trained is not None
        block = max(1, SCORE_BLOCK // max(1, len(self.trained.item_tokens)))
        for start in range(0, rows.numel(), block):
            part = rows[start : start + block]
            scores = score(part)[:, self.item_map]  # internal ids -> catalog order
            out[start : start + block] = scores.topk(k, dim=1).indices
        return out


# ====================================================================== scenario data
#: models whose user and item embeddings a scenario can be derived from (dot-product
#: scores): RecBole's BPR is matrix factorization trained with the BPR loss
EMBEDDING_MODELS = ("BPR",)


@dataclass(frozen=True)
class Embeddings:
    """User and item embeddings learned from a log, keyed by the log's own tokens (row j
    of ``items`` is token ``item_tokens[j]``; no padding row)."""

    item_tokens: list[str]
    items: torch.Tensor  # [K, d] float64
    user_tokens: list[str]
    users: torch.Tensor  # [B, d] float64
    summary: dict[str, Any]


#: interactions up to which training uses RecBole's default batch (2048); above, the
#: batch grows with the log so that an epoch stays about LARGE_LOG_BATCHES batches
LARGE_LOG = 200_000
LARGE_LOG_BATCHES = 128


def train_batch_size(interactions: int) -> int:
    """RecBole's ``train_batch_size`` for a log: 2048 (RecBole's default) up to
    :data:`LARGE_LOG` interactions, then the power of two nearest to interactions /
    :data:`LARGE_LOG_BATCHES` (8192 for a million): per-batch overhead, not arithmetic,
    dominates BPR training in RecBole."""
    if interactions <= LARGE_LOG:
        return 2048
    return max(2048, 1 << round(math.log2(interactions / LARGE_LOG_BATCHES)))


def train_embeddings(
    log: pd.DataFrame,
    *,
    item_genres: pd.Series | None = None,
    model: str = "BPR",
    dim: int = 16,
    epochs: int = 40,
    seed: int = 2020,
    learning_rate: float = 0.005,
    threads: int | None = 1,
) -> Embeddings:
    """Train ``model`` on ``log`` (columns ``user``, ``item``, ``timestamp``; item genres
    make every listed item known) with RecBole's pipeline and default 80/10/10 random
    split, ``epochs`` epochs with no early stop, Adam at ``learning_rate``; return the
    learned embeddings with RecBole's test metrics."""
    if model not in EMBEDDING_MODELS:
        raise SpecError(
            f"cannot derive embeddings with {model!r}; supported: {', '.join(EMBEDDING_MODELS)}"
        )
    with tempfile.TemporaryDirectory(prefix="recaudit-derive-") as tmp:
        write_atomic_files(log, tmp, "derived", item_genres=item_genres)
        tm = train_model(
            model,
            tmp,
            "derived",
            epochs=epochs,
            seed=seed,
            extra_config={
                "embedding_size": dim,
                "learning_rate": learning_rate,
                "stopping_step": epochs,  # no early stop: the epoch count is the recipe
                # validated once, after the last epoch: the final weights are kept anyway,
                # and a full-sort validation of every user after each epoch dominated the
                # time on large logs (the evaluation draws no random numbers, so the
                # weights are the same either way)
                "eval_step": epochs,
                "train_batch_size": train_batch_size(len(log)),
            },
            threads=threads,
        )
    net: Any = tm.model
    return Embeddings(
        item_tokens=tm.item_tokens[1:],
        items=net.item_embedding.weight.detach().double()[1:],
        user_tokens=tm.user_tokens[1:],
        users=net.user_embedding.weight.detach().double()[1:],
        summary={
            "model": model,
            "dim": dim,
            "epochs": epochs,
            "seed": seed,
            "learning_rate": learning_rate,
            "train_batch_size": train_batch_size(len(log)),
            "validation": "once, after the last epoch",
            "split": "RecBole default: random 80/10/10 (train/valid/test)",
            "fit_seconds": round(tm.fit_seconds, 2),
            "test": tm.test_result,
        },
    )


# ====================================================================== uploaded models
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


def check_covers_catalog(item_tokens: Sequence[str], item_ids: Sequence[str]) -> None:
    """The model must know every catalog item: simulator item ``i`` is the model's token
    ``item_ids[i]`` (the catalog's id, ``str(i)`` for catalogs without ids of their own)."""
    known = set(item_tokens)
    missing = [x for x in item_ids if x not in known]
    if missing:
        raise SpecError(
            f"the uploaded model does not know {len(missing)} of the scenario's {len(item_ids)} "
            f"catalog items (first missing item ids: {', '.join(map(repr, missing[:5]))})"
        )


def has_own_user_ids(ctx: PolicyContext) -> bool:
    """Whether the run's users carry ids of their own (a population read from data, with
    a user id column) rather than the default ``"0" .. str(n - 1)``."""
    return tuple(ctx.user_ids) != default_ids(ctx.num_users)


#: the cold-start rules, as the report states them
COLD_RULE_GENERAL = (
    "users the model does not know get the model's mean user: the top-k items by the mean "
    "of the model's scores over all its users (one fixed slate)"
)
COLD_RULE_SEQUENTIAL = (
    "users with no clicks yet in the run get the items clicked most so far in the run "
    "(ties in a random order fixed per run)"
)


class FrozenRecBolePolicy(RecBolePolicy):
    """A trained RecBole model as a policy, never retrained.

    - **Items** are matched by id: simulator item ``i`` is the model's item token
      ``ctx.catalog.item_ids[i]``; the model must know every catalog item (SpecError with
      the count and first missing ids otherwise). Items the model knows beyond the
      catalog are never shown.
    - **Users** (general models, BPR): simulated user ``b`` is the model's user
      ``ctx.user_ids[b]`` only when the run's users carry the data's ids
      (:func:`has_own_user_ids`); synthetic users, and users of the data the model never
      saw, are cold: they get the model's mean user (:data:`COLD_RULE_GENERAL`).
      Sequential models score each user's recent clicks in the run; users without
      clicks yet get the most-clicked items (:data:`COLD_RULE_SEQUENTIAL`).

    :meth:`boundary` states the rule and the counts for the report.
    """

    def __init__(self, trained: TrainedModel, *, threads: int | None = 1, name: str = "uploaded"):
        super().__init__(trained.model_name, threads=threads, name=name)
        self.frozen = trained

    def reset(self, ctx: PolicyContext) -> None:
        super().reset(ctx)
        tm = self.frozen
        check_covers_catalog(tm.item_tokens, ctx.catalog.item_ids)
        self.item_map = tm.item_ids(list(ctx.catalog.item_ids))
        self.own_users = has_own_user_ids(ctx)
        if self.own_users:
            self.user_map = tm.user_ids(list(ctx.user_ids))
        else:
            self.user_map = torch.zeros(ctx.num_users, dtype=torch.long)
        self.cold_slate: torch.Tensor | None = None
        if tm.kind == "sequential":
            self.seq_len = tm.max_seq_length
            self.recent = torch.full((ctx.num_users, self.seq_len), -1, dtype=torch.long)
            self.n_recent = torch.zeros(ctx.num_users, dtype=torch.long)
        else:
            with _torch_threads(self.threads):
                self.cold_slate = self._mean_user_slate(tm, ctx.slate_size)
        self.trained = tm

    def _mean_user_slate(self, tm: TrainedModel, k: int) -> torch.Tensor:
        """The top-k catalog items by the mean score over the model's users (for BPR,
        the score of the mean user embedding)."""
        n_users = len(tm.user_tokens)
        total = torch.zeros(len(tm.item_tokens), dtype=torch.float64)
        block = max(1, SCORE_BLOCK // max(1, len(tm.item_tokens)))
        for start in range(1, n_users, block):
            users = torch.arange(start, min(n_users, start + block))
            total += tm.score_users(users).double().sum(dim=0)
        mean = total[self.item_map] / max(1, n_users - 1)
        return (mean + self.tiebreak * 1e-12).topk(k).indices

    def act(self, obs: Observation) -> torch.Tensor:
        if self.cold_slate is None:
            return super().act(obs)
        k, n = self.ctx.slate_size, obs.num_users
        slate = self.cold_slate[None, :].expand(n, k).clone()
        with _torch_threads(self.threads):
            self._model_slates(self.frozen, slate, n, k)
        return slate.to(self.ctx.device)

    def boundary(self) -> dict[str, Any]:
        """How the model met the scenario's ids, for the report."""
        tm, ctx = self.frozen, self.ctx
        catalog = set(ctx.catalog.item_ids)
        outside = sum(1 for t in tm.item_tokens[1:] if t not in catalog)
        out: dict[str, Any] = {
            "kind": f"RecBole {tm.model_name} trained on {tm.dataset_name!r}",
            "catalog_items": ctx.catalog.size,
            "model_items": len(tm.item_tokens) - 1,
            "unknown_items": 0,  # refused at reset otherwise
            "model_items_outside_catalog": outside,
            "model_item_examples": tm.item_tokens[1:6],
            "model_user_examples": tm.user_tokens[1:6],
            "users": ctx.num_users,
            "model_users": len(tm.user_tokens) - 1,
        }
        if tm.kind == "general":
            cold = torch.nonzero(self.user_map == 0).flatten().tolist()
            how = (
                "simulated user b is the model's user with the scenario's user id b"
                if self.own_users
                else "the scenario's users are synthetic (no ids from data), so the model "
                "knows none of them"
            )
            out["rule"] = f"items matched by id; {how}; {COLD_RULE_GENERAL}"
            out["cold_users"] = len(cold)
            out["cold_user_examples"] = [ctx.user_ids[b] for b in cold[:5]]
        else:
            out["rule"] = (
                f"items matched by id; users by their clicks in the run; {COLD_RULE_SEQUENTIAL}"
            )
            never = torch.nonzero(self.n_recent == 0).flatten().tolist()
            out["cold_users"] = len(never)  # never clicked: popularity slates all run
            out["cold_user_examples"] = [ctx.user_ids[b] for b in never[:5]]
        return out

    def _retrain(self) -> None:  # frozen: the uploaded weights are used as they are
        return


def describe_match(
    item_tokens: Sequence[str], user_tokens: Sequence[str], item_ids: Sequence[str]
) -> dict[str, Any]:
    """The counts a submission check states: catalog items the model does not know
    (refused by :func:`check_covers_catalog`), and the model's items outside the
    catalog."""
    known, catalog = set(item_tokens), set(item_ids)
    return {
        "catalog_items": len(item_ids),
        "model_items": len(item_tokens) - 1,
        "unknown_items": sum(1 for x in item_ids if x not in known),
        "model_items_outside_catalog": sum(1 for t in item_tokens[1:] if t not in catalog),
        "model_users": len(user_tokens) - 1,
    }


@dataclass(frozen=True)
class UploadedModelFactory:
    """A picklable zero-argument factory of :class:`FrozenRecBolePolicy` from the
    uploaded files' bytes (it travels to Ray workers; nothing there reads the disk)."""

    config: bytes
    weights: bytes
    name: str = "uploaded"

    def __call__(self) -> FrozenRecBolePolicy:
        return FrozenRecBolePolicy(load_model_bytes(self.config, self.weights), name=self.name)
