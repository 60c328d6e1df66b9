"""The two DP benchmark workloads: the heart-disease model and a small MNIST CNN, as TorchTasks.

Shared by `dp_time.py` (CPU/GPU epoch times, Quorum against plain Opacus) and `gpu_dp_step.py`
(DP-SGD steps on a GPU), so both measure the same models, data and batch sizes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import TensorDataset

from examples.heart_disease import task as heart_task
from quorum.data import mnist
from quorum.torch_task import TorchTask, sgd

HEART_SITE = "cleveland"
"""The largest hospital (199 training rows): 50 steps of batch 4 per epoch."""
MNIST_BATCH_SIZE = 64
MNIST_LR = 0.05
MNIST_TRAIN, MNIST_TEST = 8_000, 2_000
WORKLOADS = ("heart", "mnist")


@dataclass(frozen=True)
class Workload:
    """A model and its site's data: `task` is what a Quorum site runs; `make_model` and `train`
    let a plain-Opacus client build the same model and data."""

    key: str
    """The name on the command line: one of `WORKLOADS`."""
    name: str
    make_model: Callable[[int], nn.Module]
    train: TensorDataset
    test: TensorDataset
    loss_fn: Callable[[], nn.Module]
    batch_size: int
    lr: float

    def task(self, device: str, seed: int) -> TorchTask:
        return TorchTask(
            self.make_model(seed),
            self.train,
            self.test,
            self.loss_fn(),
            sgd,
            device=device,
            batch_size=self.batch_size,
            seed=seed,
            lr=self.lr,
        )

    def num_params(self) -> int:
        return sum(p.numel() for p in self.make_model(0).parameters())


def heart_disease() -> Workload:
    """The heart-disease example's own site task (`examples.heart_disease.task`): `Linear(13, 1)`,
    BCE loss, SGD, batch 4, on the Cleveland site's FLamby train split."""
    site = heart_task.task.site(HEART_SITE, "cpu", 0)
    train, test = site.train_batches.dataset, site.test_batches.dataset
    assert isinstance(train, TensorDataset) and isinstance(test, TensorDataset)
    return Workload(
        key="heart",
        name="heart disease (Linear 13→1)",
        make_model=heart_task.make_model,
        train=train,
        test=test,
        loss_fn=nn.BCEWithLogitsLoss,
        batch_size=heart_task.BATCH_SIZE,
        lr=heart_task.FEDERATED_LR,
    )


def mnist_cnn(seed: int) -> nn.Module:
    """The CNN of Opacus's MNIST example (two convolutions, two linear layers, 26k parameters),
    initialised from `seed` without touching torch's global generator. No BatchNorm: per-example
    gradients need layers that treat each example alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, 16, 8, stride=2, padding=3),  # 16 x 14 x 14
            nn.ReLU(),
            nn.MaxPool2d(2, 1),  # 16 x 13 x 13
            nn.Conv2d(16, 32, 4, stride=2),  # 32 x 5 x 5
            nn.ReLU(),
            nn.MaxPool2d(2, 1),  # 32 x 4 x 4
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 32),
            nn.ReLU(),
            nn.Linear(32, 10),
        )


def mnist_workload(folder: str | os.PathLike[str] | None = None) -> Workload:
    """The CNN on 8,000 training and 2,000 test images drawn from MNIST's test set
    (`quorum.data.mnist.load_split`), batch 64, SGD."""
    split = mnist.load_split(folder, MNIST_TRAIN, MNIST_TEST, seed=0)
    return Workload(
        key="mnist",
        name="MNIST CNN (2 conv + 2 linear)",
        make_model=mnist_cnn,
        train=TensorDataset(torch.from_numpy(split.x_train), torch.from_numpy(split.y_train)),
        test=TensorDataset(torch.from_numpy(split.x_test), torch.from_numpy(split.y_test)),
        loss_fn=nn.CrossEntropyLoss,
        batch_size=MNIST_BATCH_SIZE,
        lr=MNIST_LR,
    )


def load(name: str, mnist_dir: str | None) -> Workload:
    if name == "heart":
        return heart_disease()
    if name == "mnist":
        return mnist_workload(mnist_dir)
    raise ValueError(f"unknown workload {name!r}: expected one of {', '.join(WORKLOADS)}")
