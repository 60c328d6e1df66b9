"""FLamby's Fed-Heart-Disease benchmark: the UCI Heart Disease files, one per hospital.

`load_site` turns one `processed.<site>.data` file into the train/test split that FLamby's
`FedHeartDisease` dataset (owkin/FLamby, flamby/datasets/fed_heart_disease/dataset.py) gives for
that centre, so that Quorum's numbers are comparable with FLamby's published ones:

1. Read the 14-column CSV; `?` is missing. Drop `slope`, `ca` and `thal`, then every row that
   still has a missing value.
2. Label: `num > 0` -> 1.0 (disease), else 0.0.
3. One-hot `cp` (levels 1-4) and `restecg` (levels 0-2), dropping the first level. FLamby one-hot
   encodes the four sites together, so the levels are those of the union of the sites; every level
   occurs there, and the columns are the same 13 at every site even where a site lacks a level:
   `FEATURES`, in the order pandas' `get_dummies` gives (plain columns, then the dummies).
4. Split 66/34 exactly as `sklearn.model_selection.train_test_split(np.arange(n),
   train_size=0.66, test_size=1 - 0.66, random_state=43, shuffle=True, stratify=labels)` does,
   stratified when both classes have more than 2 rows (not so in switzerland). The split is
   reproduced here with numpy's legacy `RandomState`, whose streams numpy keeps stable, so
   scikit-learn is not a dependency. As in FLamby, each set keeps the file's row order.
5. Standardise with the site's own train mean and sample standard deviation (torch's `std`,
   ddof=1): `(x - mean) / (std + 1e-9)`, in float32 (statistics computed in float64).

FLamby's pooled baseline is different: it standardises the union of the four raw splits with the
pooled train statistics (`standardise(pool(split_site(s) for s in SITES))`), while each site's
own test set keeps its per-site standardisation.

Train/test sizes: cleveland 199/104, hungarian 172/89, switzerland 30/16, va 85/45.
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from quorum.errors import TaskError

SITES = ("cleveland", "hungarian", "switzerland", "va")
COLUMNS = (
    "age",
    "sex",
    "cp",
    "trestbps",
    "chol",
    "fbs",
    "restecg",
    "thalach",
    "exang",
    "oldpeak",
    "slope",
    "ca",
    "thal",
    "num",
)
FEATURES = (
    "age",
    "sex",
    "trestbps",
    "chol",
    "fbs",
    "thalach",
    "exang",
    "oldpeak",
    "cp_2",
    "cp_3",
    "cp_4",
    "restecg_1",
    "restecg_2",
)
NUM_FEATURES = len(FEATURES)
TRAIN_FRACTION = 0.66
SPLIT_SEED = 43
STD_EPS = 1e-9

_DROPPED = ("slope", "ca", "thal")
_PLAIN = ("age", "sex", "trestbps", "chol", "fbs", "thalach", "exang", "oldpeak")
_CATEGORICAL = {"cp": (1.0, 2.0, 3.0, 4.0), "restecg": (0.0, 1.0, 2.0)}


@dataclass(frozen=True, eq=False)
class SiteSplit:
    """Train and test sets: x float32 (n, 13) in `FEATURES` order, y float32 (n,) in {0, 1}."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def bundled_path(site: str) -> pathlib.Path:
    """The file of a bundled site (one of `SITES`) inside the installed package."""
    if site not in SITES:
        raise TaskError(f"unknown heart-disease site {site!r}: expected one of {', '.join(SITES)}")
    return pathlib.Path(__file__).resolve().parent / "heart_disease" / f"processed.{site}.data"


def resolve(data: str | os.PathLike[str]) -> pathlib.Path:
    """A bare site name (`cleveland`, ...) names the bundled file; anything else is a path."""
    if isinstance(data, str) and data in SITES:
        return bundled_path(data)
    return pathlib.Path(data)


def load_site(path: str | os.PathLike[str], seed: int = SPLIT_SEED) -> SiteSplit:
    """Reads one site's file (a path, or a bare site name for the bundled copy) and returns its
    FLamby split, standardised with its own train statistics. Raises TaskError when the file
    cannot be read or is not in the UCI processed format."""
    return standardise(split_site(path, seed))


def split_site(path: str | os.PathLike[str], seed: int = SPLIT_SEED) -> SiteSplit:
    """One site's FLamby train/test split, not standardised (raw encoded features)."""
    features, labels = read_rows(resolve(path))
    train_idx, test_idx = flamby_split(labels, seed)
    return SiteSplit(
        x_train=features[train_idx],
        y_train=labels[train_idx].astype(np.float32),
        x_test=features[test_idx],
        y_test=labels[test_idx].astype(np.float32),
    )


def pool(splits: Iterable[SiteSplit]) -> SiteSplit:
    """The union of several splits: train sets concatenated, test sets concatenated, in order.

    FLamby's pooled baseline standardises the union of the raw splits with the pooled train
    statistics: `standardise(pool(split_site(s) for s in SITES))`."""
    parts = list(splits)
    if not parts:
        raise TaskError("no site splits to pool")
    return SiteSplit(
        x_train=np.concatenate([p.x_train for p in parts]),
        y_train=np.concatenate([p.y_train for p in parts]),
        x_test=np.concatenate([p.x_test for p in parts]),
        y_test=np.concatenate([p.y_test for p in parts]),
    )


