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
from torch.utils.data import Dataset, TensorDataset

from quorum.baseline.gpt import LinearFactory
from quorum.baseline.task import evaluate as evaluate_dataset
from quorum.baseline.task import refuse_tensor_parallel
from quorum.data.heart_disease import (
    NUM_FEATURES,
    SITES,
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


def _site_task(
    split: SiteSplit, optimizer: OptimizerFactory, device: str, seed: int, lr: float
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


class PooledTest(TensorDataset):
    """The pooled test set (standardised with the pooled train statistics) and each site's own
    test set (standardised with that site's), so that a pooled model reports both of FLamby's
    accuracies."""

    def __init__(self, x: np.ndarray, y: np.ndarray, sites: dict[str, TensorDataset]) -> None:
        features, labels = _dataset(x, y).tensors
        super().__init__(features, labels)
        self.sites = sites


class HeartDiseaseTask:
    """`FederatedTask`, `HasBaselines` and `CentralisedTask` for the four-hospital
    heart-disease federation.

    Centralised (`quorum baseline run --task examples.heart_disease.task:task`), `data` is
    `pooled` (the union of the four bundled sites, standardised with the pooled train
    statistics: the `pooled` reference of `baselines`) or one bundled site name or file (that
    site alone, standardised with its own statistics: a local-only reference). The recipe of
    `baselines` is Adam, lr 0.001, batch 4, 50 epochs (`--epochs 50`). Evaluation reports
    `loss` and `accuracy` on the matching test set and, for `pooled`, `accuracy_mean_sites` and
    `accuracy_pooled_test` as `baselines` does.
    """

    tokens_per_sample = None
    default_batch_size = BATCH_SIZE
    default_learning_rate = BASELINE_LR

    def initial_parameters(self, seed: int) -> Params:
        return params_from_module(make_model(seed))

    def site(self, data: str, device: str, seed: int) -> TorchTask:
        return _site_task(load_site(data), sgd, device, seed, FEDERATED_LR)

    def baselines(self, sites: Mapping[str, str], device: str, seed: int) -> Baselines:
        """FLamby's pooled and local-only references, trained by `TorchTask.fit` (Adam, lr 0.001,
        batch 4, 50 epochs) from `initial_parameters(seed)`:

        - `pooled`: see `pooled_baseline`.
        - `local[site]`: trained on that site's (per-site standardised) train set alone;
          `accuracy_own_test` on its own test set, `accuracy_mean_sites` the unweighted mean over
          all the sites' test sets, and `accuracy_pooled_test` on FLamby's pooled test set (the
          union of the test sets, standardised with the pooled train statistics).
        """
        refs = _References(self, sites, device, seed)
        return Baselines(
            pooled=refs.pooled_metrics(),
            local={name: refs.local_metrics(name) for name in refs.per_site},
        )

    def local_baselines(
        self, sites: Mapping[str, str], device: str, seed: int
    ) -> dict[str, dict[str, float]]:
        """The local half of `baselines` alone (`quorum sim` takes its pooled line from a
        baseline job of the server)."""
        refs = _References(self, sites, device, seed)
        return {name: refs.local_metrics(name) for name in refs.per_site}

    def pooled_baseline(self, sites: Mapping[str, str], device: str, seed: int) -> dict[str, float]:
        """The pooled half of `baselines` alone: trained on the union of the sites' train sets,
        standardised (as FLamby does) with the pooled train statistics; `accuracy_mean_sites` is
        the unweighted mean of its accuracies on the sites' own (per-site standardised) test
        sets, `accuracy_pooled_test` its accuracy on the union of the test sets, standardised
        like its train set."""
        return _References(self, sites, device, seed).pooled_metrics()

    def build_model(self, seed: int, linears: LinearFactory) -> nn.Module:
        refuse_tensor_parallel(linears, "the heart-disease logistic regression")
        return make_model(seed)

    def train_dataset(self, data: str) -> TensorDataset:
        split = self._split(data)
        return _dataset(split.x_train, split.y_train)

    def eval_dataset(self, data: str) -> TensorDataset:
        split = self._split(data)
        if data != "pooled":
            return _dataset(split.x_test, split.y_test)
        sites = {
            name: _dataset(s.x_test, s.y_test)
            for name, s in ((name, load_site(name)) for name in SITES)
        }
        return PooledTest(split.x_test, split.y_test, sites)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss: torch.Tensor = nn.functional.binary_cross_entropy_with_logits(outputs, targets)
        return loss

    def eval_metrics(
        self,
        model: nn.Module,
        dataset: Dataset[tuple[torch.Tensor, ...]],
        device: torch.device,
    ) -> dict[str, float]:
        metrics = evaluate_dataset(model, dataset, device, self.loss, _hits, EVAL_BATCH_SIZE)
        if isinstance(dataset, PooledTest):
            per_site = [
                evaluate_dataset(model, site, device, self.loss, _hits, EVAL_BATCH_SIZE)["accuracy"]
                for site in dataset.sites.values()
            ]
            metrics["accuracy_mean_sites"] = float(np.mean(per_site))
            metrics["accuracy_pooled_test"] = metrics["accuracy"]
        return metrics

    @staticmethod
    def _split(data: str) -> SiteSplit:
        if data == "pooled":
            return standardise(pool(split_site(name) for name in SITES))
        return load_site(data)


def _hits(logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    return int(((logits > 0).to(targets.dtype) == targets).sum()), targets.numel()


class _References:
    """The data of the baselines and the one way they are trained and tested."""

    def __init__(
        self, task: HeartDiseaseTask, sites: Mapping[str, str], device: str, seed: int
    ) -> None:
        raw = {name: split_site(path) for name, path in sites.items()}
        self.per_site = {name: standardise(split) for name, split in raw.items()}
        self.pooled = standardise(pool(raw.values()))
        torch_device = resolve_device(device)
        self.site_tests = {
            name: Batches(_dataset(s.x_test, s.y_test), EVAL_BATCH_SIZE, torch_device)
            for name, s in self.per_site.items()
        }
        self.pooled_test = Batches(
            _dataset(self.pooled.x_test, self.pooled.y_test), EVAL_BATCH_SIZE, torch_device
        )
        self.device, self.seed = device, seed
        self.initial = task.initial_parameters(seed)

    def fit_and_test(self, train_split: SiteSplit) -> tuple[dict[str, float], float]:
        """Trains on `train_split` with the baseline recipe; accuracy on each site's test set
        and on the pooled test set."""
        site_task = _site_task(train_split, adam, self.device, self.seed, BASELINE_LR)
        config: JSONConfig = {
            "lr": BASELINE_LR,
            "local_epochs": BASELINE_EPOCHS,
            "batch_size": BATCH_SIZE,
        }
        site_task.fit(self.initial, config)
        model, loss_fn, predict = site_task.model, site_task.loss_fn, site_task.predict
        per_test = {
            name: evaluate(model, batches, loss_fn, predict)["accuracy"]
            for name, batches in self.site_tests.items()
        }
        return per_test, evaluate(model, self.pooled_test, loss_fn, predict)["accuracy"]

    def pooled_metrics(self) -> dict[str, float]:
        per_test, pooled_accuracy = self.fit_and_test(self.pooled)
        return {
            "accuracy_mean_sites": float(np.mean(list(per_test.values()))),
            "accuracy_pooled_test": pooled_accuracy,
        }

    def local_metrics(self, name: str) -> dict[str, float]:
        per_test, pooled_accuracy = self.fit_and_test(self.per_site[name])
        return {
            "accuracy_own_test": per_test[name],
            "accuracy_mean_sites": float(np.mean(list(per_test.values()))),
            "accuracy_pooled_test": pooled_accuracy,
        }


task = HeartDiseaseTask()
