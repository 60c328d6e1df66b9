"""The MNIST example task: its examples, sites built from indices, and the centralised side."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from examples.mnist.task import N_TEST, N_TRAIN, SPLIT_SEED, Images, shared_pool, task
from quorum.baseline.gpt import DenseLinears
from quorum.baseline.task import CentralisedTask
from quorum.data import mnist
from quorum.errors import ConfigError, TaskError
from quorum.task import FederatedTask, Partitionable
from quorum.torch_task import TorchTask

TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
TRAIN, TEST = mnist.split_indices(mnist.TEST_SET_SIZE, N_TRAIN, N_TEST, SPLIT_SEED)
FIT = {"lr": 0.05, "local_epochs": 1, "batch_size": 16, "round": 1, "seed": 0}


class _SplitLinears(DenseLinears):
    parallel_size = 2


def _datasets(site: TorchTask) -> tuple[Images, Images]:
    train, test = site.train_batches.dataset, site.test_batches.dataset
    assert isinstance(train, Images) and isinstance(test, Images)
    return train, test


def test_protocols() -> None:
    assert isinstance(task, FederatedTask)
    assert isinstance(task, Partitionable)
    assert isinstance(task, CentralisedTask)


def test_examples_are_the_labels_of_every_image() -> None:
    examples = task.examples("mnist")
    assert examples.owners is None
    assert examples.labels.shape == (mnist.TEST_SET_SIZE,)
    assert examples.labels.dtype == np.int64
    assert np.bincount(examples.labels, minlength=10).tolist() == TEST_CLASS_COUNTS
    assert not examples.labels.flags.writeable
    with pytest.raises(TaskError, match="unknown MNIST data set 'cifar'"):
        task.examples("cifar")


def test_a_site_trains_and_evaluates_on_its_own_images_only() -> None:
    indices = np.random.default_rng(3).choice(mnist.TEST_SET_SIZE, 150, replace=False)
    site = task.site_of("mnist", indices, "cpu", 0)
    train, test = _datasets(site)
    assert set(train.indices.tolist()) == set(indices.tolist()) & set(TRAIN.tolist())
    assert set(test.indices.tolist()) == set(indices.tolist()) & set(TEST.tolist())
    initial = task.initial_parameters(0)
    fit = site.fit(initial, FIT)
    assert fit.num_examples == len(train) > 0
    assert np.isfinite(fit.metrics["loss"])
    assert any(not np.array_equal(fit.params[k], initial[k]) for k in initial)
    result = site.evaluate(fit.params, {})
    assert result.num_examples == len(test) > 0
    assert 0.0 <= result.metrics["accuracy"] <= 1.0


def test_a_site_without_test_images_evaluates_to_nothing() -> None:
    site = task.site_of("mnist", TRAIN[:20], "cpu", 0)
    assert site.evaluate(task.initial_parameters(0), {}).num_examples == 0
    assert site.evaluate(task.initial_parameters(0), {}).metrics == {}
    assert site.fit(task.initial_parameters(0), FIT).num_examples == 20


def test_sites_hold_indices_into_one_shared_copy() -> None:
    pool = shared_pool()
    owner = np.random.default_rng(0).integers(0, 100, size=mnist.TEST_SET_SIZE)
    sites = [task.site_of("mnist", np.flatnonzero(owner == k), "cpu", k) for k in range(100)]
    storage = pool.images.untyped_storage().data_ptr()
    for site in sites:
        for dataset in _datasets(site):
            assert dataset.pool is pool
            assert dataset.indices.dtype == np.int64 and dataset.indices.ndim == 1
            if len(dataset):
                image, _ = dataset[0]
                assert image.untyped_storage().data_ptr() == storage
    # The per-image rule: the sites' training images are the pooled training set, their test
    # images the pooled test set, each image at one site only.
    trained = np.concatenate([_datasets(s)[0].indices for s in sites])
    tested = np.concatenate([_datasets(s)[1].indices for s in sites])
    assert len(trained) == N_TRAIN and np.array_equal(np.sort(trained), np.sort(TRAIN))
    assert len(tested) == N_TEST and np.array_equal(np.sort(tested), np.sort(TEST))


def test_bad_indices_and_data_names() -> None:
    with pytest.raises(TaskError, match="1-D array of integers"):
        task.site_of("mnist", np.array([0.5, 1.0]), "cpu", 0)
    with pytest.raises(TaskError, match="values from 0 to 10000"):
        task.site_of("mnist", np.array([0, 10_000]), "cpu", 0)
    with pytest.raises(TaskError, match="unknown MNIST data set"):
        task.site_of("fashion", np.array([0]), "cpu", 0)
    with pytest.raises(TaskError, match="use 'site-K-of-N'"):
        task.site("mnist", "cpu", 0)
    with pytest.raises(TaskError, match="K must be between 1 and N"):
        task.site("site-5-of-4", "cpu", 0)


def test_named_sites_deal_every_image_once() -> None:
    parts = [task.site(f"site-{k}-of-3", "cpu", 0) for k in (1, 2, 3)]
    held = np.concatenate([d.indices for site in parts for d in _datasets(site)])
    assert np.array_equal(np.sort(held), np.arange(mnist.TEST_SET_SIZE))


def test_centralised_side() -> None:
    train, test = task.train_dataset("pooled"), task.eval_dataset("pooled")
    assert len(train) == N_TRAIN and len(test) == N_TEST
    split = mnist.load_split(n_train=N_TRAIN, n_test=N_TEST, seed=SPLIT_SEED)
    assert np.array_equal(np.sort(train.tensors[1].numpy()), np.sort(split.y_train))
    site_train, site_test = task.train_dataset("site-1-of-4"), task.eval_dataset("site-1-of-4")
    assert len(site_train) + len(site_test) == 2500 and 400 < len(site_test) < 600
    model = task.build_model(0, DenseLinears())
    assert sum(p.numel() for p in model.parameters()) == 9098
    for name, value in model.state_dict().items():
        assert np.array_equal(value.numpy(), task.initial_parameters(0)[name])
    metrics = task.eval_metrics(model, test, torch.device("cpu"))
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["loss"] > 0
    with pytest.raises(ConfigError, match="tensor_parallel=1"):
        task.build_model(0, _SplitLinears())
