"""The GPT-on-Tiny-Shakespeare federated task, through TorchTask, on tiny models."""

from __future__ import annotations

import math
import pathlib
from collections import Counter

import numpy as np
import pytest

from examples.shakespeare.task import ShakespeareTask, shared_corpus, task
from quorum.baseline.gpt import GPTConfig
from quorum.data import shakespeare
from quorum.errors import TaskError
from quorum.sim import partition
from quorum.task import FederatedTask, Partitionable, SiteTask, load_task

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


def test_speeches_as_examples_of_a_partition(tmp_path: pathlib.Path) -> None:
    path, vocab = _play(tmp_path, repeats=2)
    federated = ShakespeareTask(_tiny(vocab), path=path)
    assert isinstance(federated, Partitionable)
    examples = federated.examples("shakespeare")
    speakers = [who for _ in range(2) for who, _ in SPEECHES]
    assert examples.owners is not None
    assert examples.labels.tolist() == examples.owners.tolist() == speakers
    assert not examples.labels.flags.writeable
    assert partition.owner_names(examples.labels) == ["ROMEO", "JULIET", "Nurse"]
    with pytest.raises(TaskError, match="unknown Shakespeare data set 'pooled'"):
        federated.examples("pooled")


def test_the_text_is_parsed_once_per_file(tmp_path: pathlib.Path) -> None:
    path, _ = _play(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    assert shared_corpus(path) is shared_corpus(str(path))
    assert shared_corpus(path) is not shared_corpus(_play(other)[0])


def test_any_partition_of_the_speeches_keeps_the_pooled_texts(tmp_path: pathlib.Path) -> None:
    path, vocab = _play(tmp_path)
    federated = ShakespeareTask(_tiny(vocab), path=path)
    pooled_train, pooled_validation, _ = federated.texts("pooled")
    labels = federated.examples("shakespeare").labels
    for parts in (
        partition.split("iid", labels, 5, seed=2),
        partition.split("shards", labels, 3, seed=0),
    ):
        texts = [federated.texts_of("shakespeare", part) for part in parts]
        assert Counter("".join(t for t, _, _ in texts)) == Counter(pooled_train)
        assert Counter("".join(v for _, v, _ in texts)) == Counter(pooled_validation)


def test_a_site_of_speeches_trains_on_its_training_side_only(tmp_path: pathlib.Path) -> None:
    path, vocab = _play(tmp_path)
    federated = ShakespeareTask(_tiny(vocab), path=path, batch_size=4)
    text = path.read_text(encoding="utf-8")
    speeches = shakespeare.parse_speeches(text)
    held_out = shakespeare.held_out(speeches)
    romeo = [i for i, s in enumerate(speeches) if s.speaker == "ROMEO"]
    # Given out of order, the speeches are still taken in file order.
    train, validation, _ = federated.texts_of("shakespeare", np.array(romeo[::-1]))
    assert train == "".join(speeches[i].text(text) for i in romeo if not held_out[i])
    assert validation == "".join(speeches[i].text(text) for i in romeo if held_out[i])
    assert validation and train
    site = federated.site_of("shakespeare", np.array(romeo), "cpu", seed=0)
    assert len(site.train_batches) == len(shakespeare.windows(np.zeros(len(train)), 8)[0])
    initial = federated.initial_parameters(0)
    fit = site.fit(initial, {"local_steps": 2, "round": 1, "seed": 0})
    assert fit.num_examples == len(site.train_batches) > 0 and math.isfinite(fit.metrics["loss"])
    evaluation = site.evaluate(fit.params, {})
    assert evaluation.num_examples == len(site.test_batches) > 0
    assert math.isfinite(evaluation.metrics["loss"])


def test_a_speaker_with_less_text_than_a_window(tmp_path: pathlib.Path) -> None:
    path, _ = _play(tmp_path)
    text = path.read_text(encoding="utf-8") + "Page:\nAnon!\n\n"
    path.write_text(text, encoding="utf-8")
    vocab = shakespeare.vocabulary(text).size
    config = GPTConfig(vocab_size=vocab, block_size=32, n_layer=1, n_head=2, n_embd=16)
    federated = ShakespeareTask(config, path=path)
    speeches = shakespeare.parse_speeches(text)
    page = np.array([len(speeches) - 1])
    site = federated.site_of("shakespeare", page, "cpu", seed=0)
    # Its one speech (13 characters) is one window of 12 tokens, shorter than the block.
    inputs, targets = next(site.train_batches.epoch())
    assert inputs.shape == targets.shape == (1, 12)
    assert shakespeare.vocabulary(text).decode(targets[0].numpy()) == "age:\nAnon!\n\n"
    fit = site.fit(federated.initial_parameters(0), {"local_steps": 3})
    assert fit.num_examples == 1 and math.isfinite(fit.metrics["loss"])
    # A role's only speech trains: there is nothing to evaluate on.
    evaluation = site.evaluate(fit.params, {})
    assert evaluation.num_examples == 0 and evaluation.metrics == {}
    # Whole-block windows where the text allows, as for `site-K-of-N`.
    nurse = np.array([i for i, s in enumerate(speeches) if s.speaker == "Nurse"])
    site = federated.site_of("shakespeare", nurse, "cpu", seed=0)
    assert next(site.train_batches.epoch())[0].shape[1] == 32


def test_a_site_without_training_speeches_cannot_fit(tmp_path: pathlib.Path) -> None:
    path, vocab = _play(tmp_path)
    federated = ShakespeareTask(_tiny(vocab), path=path)
    speeches = shakespeare.parse_speeches(path.read_text(encoding="utf-8"))
    held = np.flatnonzero(shakespeare.held_out(speeches))
    site = federated.site_of("shakespeare", held, "cpu", seed=0)
    assert site.evaluate(federated.initial_parameters(0), {}).num_examples > 0
    with pytest.raises(TaskError, match="no training examples"):
        site.fit(federated.initial_parameters(0), {"local_steps": 1})


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        (np.zeros((2, 2), dtype=np.int64), "1-D array of integers"),
        (np.array([0.0, 1.0]), "1-D array of integers"),
        (np.array([0, 36]), "among the 36 speeches, got values from 0 to 36"),
        (np.array([-1]), "from -1 to -1"),
    ],
)
def test_bad_indices(tmp_path: pathlib.Path, indices: np.ndarray, message: str) -> None:
    path, vocab = _play(tmp_path)
    with pytest.raises(TaskError, match=message):
        ShakespeareTask(_tiny(vocab), path=path).site_of("shakespeare", indices, "cpu", seed=0)


