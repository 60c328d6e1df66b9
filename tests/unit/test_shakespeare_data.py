"""Tiny Shakespeare: the copy bundled in quorum/data/tinyshakespeare, and small hand-made plays."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from quorum.data import shakespeare
from quorum.errors import TaskError

real_data = pytest.mark.skipif(
    not shakespeare.default_path().is_file(),
    reason=f"Tiny Shakespeare not found at {shakespeare.default_path()} (the copy bundled with "
    "the package)",
)

PLAY = (
    "First Citizen:\nBefore we proceed.\n\n"
    "All:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are resolved?\nResolved.\n\n"
    "MENENIUS:\n\n"
    "All:\nWe know't.\n\n\n"
    "LADY  CAPULET:\nShort.\n\n"
    "First Citizen:\nLet us kill him.\n"
)


@pytest.fixture(scope="module")
def text() -> str:
    return shakespeare.read_text()


@real_data
def test_the_real_file(text: str) -> None:
    assert len(text) == 1_115_394
    vocabulary = shakespeare.vocabulary(text)
    assert vocabulary.size == 65
    assert vocabulary.chars[:2] == "\n " and vocabulary.chars.endswith("xyz")
    ids = vocabulary.encode(text)
    assert ids.dtype == np.int64 and ids.shape == (len(text),)
    assert ids[:5].tolist() == [18, 47, 56, 57, 58]  # "First", as nanoGPT's prepare.py encodes it
    assert vocabulary.decode(ids) == text
    train, validation = shakespeare.train_validation(text)
    assert (len(train), len(validation)) == (1_003_854, 111_540)


@real_data
def test_real_speakers(text: str) -> None:
    speeches = shakespeare.parse_speeches(text)
    assert len(speeches) == 7222
    assert "".join(s.text(text) for s in speeches) == text
    names = shakespeare.speakers(speeches)
    assert len(names) == 308
    assert "LADY CAPULET" in names and "LADY  CAPULET" not in names
    assert {"Senators, &C", "KING RICHARD III", "First Citizen", "Nurse", "NURSE"} <= set(names)
    assert sum(s.speaker == "GLOUCESTER" for s in speeches) == 229


@real_data
@pytest.mark.parametrize("num_sites", [1, 4, 7, 64])
def test_real_site_split_is_a_partition_of_the_speakers(text: str, num_sites: int) -> None:
    sites = shakespeare.site_texts(text, num_sites)
    assert len(sites) == num_sites
    everyone = [name for site in sites for name in site.speakers]
    assert len(everyone) == len(set(everyone)) == 308
    pooled_train, pooled_validation = shakespeare.pooled_texts(text)
    assert sum(len(s.train) for s in sites) == len(pooled_train)
    assert sum(len(s.validation) for s in sites) == len(pooled_validation)
    assert all(s.train and s.validation for s in sites)
    sizes = [len(s.train) for s in sites]
    assert max(sizes) <= 1.01 * min(sizes) or num_sites == 64
    assert shakespeare.site_texts(text, num_sites) == sites


@real_data
def test_real_role_hold_out(text: str) -> None:
    train, validation = shakespeare.pooled_texts(text)
    assert len(train) + len(validation) == len(text)
    assert 0.09 < len(validation) / len(text) < 0.11


def test_speeches_tile_the_text_and_names_are_normalised() -> None:
    speeches = shakespeare.parse_speeches(PLAY)
    assert [s.speaker for s in speeches] == [
        "First Citizen",
        "All",
        "First Citizen",
        "MENENIUS",
        "All",
        "LADY CAPULET",
        "First Citizen",
    ]
    assert "".join(s.text(PLAY) for s in speeches) == PLAY
    assert speeches[3].text(PLAY) == "MENENIUS:\n\n"
    assert speeches[4].text(PLAY) == "All:\nWe know't.\n\n\n"
    assert shakespeare.speakers(speeches) == ["All", "First Citizen", "LADY CAPULET", "MENENIUS"]


def test_crlf_line_endings_and_leading_blank_lines() -> None:
    text = "\r\n\r\nALL:\r\nYes.\r\n\r\nBOTH:\r\nNo.\r\n"
    speeches = shakespeare.parse_speeches(text)
    assert [s.speaker for s in speeches] == ["ALL", "BOTH"]
    assert "".join(s.text(text) for s in speeches) == text


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("Hello there\n", "line 1"),
        ("ALL:\nYes.\n\nnot a speaker:\nNo.\n", "line 4"),
        ("ALL:\nYes.\n\nHe said: no\n", "line 4"),
        ("\n\n", "no speaker line"),
    ],
)
def test_text_that_is_not_a_play(bad: str, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        shakespeare.parse_speeches(bad)


def test_role_hold_out_keeps_the_last_tenth_of_each_role() -> None:
    # The rule compares the middle character of each speech with 90% of its speaker's characters.
    text = "A:\n" + "x" * 85 + "\n\n" + "A:\n" + "y" * 5 + "\n\n" + "B:\nonly\n"
    speeches = shakespeare.parse_speeches(text)
    # A has 90 + 10 = 100 characters; its second speech's middle (95) is past 90: validation.
    # B's only speech has its middle at half its length: training.
    assert shakespeare.held_out(speeches) == [False, True, False]
    assert shakespeare.training_characters(speeches) == {"A": 90, "B": 8}
    train, validation = shakespeare.pooled_texts(text)
    assert validation == "A:\nyyyyy\n\n"
    assert train + validation != text and sorted(train + validation) == sorted(text)


def test_speakers_are_dealt_largest_first_to_the_lightest_site() -> None:
    weights = {"a": 5, "b": 4, "c": 3, "d": 3, "e": 0}
    # a -> 0 (5), b -> 1 (4), c -> 1 (7), d -> 0 (8), e -> 1 (7).
    assert shakespeare.assign_speakers(weights, 2) == [("a", "d"), ("b", "c", "e")]
    assert shakespeare.assign_speakers(weights, 1) == [("a", "b", "c", "d", "e")]
    with pytest.raises(TaskError, match="only 5 speakers"):
        shakespeare.assign_speakers(weights, 6)
    with pytest.raises(TaskError, match="at least 1"):
        shakespeare.assign_speakers(weights, 0)


def test_site_texts_of_a_small_play() -> None:
    sites = shakespeare.site_texts(PLAY, 2)
    assert [s.speakers for s in sites] == [("First Citizen",), ("All", "LADY CAPULET", "MENENIUS")]
    assert sites[0].train.startswith("First Citizen:\nBefore") and "All:" not in sites[0].train


def test_vocabulary_round_trip_and_errors() -> None:
    vocabulary = shakespeare.vocabulary("hello, world\n")
    assert vocabulary.chars == "\n ,dehlorw"
    ids = vocabulary.encode("world, hello")
    assert vocabulary.decode(ids) == "world, hello"
    assert vocabulary.decode([]) == "" and vocabulary.encode("").shape == (0,)
    with pytest.raises(TaskError, match="'!' at position 5"):
        vocabulary.encode("hello!")
    with pytest.raises(TaskError, match="token id 10"):
        vocabulary.decode([1, 10])
    with pytest.raises(TaskError, match="token id -1"):
        vocabulary.decode(np.array([-1]))
    with pytest.raises(TaskError, match="sorted and distinct"):
        shakespeare.Vocabulary("ba")


def test_windows_are_shifted_by_one() -> None:
    ids = np.arange(10)
    inputs, targets = shakespeare.windows(ids, 4)
    assert inputs.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert targets.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    inputs, targets = shakespeare.windows(ids, 4, stride=3)
    assert inputs[:, 0].tolist() == [0, 3] and targets[-1].tolist() == [4, 5, 6, 7]
    assert shakespeare.windows(ids[:4], 4)[0].shape == (0, 4)
    assert shakespeare.windows(ids[:5], 4)[0].shape == (1, 4)
    assert inputs.dtype == np.int64
    with pytest.raises(TaskError, match="stride"):
        shakespeare.windows(ids, 4, stride=0)


def test_unreadable_files(tmp_path: pathlib.Path) -> None:
    with pytest.raises(TaskError, match="no such file"):
        shakespeare.read_text(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(TaskError, match="empty"):
        shakespeare.read_text(empty)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("ALL:\ncafé\n".encode("latin-1"))
    with pytest.raises(TaskError, match="not UTF-8"):
        shakespeare.read_text(latin)
    with pytest.raises(TaskError, match="cannot read"):
        shakespeare.read_text(tmp_path)
