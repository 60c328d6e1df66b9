"""Fed-Heart-Disease (FLamby): logistic regression on 13 features, one site per hospital.

A run names this task `examples.heart_disease.task:task`. A site's `data` is a bare site name
(`cleveland`, `hungarian`, `switzerland`, `va`: the copies bundled in `quorum/data/heart_disease/`)
or a path to a `processed.<site>.data` file. Each site trains on its own FLamby train split,
standardised with its own statistics (see `quorum.data.heart_disease`), and reports loss and
accuracy (sigmoid > 0.5) on its own test split.

Federated training uses plain SGD with the learning rate of each round's fit config, batch 4 by
default (FLamby: 100 local steps per round, 15 rounds, lr 0.001 for FedAvg). `baselines` trains
FLamby's pooled and local-only references (Adam, lr 0.001, batch 4, 50 epochs) with the same
training code as the federated fits (`TorchTask.fit`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from quorum.data.heart_disease import NUM_FEATURES, SiteSplit, load_site
from quorum.task import Baselines, JSONConfig
from quorum.torch_task import (
    Batches,
    OptimizerFactory,
    TorchTask,
    adam,
    evaluate,
    params_from_module,
    resolve_device,
    sgd,
)
from quorum.wire.blobs import Params

BATCH_SIZE = 4
FEDERATED_LR = 0.001
BASELINE_LR = 0.001
BASELINE_EPOCHS = 50


def make_model(seed: int) -> nn.Module:
    """`Linear(13, 1)` initialised from `seed` (torch's global generator is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Linear(NUM_FEATURES, 1)


def _dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y).reshape(-1, 1))


class HeartDiseaseTask:
    """`FederatedTask` and `HasBaselines` for the four-hospital heart-disease federation."""

    def initial_parameters(self, seed: int) -> Params:
        return params_from_module(make_model(seed))

    def site(self, data: str, device: str, seed: int) -> TorchTask:
        return self._task(load_site(data), sgd, device, seed, FEDERATED_LR)

    def baselines(self, sites: Mapping[str, str], device: str, seed: int) -> Baselines:
        """Pooled training on the union of the sites' train sets, and each site alone, evaluated
        on every site's test set: `pooled = {accuracy_mean_sites, accuracy_pooled_test}`,
        `local[site] = {accuracy_own_test, accuracy_mean_sites, accuracy_pooled_test}`, where
        `accuracy_mean_sites` is the unweighted mean over the sites' test sets."""
        splits = {name: load_site(path) for name, path in sites.items()}
        initial = self.initial_parameters(seed)
        config: JSONConfig = {
            "lr": BASELINE_LR,
            "local_epochs": BASELINE_EPOCHS,
            "batch_size": BATCH_SIZE,
        }
        torch_device = resolve_device(device)
        tests = {
            name: Batches(_dataset(s.x_test, s.y_test), 1024, torch_device)
            for name, s in splits.items()
        }
        pooled_test = Batches(
            _dataset(
                np.concatenate([s.x_test for s in splits.values()]),
                np.concatenate([s.y_test for s in splits.values()]),
            ),
            1024,
            torch_device,
        )

        def accuracies(train_split: SiteSplit) -> tuple[dict[str, float], float]:
            task = self._task(train_split, adam, device, seed, BASELINE_LR)
            task.fit(initial, config)
            per_site = {
                name: evaluate(task.model, batches, task.loss_fn, task.predict)["accuracy"]
                for name, batches in tests.items()
            }
            pooled = evaluate(task.model, pooled_test, task.loss_fn, task.predict)["accuracy"]
            return per_site, pooled

        pooled_split = SiteSplit(
            x_train=np.concatenate([s.x_train for s in splits.values()]),
            y_train=np.concatenate([s.y_train for s in splits.values()]),
            x_test=np.concatenate([s.x_test for s in splits.values()]),
            y_test=np.concatenate([s.y_test for s in splits.values()]),
        )
        per_site, pooled_accuracy = accuracies(pooled_split)
        pooled = {
            "accuracy_mean_sites": float(np.mean(list(per_site.values()))),
            "accuracy_pooled_test": pooled_accuracy,
        }
        local: dict[str, dict[str, float]] = {}
        for name, split in splits.items():
            per_site, pooled_accuracy = accuracies(split)
            local[name] = {
                "accuracy_own_test": per_site[name],
                "accuracy_mean_sites": float(np.mean(list(per_site.values()))),
                "accuracy_pooled_test": pooled_accuracy,
            }
        return Baselines(pooled=pooled, local=local)

    @staticmethod
    def _task(
        split: SiteSplit,
        optimizer: OptimizerFactory,
        device: str,
        seed: int,
        lr: float,
    ) -> TorchTask:
        return TorchTask(
            make_model(seed),
            _dataset(split.x_train, split.y_train),
            _dataset(split.x_test, split.y_test),
            nn.BCEWithLogitsLoss(),
            optimizer,
            device=device,
            batch_size=BATCH_SIZE,
            seed=seed,
            lr=lr,
        )


task = HeartDiseaseTask()
