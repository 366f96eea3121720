"""Bring-your-own-model helpers for tests: a model trained by RecBole's own pipeline
(Config, create_dataset, data_preparation, get_model, get_trainer, fit(saved=True)), as a
team would train it, leaving a real ``.pth`` checkpoint."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def train_recbole_checkpoint(
    workdir: Path,
    dataset: str,
    *,
    data_path: Path | None = None,
    model: str = "BPR",
    epochs: int = 1,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Train ``model`` with RecBole's pipeline and return the checkpoint it saved.
    ``dataset`` 'ml-100k' without ``data_path`` uses RecBole's bundled MovieLens 100k."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    config_dict: dict[str, Any] = {
        "epochs": epochs,
        "use_gpu": False,
        "checkpoint_dir": str(workdir / "saved"),
        "show_progress": False,
        "state": "ERROR",
        "embedding_size": 16,
        "eval_batch_size": 1 << 20,
        "save_dataset": False,
        "save_dataloaders": False,
        "worker": 0,
        **(extra or {}),
    }
    if data_path is not None:
        config_dict["data_path"] = str(data_path)
    argv, cwd = sys.argv, os.getcwd()
    sys.argv = sys.argv[:1]  # RecBole parses the command line
    os.chdir(workdir)  # RecBole writes log files and ./log_tensorboard into the cwd
    try:
        config = Config(model=model, dataset=dataset, config_dict=config_dict)
        init_seed(config["seed"], config["reproducibility"])
        ds = create_dataset(config)
        train_data, valid_data, _test_data = data_preparation(config, ds)
        net = get_model(config["model"])(config, train_data._dataset).to(config["device"])
        trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, net)
        trainer.fit(train_data, valid_data, saved=True, show_progress=False)
        return Path(trainer.saved_model_file)
    finally:
        sys.argv = argv
        os.chdir(cwd)
