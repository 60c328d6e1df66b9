"""MNIST digits and a small CNN, for simulations with many virtual sites.

A run names this task `examples.mnist.task:task`. The data is the 10,000 images bundled with the
package (`quorum/data/mnist/`, MNIST's official test set), divided once and for all, image by
image, into 8,000 training and 2,000 test images (`quorum.data.mnist.split_indices`, seed 0: the
split of `load_split`). Whatever the sites, a site trains on its images of the training split and
evaluates on its images of the test split, so the sites' training images together are exactly
the pooled training set, and their test images the pooled test set.

- `quorum sim` with `[sim] data = "mnist"` and a `[sim.partition]` splits the images among its
  virtual sites (`examples("mnist")`, `site_of("mnist", indices, ...)`).
- A site's `data` (`site(data, ...)`, for `quorum client run` or `[sim] site_data`) is
  `site-K-of-N` (1 <= K <= N): the K-th of N equal parts of a fixed shuffle of the images (IID);
  or `pooled`: every image.
- Centralised (`quorum baseline run`, the pooled line of `quorum sim`), `data` is `pooled` (or a
  `site-K-of-N`): the worker trains with Adam, lr 1e-3, batch 32 unless the spec says otherwise.

The images are read and normalised once per process and shared by every site built in it: a
site holds only the positions of its images (int64 arrays), and its data sets index the shared
tensors. Sites train with plain SGD, batch 32 and lr 0.05 unless the fit config says otherwise.
Evaluation reports `loss` (cross entropy) and `accuracy`; a site without test images reports
`num_examples` 0 and no metrics.
"""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from quorum.baseline.gpt import LinearFactory
from quorum.baseline.task import evaluate, refuse_tensor_parallel
from quorum.data import mnist
from quorum.errors import TaskError
from quorum.task import Examples
from quorum.torch_task import TorchTask, params_from_module, sgd
from quorum.wire.blobs import Params

DATA = "mnist"
"""The one data set `examples` and `site_of` know (the `[sim] data` setting)."""
N_TRAIN = 8_000
N_TEST = mnist.TEST_SET_SIZE - N_TRAIN
SPLIT_SEED = 0
DEAL_SEED = 1
"""Seed of the shuffle that `site-K-of-N` cuts: fixed, so that every agent deals alike, and not
`SPLIT_SEED`, whose shuffle would deal the training images to the first sites and the test
images to the last."""
BATCH_SIZE = 32
FEDERATED_LR = 0.05
BASELINE_LR = 1e-3
EVAL_BATCH_SIZE = 1024

_SITE = re.compile(r"site-([0-9]+)-of-([0-9]+)")


def make_model(seed: int) -> nn.Module:
    """Two 3x3 convolutions (8 and 16 channels, each followed by ReLU and a 2x2 max-pool), then a
    linear layer to the 10 classes: 9,098 parameters. Initialised from `seed` (torch's global
    generator is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, 8, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 7 * 7, mnist.NUM_CLASSES),
        )


@dataclass(frozen=True, eq=False)
class Pool:
    """Every image of the data set, normalised (float32 (n, 1, 28, 28)), its label (int64 (n,)),
    and whether it belongs to the training split."""

    images: torch.Tensor
    labels: torch.Tensor
    is_train: np.ndarray


_LOADING = threading.Lock()


def shared_pool() -> Pool:
    """The process's one copy of the images, read on first use."""
    # A host may build its sites from several threads at once: one load, one copy.
    with _LOADING:
        return _load_pool()


@functools.cache
def _load_pool() -> Pool:
    images, labels = mnist.load_test_set()
    train, _ = mnist.split_indices(len(images), N_TRAIN, N_TEST, SPLIT_SEED)
    is_train = np.zeros(len(images), dtype=bool)
    is_train[train] = True
    is_train.flags.writeable = False
    return Pool(
        images=torch.from_numpy(mnist.normalise(images)),
        labels=torch.from_numpy(labels.astype(np.int64)),
        is_train=is_train,
    )