@pytest.fixture(scope="module")
def speaker_parts() -> list[np.ndarray]:
    labels = task.examples("shakespeare").labels
    return partition.split("natural", labels, None, 0, owners=labels)


@real_data
def test_every_role_is_a_site(speaker_parts: list[np.ndarray]) -> None:
    examples = task.examples("shakespeare")
    assert examples.labels.shape == (7222,)
    assert len(speaker_parts) == 308
    assert partition.owner_names(examples.labels)[:2] == ["First Citizen", "All"]
    pooled_train, pooled_validation, _ = task.texts("pooled")
    sides = [task.texts_of("shakespeare", part) for part in speaker_parts]
    assert sum(len(t) for t, _, _ in sides) == len(pooled_train)
    assert sum(len(v) for _, v, _ in sides) == len(pooled_validation)
    assert Counter("".join(t for t, _, _ in sides)) == Counter(pooled_train)
    # Every role trains (its first speech always does); 126 have nothing held out.
    assert min(len(t) for t, _, _ in sides) == 12
    assert sum(not v for _, v, _ in sides) == 126


@real_data
def test_real_speaker_sites(speaker_parts: list[np.ndarray]) -> None:
    federated = ShakespeareTask(_tiny(65), batch_size=16)
    labels = federated.examples("shakespeare").labels
    initial = federated.initial_parameters(0)
    for name, evaluates in (("ROMEO", True), ("ALL", False)):
        (part,) = [p for p in speaker_parts if labels[p[0]] == name]
        site = federated.site_of("shakespeare", part, "cpu", seed=0)
        fit = site.fit(initial, {"local_steps": 2, "round": 1, "seed": 0})
        assert fit.num_examples >= 1 and math.isfinite(fit.metrics["loss"])
        evaluation = site.evaluate(fit.params, {})
        assert (evaluation.num_examples > 0) == evaluates
