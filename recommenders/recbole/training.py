"""Training with RecBole's own pipeline (``Config``, ``create_dataset``,
``data_preparation``, ``get_model``, ``get_trainer``, ``fit(saved=False)``) without
``recbole.quick_start`` (it imports ``ray.tune``), and the recall evaluations.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from simulator.errors import SpecError

from .atomic import _check_name
from .fence import (
    _FORBIDDEN_KEYS,
    SUPPORTED_MODELS,
    _base_config,
    _json_value,
    _make_config,
    _model_keys,
    _model_kind,
    _recbole_env,
)


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
    check: Callable[[], None] | None = None,
) -> TrainedModel:
    """Train ``model_name`` on ``<data_dir>/<dataset_name>/<dataset_name>.inter`` with
    RecBole's pipeline; the final weights are kept (``fit(saved=False)``). With
    ``init_from`` (a model of the same class and settings) training continues from its
    weights instead of a fresh initialization (warm start; item rows matched by token).
    ``check()`` is called before every training batch; it raises to stop the training
    (a cancelled job).

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
            "(recommenders.ml100k.load_ml100k + write_atomic_files for MovieLens)"
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
        if check is not None:
            loss = model.calculate_loss

            def checked(interaction: Any) -> Any:
                check()
                return loss(interaction)

            model.calculate_loss = checked
        trainer = get_trainer(config["MODEL_TYPE"], model_name)(config, model)
        has_valid = len(valid_data._dataset) > 0
        has_test = len(test_data._dataset) > 0
        start = time.perf_counter()
        try:
            _, best_valid = trainer.fit(
                train_data,
                valid_data if has_valid else None,
                verbose=False,
                saved=False,
                show_progress=False,
            )
        finally:
            if check is not None:  # the kept model holds no reference to the caller's job
                del model.calculate_loss
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
