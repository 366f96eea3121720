"""The team's own training: RecBole's pipeline on its own log, as it runs in production."""

import pandas as pd
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model, get_trainer, init_seed

log = pd.read_csv("shop/log.csv")
inter = "shop/recbole/shop/shop.inter"
pd.io.common.Path(inter).parent.mkdir(parents=True, exist_ok=True)
log.rename(
    columns={"user_id": "user_id:token", "item_id": "item_id:token", "timestamp": "timestamp:float"}
).to_csv(inter, sep="\t", index=False)

config = Config(
    model="BPR",
    dataset="shop",
    config_dict={
        "data_path": "shop/recbole",
        "checkpoint_dir": "shop/saved",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "epochs": 10,
        "embedding_size": 32,
        "use_gpu": False,
        "show_progress": False,
    },
)
init_seed(config["seed"], config["reproducibility"])
dataset = create_dataset(config)
train, valid, test = data_preparation(config, dataset)
model = get_model(config["model"])(config, train._dataset)
trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
trainer.fit(train, valid, saved=True, show_progress=False)
print("test:", dict(trainer.evaluate(test, load_best_model=False, show_progress=False)))
print("checkpoint:", trainer.saved_model_file)
