"""Tiny Shakespeare: characters as tokens, train/validation splits, and sites by speaking role.

The file is karpathy/char-rnn's `data/tinyshakespeare/input.txt` (1,115,394 characters, 65
distinct; provenance and licence, MIT with public-domain text, in
`quorum/data/tinyshakespeare/PROVENANCE.md`). It is bundled in the package: `default_path()` is
the installed copy; anything else passes its own path.

- Tokens are characters. `vocabulary(text)` is the sorted set of the characters of the whole file
  (so it does not depend on any split): 65 tokens, newline first.
- nanoGPT's split (`train_validation`): the first 90% of the characters train, the last 10%
  validate, cut at character `int(0.9 * len(text))` as nanoGPT's `shakespeare_char` does, so that
  validation losses compare with nanoGPT's.
- Speeches: the file is a sequence of speeches separated by blank lines. A speech starts with a
  speaker line, the speaker's name and a colon alone on a line (`First Citizen:`, `KING RICHARD
  III:`, `Senators, &C:`), and runs until the next speaker line; its text (`Speech.text`) keeps the
  speaker line and the blank lines after it, so the speeches concatenated in order are the file,
  character for character. 125 speeches are a bare speaker line (a stage direction was cut).
- Speakers: the name is the speaker line without its colon, with runs of spaces collapsed
  (`LADY  CAPULET:` occurs once beside 44 `LADY CAPULET:`). Case is kept: the labels are the
  file's roles (`Nurse` and `NURSE`, `All` and `ALL` are spelt so in different plays, and merging
  labels is a judgement the file does not make). That gives 308 speakers; the raw labels give 309
  and case-folded ones 302.
- Role hold-out (`held_out`), the split of the federation: each speaker keeps the last tenth of
  its own text, rounded to whole speeches, for validation: a speech validates when its middle
  character lies past 90% of its speaker's characters (in file order). 9.7% of the file
  validates, and 182 roles, holding 96% of the text, are on both sides (a role whose last speech
  is long keeps all its text for training). nanoGPT's cut cannot serve a federation: the last 10%
  of the file is the ends of two plays (The Taming of the Shrew, The Tempest) with 39 roles, so
  with 8 or more sites some whole sites would have nothing to validate on.
  `pooled_texts` is its union, the data of the centralised baseline that a federated run of this
  split compares with.
- Sites: `assign_speakers` deals the speakers, largest first by training characters (ties by
  name), each to the site holding the fewest training characters so far (the lowest-numbered site
  on ties). Sites get near-equal amounts of training text (within 0.01% for 4 sites) while each
  keeps whole roles, and the rule has no seed, so every process that builds the split gets the
  same one. A site's texts (`site_texts`) are its speakers' speeches, each side concatenated in
  file order. Up to 64 sites, every site has at least 302 validation characters; from 92 sites
  on, some have none.

Everything here is a pure function of the text; token ids are int64 numpy arrays.
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from quorum.errors import TaskError

FILE_NAME = "input.txt"
VALIDATION_FRACTION = 0.1
SPEAKER_LINE = re.compile(r"[A-Z][A-Za-z ,&'-]*:")
"""A speaker line: a capitalised name (title case or capitals, with spaces, commas, `&`,
apostrophes and hyphens) and a colon, the whole line."""


def default_path() -> pathlib.Path:
    """The copy bundled with the package (`quorum/data/tinyshakespeare/input.txt`)."""
    return pathlib.Path(__file__).resolve().parent / "tinyshakespeare" / FILE_NAME


def read_text(path: str | os.PathLike[str] | None = None) -> str:
    """The text of the file at `path` (default: `default_path()`), decoded as UTF-8 with its
    line endings as they are. TaskError, naming the file, when it is missing, unreadable, not
    UTF-8 or empty."""
    file = default_path() if path is None else pathlib.Path(path)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        hint = (
            " (the copy bundled with the package is missing: reinstall quorum-fl, or pass the "
            "path of char-rnn's data/tinyshakespeare/input.txt)"
            if path is None
            else ""
        )
        raise TaskError(f"{file}: no such file{hint}") from None
    except OSError as exc:
        raise TaskError(f"{file}: cannot read the file ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TaskError(f"{file}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    if not text:
        raise TaskError(f"{file}: the file is empty")
    return text


@dataclass(frozen=True)
class Vocabulary:
    """Characters as token ids: id `i` is `chars[i]`; `chars` is sorted and has no repeats."""

    chars: str

    def __post_init__(self) -> None:
        if not self.chars:
            raise TaskError("a vocabulary needs at least one character")
        if list(self.chars) != sorted(set(self.chars)):
            raise TaskError("a vocabulary's characters must be sorted and distinct")

    @property
    def size(self) -> int:
        return len(self.chars)

    def _codepoints(self) -> np.ndarray:
        return _codepoints(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """The token ids of `text`: int64, shape (len(text),). TaskError, naming the first one,
        when `text` has a character outside the vocabulary."""
        points = _codepoints(text)
        table = self._codepoints()
        # Sorted characters are sorted code points, so one binary search maps every character.
        ids = np.searchsorted(table, points)
        found = ids < len(table)
        found[found] = table[ids[found]] == points[found]
        if not found.all():
            position = int(np.argmin(found))
            raise TaskError(
                f"character {text[position]!r} at position {position} is not in the vocabulary "
                f"of {self.size} characters"
            )
        return ids.astype(np.int64)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """The text of token ids (any integer sequence or array); TaskError for an id outside
        0..size-1."""
        array = np.asarray(ids, dtype=np.int64).reshape(-1)
        if array.size and (int(array.min()) < 0 or int(array.max()) >= self.size):
            bad = int(array[(array < 0) | (array >= self.size)][0])
            raise TaskError(f"token id {bad} is outside the vocabulary (0..{self.size - 1})")
        return self._codepoints()[array].astype("<u4").tobytes().decode("utf-32-le")


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4").astype(np.int64)


def vocabulary(text: str) -> Vocabulary:
    """The sorted set of the characters of `text` (of the whole file, so that every split and
    every site shares one vocabulary)."""
    return Vocabulary("".join(sorted(set(text))))


def split_index(length: int) -> int:
    """Where nanoGPT cuts a text of `length` characters: the last 10% validate."""
    return int(length * (1 - VALIDATION_FRACTION))


def train_validation(text: str) -> tuple[str, str]:
    """The pooled split: the first 90% of the characters and the last 10% (nanoGPT's cut)."""
    cut = split_index(len(text))
    return text[:cut], text[cut:]


@dataclass(frozen=True)
class Speech:
    """One speech: `text[start:end]` of the file, from its speaker line to the next one."""

    speaker: str
    start: int
    end: int

    def text(self, of: str) -> str:
        return of[self.start : self.end]


def parse_speeches(text: str) -> list[Speech]:
    """The speeches of the play text, in file order; they tile the text (see the module
    docstring; blank lines before the first speaker line go to the first speech). TaskError when
    a paragraph (a run of non-blank lines) does not start with a speaker line."""
    speeches: list[Speech] = []
    offset = 0
    start = -1
    speaker = ""
    previous_blank = True
    for number, line in enumerate(text.split("\n"), start=1):
        content = line.removesuffix("\r")
        blank = not content.strip()
        if previous_blank and not blank:
            if not SPEAKER_LINE.fullmatch(content):
                raise TaskError(
                    f"line {number} ({content[:60]!r}) starts a paragraph but is not a speaker "
                    "line (a name and a colon alone on the line): not the Tiny Shakespeare format"
                )
            if start >= 0:
                speeches.append(Speech(speaker, start, offset))
            start = offset
            speaker = " ".join(content[:-1].split())
        previous_blank = blank
        offset += len(line) + 1
    if start < 0:
        raise TaskError("the text has no speaker line: not the Tiny Shakespeare format")
    speeches.append(Speech(speaker, start, len(text)))
    if speeches[0].start != 0:
        speeches[0] = Speech(speeches[0].speaker, 0, speeches[0].end)
    return speeches


def speakers(speeches: Sequence[Speech]) -> list[str]:
    """The distinct speakers, sorted."""
    return sorted({s.speaker for s in speeches})


def held_out(speeches: Sequence[Speech]) -> list[bool]:
    """For each speech, whether it is on the validation side of the role hold-out: its middle
    character lies past 90% of its speaker's characters, counted in file order."""
    totals: dict[str, int] = {}
    for s in speeches:
        totals[s.speaker] = totals.get(s.speaker, 0) + s.end - s.start
    before = dict.fromkeys(totals, 0)
    out = []
    for s in speeches:
        length = s.end - s.start
        middle = before[s.speaker] + length / 2
        out.append(middle > (1 - VALIDATION_FRACTION) * totals[s.speaker])
        before[s.speaker] += length
    return out


def training_characters(speeches: Sequence[Speech]) -> dict[str, int]:
    """Characters of each speaker's training-side speeches under the role hold-out."""
    counts = dict.fromkeys(speakers(speeches), 0)
    for s, validation in zip(speeches, held_out(speeches), strict=True):
        if not validation:
            counts[s.speaker] += s.end - s.start
    return counts


def assign_speakers(weights: dict[str, int], num_sites: int) -> list[tuple[str, ...]]:
    """Speakers dealt to `num_sites` sites, largest weight first (ties by name), each to the
    site with the smallest total weight so far (the lowest index on ties). Each site's speakers
    are returned sorted. TaskError when there are fewer speakers than sites."""
    if num_sites < 1:
        raise TaskError(f"the number of sites must be at least 1, got {num_sites}")
    if num_sites > len(weights):
        raise TaskError(
            f"{num_sites} sites but only {len(weights)} speakers: each site needs one at least"
        )
    loads = [0] * num_sites
    groups: list[list[str]] = [[] for _ in range(num_sites)]
    for name in sorted(weights, key=lambda n: (-weights[n], n)):
        site = min(range(num_sites), key=lambda i: (loads[i], i))
        groups[site].append(name)
        loads[site] += weights[name]
    return [tuple(sorted(group)) for group in groups]


@dataclass(frozen=True)
class SiteText:
    """One site of the speaker split: its speakers and their speeches on each side."""

    speakers: tuple[str, ...]
    train: str
    validation: str


def site_texts(text: str, num_sites: int) -> list[SiteText]:
    """The federated split of the play into `num_sites` sites (see the module docstring)."""
    speeches = parse_speeches(text)
    groups = assign_speakers(training_characters(speeches), num_sites)
    site_of = {name: index for index, group in enumerate(groups) for name in group}
    train: list[list[str]] = [[] for _ in groups]
    validation: list[list[str]] = [[] for _ in groups]
    for s, validates in zip(speeches, held_out(speeches), strict=True):
        side = validation if validates else train
        side[site_of[s.speaker]].append(s.text(text))
    return [
        SiteText(group, "".join(t), "".join(v))
        for group, t, v in zip(groups, train, validation, strict=True)
    ]


def pooled_texts(text: str) -> tuple[str, str]:
    """The role hold-out of the whole play, every site's data pooled: (train, validation), each
    in file order."""
    speeches = parse_speeches(text)
    train: list[str] = []
    validation: list[str] = []
    for s, validates in zip(speeches, held_out(speeches), strict=True):
        (validation if validates else train).append(s.text(text))
    return "".join(train), "".join(validation)


def windows(
    ids: np.ndarray, block_size: int, stride: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Next-token windows of a token stream: `(inputs, targets)`, each int64 (n, block_size),
    `targets[i]` being `inputs[i]` shifted by one token. Windows start every `stride` tokens
    (default `block_size`: non-overlapping, each token a target once); a stream too short for
    one window gives n = 0."""
    if block_size < 1:
        raise TaskError(f"block_size must be at least 1, got {block_size}")
    step = block_size if stride is None else stride
    if step < 1:
        raise TaskError(f"the window stride must be at least 1, got {step}")
    stream = np.asarray(ids, dtype=np.int64).reshape(-1)
    count = 0 if len(stream) <= block_size else (len(stream) - block_size - 1) // step + 1
    starts = np.arange(count, dtype=np.int64)[:, None] * step
    index = starts + np.arange(block_size, dtype=np.int64)[None, :]
    return stream[index], stream[index + 1]