def standardise(split: SiteSplit) -> SiteSplit:
    """`(x - mean) / (std + 1e-9)` with the mean and sample std (ddof=1) of the split's own train
    set, for the train and test sets alike; float32."""
    x_train = split.x_train.astype(np.float64)
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0, ddof=1) if len(x_train) > 1 else np.zeros_like(mean)
    scale = std + STD_EPS
    return SiteSplit(
        x_train=((x_train - mean) / scale).astype(np.float32),
        y_train=split.y_train,
        x_test=((split.x_test.astype(np.float64) - mean) / scale).astype(np.float32),
        y_test=split.y_test,
    )


def read_rows(file: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """The complete rows of a processed file, encoded: float32 features (n, 13) and 0/1 labels."""
    try:
        text = file.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskError(
            f"cannot read heart-disease data file {str(file)!r}: {exc} (give a path to a "
            f"processed.<site>.data file, or a bundled site: {', '.join(SITES)})"
        ) from None
    index = {name: i for i, name in enumerate(COLUMNS)}
    needed = [i for i, name in enumerate(COLUMNS) if name not in _DROPPED]
    rows: list[list[float]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) != len(COLUMNS):
            raise TaskError(
                f"{file}:{number}: {len(cells)} columns, expected {len(COLUMNS)} "
                f"({', '.join(COLUMNS)}): is this a UCI heart-disease 'processed' file?"
            )
        if any(cells[i] == "?" for i in needed):
            continue
        try:
            values = [float(cells[i]) if i in needed else math.nan for i in range(len(COLUMNS))]
        except ValueError:
            raise TaskError(
                f"{file}:{number}: a value is neither a number nor '?': {line.strip()!r}"
            ) from None
        if not all(math.isfinite(values[i]) for i in needed):
            raise TaskError(f"{file}:{number}: a value is not finite: {line.strip()!r}")
        rows.append(values)
    if not rows:
        raise TaskError(f"{file}: no complete rows (after dropping slope, ca and thal)")
    table = np.asarray(rows, dtype=np.float64)
    columns = [table[:, index[name]] for name in _PLAIN]
    for name, levels in _CATEGORICAL.items():
        category = table[:, index[name]]
        unknown = sorted(set(category.tolist()) - set(levels))
        if unknown:
            raise TaskError(
                f"{file}: column {name!r} has values {unknown}, expected levels {list(levels)}"
            )
        columns.extend((category == level).astype(np.float64) for level in levels[1:])
    features = np.stack(columns, axis=1).astype(np.float32)
    labels = (table[:, index["num"]] > 0).astype(np.float64)
    return features, labels


def flamby_split(labels: np.ndarray, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test row indices, as FLamby's call to scikit-learn's `train_test_split`
    chooses them (stratified when both classes have more than 2 rows)."""
    n = len(labels)
    n_test = math.ceil((1.0 - TRAIN_FRACTION) * n)
    n_train = math.floor(TRAIN_FRACTION * n)
    if n_train == 0 or n_test == 0:
        raise TaskError(f"{n} complete rows are too few to split 66/34 into train and test sets")
    classes, counts = np.unique(labels, return_counts=True)
    rng = np.random.RandomState(seed)
    if len(classes) > 1 and bool((counts > 2).all()):
        train, test = _stratified_shuffle_split(labels, n_train, n_test, rng)
    else:
        permutation = rng.permutation(n)
        test = permutation[:n_test]
        train = permutation[n_test : n_test + n_train]
    return np.sort(train), np.sort(test)


def _stratified_shuffle_split(
    labels: np.ndarray, n_train: int, n_test: int, rng: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's `StratifiedShuffleSplit._iter_indices`, one split (membership only)."""
    _, y_indices = np.unique(labels, return_inverse=True)
    class_counts = np.bincount(y_indices)
    if n_train < len(class_counts) or n_test < len(class_counts):
        raise TaskError(f"{len(labels)} rows are too few for a stratified 66/34 split")
    class_indices = np.split(np.argsort(y_indices, kind="mergesort"), np.cumsum(class_counts)[:-1])
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i, indices in enumerate(class_indices):
        permutation = rng.permutation(class_counts[i])
        chosen = indices.take(permutation, mode="clip")
        train.extend(chosen[: n_i[i]].tolist())
        test.extend(chosen[n_i[i] : n_i[i] + t_i[i]].tolist())
    return np.asarray(train, dtype=np.int64), np.asarray(test, dtype=np.int64)


def _approximate_mode(
    class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState
) -> np.ndarray:
    """scikit-learn's `_approximate_mode`: per-class draws, ties in the remainders broken by rng."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            inds = rng.choice(inds, size=add_now, replace=False)
            floored[inds] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    counts: np.ndarray = floored.astype(np.int64)
    return counts
