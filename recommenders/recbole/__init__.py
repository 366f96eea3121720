"""RecBole in the loop: the only package of recaudit that imports ``recbole``.

What is here, in the order of a workflow:

1. **Atomic files** (:mod:`.atomic`). :func:`write_atomic_files` writes an interaction
   log (a DataFrame with columns ``user``, ``item``, ``timestamp``) as RecBole atomic
   files: ``<name>.inter`` (``user_id:token item_id:token timestamp:float``) and, when
   item topics are known, ``<name>.item`` (``item_id:token genre:token_seq``), which
   also makes every listed item known to RecBole even if nobody clicked it.
   :func:`read_atomic` reads them back; :func:`feedback_to_frame` turns simulator
   feedback into a log. (:mod:`recommenders.ml100k` reads the MovieLens 100k files
   bundled with RecBole; nothing is ever downloaded.)
2. **Training** (:mod:`.training`, fenced by :mod:`.fence`). :func:`train_model` runs
   RecBole's own pipeline (``Config``, ``create_dataset``, ``data_preparation``,
   ``get_model``, ``get_trainer``, ``fit(saved=False)``,
   ``evaluate(load_best_model=False)``) without ``recbole.quick_start`` (it imports
   ``ray.tune``). RecBole's global side effects are fenced (see
   :func:`.fence._recbole_env`): command-line parsing, ``eval`` of string settings,
   ``CUDA_VISIBLE_DEVICES``, global RNG state, logging, TensorBoard files in the working
   directory, and unpickling of saved datasets or dataloaders are all disabled.
3. **Saving** (:mod:`.bundle`). :func:`save_model` writes the weights as safetensors
   plus a JSON file naming the model class, the settings that rebuild it and the token
   <-> id maps. :func:`load_model` rebuilds the model from RecBole's defaults and the
   JSON settings, checks every tensor name, shape and dtype, then
   ``load_state_dict(strict=True)``. It never unpickles (no ``torch.load``, no
   ``pickle``).
4. **The policy** (:mod:`.policy`). :class:`RecBolePolicy` shows each simulated user the
   top-k catalog items by the model's scores, logs clicks as interactions and retrains
   every ``R`` steps on the accumulated log: the feedback loop of Chaney, Stewart and
   Engelhardt (RecSys 2018).
5. **Scenario data** (:mod:`.embeddings`). :func:`train_embeddings` learns user and item
   embeddings from a log, for ``recommenders.derive`` (``recaudit scenario derive``),
   which also derives the ``movielens-100k-v1`` scenario's catalog and population.

A policy retrained in the loop logs simulator item ``i`` as token ``str(i)`` and user
``b`` as ``str(b)`` (its own log); a frozen model trained elsewhere is matched by the
catalog's item ids and the population's user ids (:mod:`.frozen`; uploads are checked by
:mod:`.uploads`). RecBole runs on the CPU here.
"""

from __future__ import annotations

from .atomic import (
    INTER_FIELDS,
    ITEM_FIELDS,
    PAD,
    feedback_to_frame,
    read_atomic,
    read_atomic_files,
    write_atomic_files,
)
from .bundle import (
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    convert_checkpoint,
    load_model,
    save_model,
)
from .embeddings import (
    EMBEDDING_MODELS,
    LARGE_LOG,
    LARGE_LOG_BATCHES,
    Embeddings,
    train_batch_size,
    train_embeddings,
)
from .fence import (
    SUPPORTED_MODELS,
    model_params,
)
from .frozen import (
    COLD_RULE_GENERAL,
    COLD_RULE_SEQUENTIAL,
    FrozenRecBolePolicy,
    UploadedModelFactory,
    check_covers_catalog,
    describe_match,
    has_own_user_ids,
)
from .policy import (
    RecBolePolicy,
)
from .training import (
    TrainedModel,
    full_sort_recall,
    sequence_recall,
    train_model,
)
from .uploads import (
    UnsupportedUpload,
    load_model_bytes,
    sniff_config,
    sniff_weights,
    validate_upload,
)

__all__ = [
    "COLD_RULE_GENERAL",
    "COLD_RULE_SEQUENTIAL",
    "CONFIG_FILE",
    "EMBEDDING_MODELS",
    "FORMAT",
    "FORMAT_VERSION",
    "INTER_FIELDS",
    "ITEM_FIELDS",
    "LARGE_LOG",
    "LARGE_LOG_BATCHES",
    "PAD",
    "SUPPORTED_MODELS",
    "WEIGHTS_FILE",
    "Embeddings",
    "FrozenRecBolePolicy",
    "RecBolePolicy",
    "TrainedModel",
    "UnsupportedUpload",
    "UploadedModelFactory",
    "check_covers_catalog",
    "convert_checkpoint",
    "describe_match",
    "feedback_to_frame",
    "full_sort_recall",
    "has_own_user_ids",
    "load_model",
    "load_model_bytes",
    "model_params",
    "read_atomic",
    "read_atomic_files",
    "save_model",
    "sequence_recall",
    "sniff_config",
    "sniff_weights",
    "train_batch_size",
    "train_embeddings",
    "train_model",
    "validate_upload",
    "write_atomic_files",
]
