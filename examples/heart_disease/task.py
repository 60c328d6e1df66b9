"""Fed-Heart-Disease (FLamby): logistic regression on 13 features, one site per hospital.

A run names this task `examples.heart_disease.task:task`. A site's `data` is a bare site name
(`cleveland`, `hungarian`, `switzerland`, `va`: the copies bundled in `quorum/data/heart_disease/`)
or a path to a `processed.<site>.data` file. Each site trains on its own FLamby train split,
standardised with its own statistics (see `quorum.data.heart_disease`), and reports loss and
accuracy (sigmoid > 0.5) on its own test split.

Federated training uses plain SGD with the learning rate of each round's fit config, batch 4 by
default (FLamby: 100 local steps per round, 15 rounds, lr 0.001 for FedAvg). `baselines` trains
FLamby's pooled and local-only references (Adam, lr 0.001, batch 4, 50 epochs) with the same
training code as the federated fits (`TorchTask.fit`). Over seeds 42-46 they reproduce FLamby's
published pooled results (0.735 mean of the 4 site test sets, 0.795 on the pooled test set).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from quorum.data.heart_disease import (
    NUM_FEATURES,
    SiteSplit,
    load_site,
    pool,
    split_site,
    standardise,
)
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
EVAL_BATCH_SIZE = 1024


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
        """FLamby's pooled and local-only references, trained by `TorchTask.fit` (Adam, lr 0.001,
        batch 4, 50 epochs) from `initial_parameters(seed)`:

        - `pooled`: trained on the union of the sites' train sets, standardised (as FLamby does)
          with the pooled train statistics; `accuracy_mean_sites` is the unweighted mean of its
          accuracies on the sites' own (per-site standardised) test sets, `accuracy_pooled_test`
          its accuracy on the union of the test sets, standardised like its train set.
        - `local[site]`: trained on that site's train set alone; `accuracy_own_test` on its test
          set, `accuracy_mean_sites` the mean over all the sites' test sets, and
          `accuracy_pooled_test` on FLamby's pooled test set (as above).
        """
        raw = {name: split_site(path) for name, path in sites.items()}
        per_site = {name: standardise(split) for name, split in raw.items()}
        pooled_split = standardise(pool(raw.values()))
        torch_device = resolve_device(device)
        site_tests = {
            name: Batches(_dataset(s.x_test, s.y_test), EVAL_BATCH_SIZE, torch_device)
            for name, s in per_site.items()
        }
        pooled_test = Batches(
            _dataset(pooled_split.x_test, pooled_split.y_test), EVAL_BATCH_SIZE, torch_device
        )
        initial = self.initial_parameters(seed)
        config: JSONConfig = {
            "lr": BASELINE_LR,
            "local_epochs": BASELINE_EPOCHS,
            "batch_size": BATCH_SIZE,
        }

        def fit_and_test(train_split: SiteSplit) -> tuple[dict[str, float], float]:
            task = self._task(train_split, adam, device, seed, BASELINE_LR)
            task.fit(initial, config)
            per_test = {
                name: evaluate(task.model, batches, task.loss_fn, task.predict)["accuracy"]
                for name, batches in site_tests.items()
            }
            pooled = evaluate(task.model, pooled_test, task.loss_fn, task.predict)["accuracy"]
            return per_test, pooled

        per_test, pooled_accuracy = fit_and_test(pooled_split)
        pooled = {
            "accuracy_mean_sites": float(np.mean(list(per_test.values()))),
            "accuracy_pooled_test": pooled_accuracy,
        }
        local: dict[str, dict[str, float]] = {}
        for name, split in per_site.items():
            per_test, pooled_accuracy = fit_and_test(split)
            local[name] = {
                "accuracy_own_test": per_test[name],
                "accuracy_mean_sites": float(np.mean(list(per_test.values()))),
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