class Images(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """The images of `pool` at `indices` (views into the shared tensors, never copies); with
    `relabel`, label l reads as relabel[l] (a site whose data was poisoned)."""

    def __init__(
        self, pool: Pool, indices: np.ndarray, relabel: torch.Tensor | None = None
    ) -> None:
        self.pool = pool
        self.indices = indices
        self.relabel = relabel

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = int(self.indices[i])
        label = self.pool.labels[j]
        return self.pool.images[j], label if self.relabel is None else self.relabel[label]


class MnistTask:
    """`FederatedTask`, `Partitionable` and `CentralisedTask` for MNIST (see the module
    docstring)."""

    tokens_per_sample = None
    default_batch_size = BATCH_SIZE
    default_learning_rate = BASELINE_LR

    def initial_parameters(self, seed: int) -> Params:
        return params_from_module(make_model(seed))

    def site(self, data: str, device: str, seed: int) -> TorchTask:
        return self.site_of(DATA, _indices(data), device, seed)

    def examples(self, data: str) -> Examples:
        labels = _pool(data).labels.numpy().view()
        labels.flags.writeable = False
        return Examples(labels=labels)

    def site_of(self, data: str, indices: np.ndarray, device: str, seed: int) -> TorchTask:
        return self._site_of(data, indices, device, seed, None)

    def poisoned_site_of(
        self, data: str, indices: np.ndarray, device: str, seed: int, relabel: np.ndarray
    ) -> TorchTask:
        """The site at `indices` training on labels mapped by `relabel` (`quorum sim`'s
        labelflip attack); it evaluates on its true labels."""
        return self._site_of(
            data, indices, device, seed, torch.from_numpy(relabel.astype(np.int64))
        )

    def _site_of(
        self,
        data: str,
        indices: np.ndarray,
        device: str,
        seed: int,
        relabel: torch.Tensor | None,
    ) -> TorchTask:
        pool = _pool(data)
        own = np.asarray(indices)
        if own.ndim != 1 or (own.size and own.dtype.kind not in "iu"):
            raise TaskError(
                f"a site's indices must be a 1-D array of integers, got {own.dtype} of shape "
                f"{own.shape}"
            )
        own = own.astype(np.int64)
        if own.size and (own.min() < 0 or own.max() >= len(pool.is_train)):
            raise TaskError(
                f"a site's indices must be positions among the {len(pool.is_train)} MNIST "
                f"images, got values from {own.min()} to {own.max()}"
            )
        in_train = pool.is_train[own]
        return TorchTask(
            make_model(seed),
            Images(pool, own[in_train], relabel),
            Images(pool, own[~in_train]),
            nn.CrossEntropyLoss(),
            sgd,
            device=device,
            batch_size=BATCH_SIZE,
            seed=seed,
            lr=FEDERATED_LR,
            eval_batch_size=EVAL_BATCH_SIZE,
        )

    def build_model(self, seed: int, linears: LinearFactory) -> nn.Module:
        refuse_tensor_parallel(linears, "the MNIST CNN")
        return make_model(seed)

    def train_dataset(self, data: str) -> TensorDataset:
        return _gathered(_indices(data), train=True)

    def eval_dataset(self, data: str) -> TensorDataset:
        return _gathered(_indices(data), train=False)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(outputs, targets)

    def eval_metrics(
        self,
        model: nn.Module,
        dataset: Dataset[tuple[torch.Tensor, ...]],
        device: torch.device,
    ) -> dict[str, float]:
        return evaluate(model, dataset, device, self.loss, _hits, EVAL_BATCH_SIZE)


def _pool(data: str) -> Pool:
    if data != DATA:
        raise TaskError(f"unknown MNIST data set {data!r}: this task splits {DATA!r}")
    return shared_pool()


def _indices(data: str) -> np.ndarray:
    """The images a site's (or a centralised job's) `data` names."""
    size = mnist.TEST_SET_SIZE
    if data == "pooled":
        return np.arange(size)
    match = _SITE.fullmatch(data)
    if match is None:
        raise TaskError(
            f"unknown MNIST data {data!r}: use 'site-K-of-N' (1 <= K <= N) or 'pooled'; "
            f"`quorum sim` splits the data set {DATA!r} with [sim.partition]"
        )
    k, n = int(match[1]), int(match[2])
    if not 1 <= k <= n:
        raise TaskError(f"site {data!r}: K must be between 1 and N")
    order = np.random.default_rng(DEAL_SEED).permutation(size)
    part: np.ndarray = np.array_split(order, n)[k - 1]
    return part


def _gathered(indices: np.ndarray, *, train: bool) -> TensorDataset:
    """The training (or test) images among `indices`, copied into one TensorDataset: the
    centralised worker is a process of its own and indexes a TensorDataset fastest."""
    pool = shared_pool()
    chosen = torch.from_numpy(indices[pool.is_train[indices] == train])
    if len(chosen) == 0:
        raise TaskError(f"no {'training' if train else 'test'} images in this MNIST data")
    return TensorDataset(pool.images[chosen], pool.labels[chosen])


def _hits(logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    return int((logits.argmax(dim=-1) == targets).sum()), targets.numel()


task = MnistTask()
