"""The GPT-on-Tiny-Shakespeare federated task, through TorchTask, on tiny models."""

from __future__ import annotations

import math
import pathlib

import numpy as np
import pytest

from examples.shakespeare.task import ShakespeareTask
from quorum.baseline.gpt import GPTConfig
from quorum.data import shakespeare
from quorum.errors import TaskError
from quorum.task import FederatedTask, SiteTask, load_task

real_data = pytest.mark.skipif(
    not shakespeare.default_path().is_file(),
    reason=f"Tiny Shakespeare not found at {shakespeare.default_path()}",
)

SPEECHES = [
    ("ROMEO", "But soft, what light through yonder window breaks?"),
    ("JULIET", "O Romeo, Romeo, wherefore art thou Romeo?"),
    ("Nurse", "Madam, your mother craves a word with you."),
    ("ROMEO", "It is the east, and Juliet is the sun."),
    ("JULIET", "Deny thy father and refuse thy name."),
    ("Nurse", "Your mother."),
]


def _play(tmp_path: pathlib.Path, repeats: int = 6) -> tuple[pathlib.Path, int]:
    text = "".join(f"{who}:\n{line}\n\n" for _ in range(repeats) for who, line in SPEECHES)
    path = tmp_path / "play.txt"
    path.write_text(text, encoding="utf-8")
    return path, shakespeare.vocabulary(text).size


def _tiny(vocab_size: int) -> GPTConfig:
    return GPTConfig(vocab_size=vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16)


def test_fit_and_evaluate_through_torch_task(tmp_path: pathlib.Path) -> None:
    path, vocab = _play(tmp_path)
    federated = ShakespeareTask(_tiny(vocab), path=path, batch_size=16, lr=3e-3)
    assert isinstance(federated, FederatedTask)
    initial = federated.initial_parameters(seed=1)
    site = federated.site("site-1-of-2", "cpu", seed=1)
    assert isinstance(site, SiteTask)
    before = site.evaluate(initial, {})
    result = site.fit(initial, {"local_epochs": 3})
    after = site.evaluate(result.params, {})
    assert list(result.params) == list(initial)
    assert result.num_examples == len(site.train_batches) > 0
    assert math.isfinite(result.metrics["loss"])
    assert before.num_examples == after.num_examples == len(site.test_batches) > 0
    assert before.metrics["loss"] == pytest.approx(math.log(vocab), rel=0.1)
    assert after.metrics["loss"] < before.metrics["loss"]
    assert 0.0 <= before.metrics["accuracy"] < after.metrics["accuracy"] <= 1.0


def test_the_same_seed_gives_the_same_model(tmp_path: pathlib.Path) -> None:
    path, vocab = _play(tmp_path)
    federated = ShakespeareTask(_tiny(vocab), path=path)
    a, b = federated.initial_parameters(7), federated.initial_parameters(7)
    assert all(np.array_equal(a[name], b[name]) for name in a)
    assert not np.array_equal(a["wte.weight"], federated.initial_parameters(8)["wte.weight"])


def test_windows_of_a_site(tmp_path: pathlib.Path) -> None:
    path, vocab = _play(tmp_path)
    federated = ShakespeareTask(_tiny(vocab), path=path, stride=4)
    train, validation, vocabulary = federated.texts("site-2-of-2")
    site = federated.site("site-2-of-2", "cpu", seed=0)
    inputs, targets = next(site.train_batches.epoch())
    assert inputs.shape[1] == targets.shape[1] == 8
    assert vocabulary.decode(inputs[0].numpy()) == train[:8]
    assert vocabulary.decode(targets[0].numpy()) == train[1:9]
    assert len(site.train_batches) == (len(train) - 9) // 4 + 1
    assert len(site.test_batches) == (len(validation) - 9) // 4 + 1


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("site-0-of-2", "between 1 and N"),
        ("site-3-of-2", "between 1 and N"),
        ("site-1-of-4", "only 3 speakers"),
        ("everything", "unknown Shakespeare data"),
    ],
)
def test_bad_data_names(tmp_path: pathlib.Path, data: str, message: str) -> None:
    path, vocab = _play(tmp_path)
    with pytest.raises(TaskError, match=message):
        ShakespeareTask(_tiny(vocab), path=path).site(data, "cpu", seed=0)


def test_a_site_without_a_window_of_text(tmp_path: pathlib.Path) -> None:
    path, vocab = _play(tmp_path, repeats=1)
    config = GPTConfig(vocab_size=vocab, block_size=64, n_layer=1, n_head=1, n_embd=8)
    with pytest.raises(TaskError, match="too little validation text"):
        ShakespeareTask(config, path=path).site("site-1-of-3", "cpu", seed=0)


def test_missing_file_and_vocabulary_mismatch(tmp_path: pathlib.Path) -> None:
    with pytest.raises(TaskError, match="no such file"):
        ShakespeareTask(path=tmp_path / "none.txt").site("pooled", "cpu", seed=0)
    path, _ = _play(tmp_path)
    with pytest.raises(TaskError, match="vocab_size is 65"):
        ShakespeareTask(path=path).site("pooled", "cpu", seed=0)


def test_the_run_can_name_the_task() -> None:
    assert isinstance(load_task("examples.shakespeare.task:task"), FederatedTask)


@real_data
def test_a_real_site() -> None:
    federated = ShakespeareTask(_tiny(65), batch_size=32)
    site = federated.site("site-3-of-4", "cpu", seed=0)
    result = site.fit(federated.initial_parameters(0), {"local_steps": 2})
    evaluation = site.evaluate(result.params, {})
    assert evaluation.num_examples > 1000 and math.isfinite(evaluation.metrics["loss"])
