"""Open a trained run for inference: its model, its configuration and its dataset, each found one way,
for evaluation and serving alike."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from peapod.config import RunConfig
from peapod.data.dataset import Dataset
from peapod.data.loaders import is_embedded, load_dataset
from peapod.infer.predictor import Predictor
from peapod.infer.requests import resolve_model_dir
from peapod.model.peapod import ModelBundle, load_bundle


@dataclass
class OpenRun:
    predictor: Predictor
    dataset: Dataset
    data_path: str
    model_dir: Path
    run_dir: Path | None  # None for a bare model directory
    config: RunConfig  # the run's, or the defaults for a bare model


def check_same_data(dataset: Dataset, bundle: ModelBundle, name: str) -> None:
    """ValueError unless `dataset` has the model's users and items, same ids in the same order."""
    if dataset.user_ids != bundle.user_ids or dataset.item_ids != bundle.item_ids:
        raise ValueError(
            f"dataset {name!r} ({dataset.n_users} users, {dataset.n_items} items) is not the one the model was trained on "
            f"({len(bundle.user_ids)} users, {len(bundle.item_ids)} items, same ids in the same order)"
        )


def open_run(
    path: str | Path,
    data: str | Path | Dataset | None = None,
    device: str | torch.device | None = None,
    max_history: int | None = None,
    decoder_history: int | None = None,
) -> OpenRun:
    """A run directory (its `best/` model) or a model directory, ready to predict.

    `data`: the dataset the model was trained on (a path, 'demo', 'demo-toys', or a loaded `Dataset`);
    default the run's `data.path`, or for a bare model trained on an embedded dataset its name.
    `max_history` (default the run's `train.max_history`) and `decoder_history` (default the model's)
    go to the `Predictor`.

    Raises:
        FileNotFoundError: no model at `path`. ValueError: no dataset can be determined, or it is not
        the one the model was trained on. DataError: unreadable data.
    """
    model_dir, run_dir, saved = resolve_model_dir(path)
    cfg = saved or RunConfig()
    bundle = load_bundle(model_dir, device="cpu")
    if isinstance(data, Dataset):
        ds, data_path = data, data.source or data.name
    else:
        data_path = str(data) if data is not None else cfg.data.path
        if data_path is None and is_embedded(bundle.extra.get("dataset", "")):
            data_path = bundle.extra["dataset"]  # an embedded dataset is found by its name
        if data_path is None:
            raise ValueError(f"{path}: no dataset known for this model; pass its data (a P5 directory, a table, 'demo' or 'demo-toys')")
        ds = load_dataset(data_path)
    check_same_data(ds, bundle, str(data_path))
    history = cfg.train.max_history if max_history is None else int(max_history)
    predictor = Predictor(bundle, device=device, max_history=history, decoder_history=decoder_history)
    predictor.read_training_data(ds, cfg)
    return OpenRun(predictor, ds, str(data_path), model_dir, run_dir, cfg)
