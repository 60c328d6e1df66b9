"""Unit tests of quorum.sim.partition: every kind covers the data disjointly, is reproducible,
and skews the way its name says; histograms; the safetensors file and its malformed forms."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file

from quorum.errors import ConfigError
from quorum.sim import partition

SEEDED = ("iid", "dirichlet", "shards", "quantity")
CLASSES = 10
N = 3000


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    # Sorted labels: the order McMahan et al.'s shards are cut in, and the worst case for any
    # kind that forgot to shuffle.
    return np.repeat(np.arange(CLASSES), N // CLASSES)


@pytest.fixture(scope="module")
def owners() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.choice(np.array(["cleveland", "hungary", "va", "zurich"]), size=N)


def check_partition(parts: list[np.ndarray], n: int, min_size: int = 1) -> None:
    """Disjoint, covering, int64, sorted ascending, every site at least min_size."""
    for part in parts:
        assert part.dtype == np.int64
        assert part.ndim == 1
        assert np.all(np.diff(part) > 0)
        assert len(part) >= min_size
    joined = np.concatenate(parts)
    assert len(joined) == n
    assert np.array_equal(np.sort(joined), np.arange(n))


def skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean over sites of the fraction of its examples in its largest class."""
    _, counts = partition.histogram(labels, parts)
    return float(np.mean(counts.max(axis=1) / counts.sum(axis=1)))


@pytest.mark.parametrize("kind", SEEDED)
def test_seeded_kinds_cover_disjointly_and_reproduce(kind: str, labels: np.ndarray) -> None:
    parts = partition.split(kind, labels, 20, seed=3, min_size=5)
    assert len(parts) == 20
    check_partition(parts, N, min_size=5)
    again = partition.split(kind, labels, 20, seed=3, min_size=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition.split(kind, labels, 20, seed=4, min_size=5)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_natural_gives_one_site_per_owner_in_order_of_appearance(
    labels: np.ndarray, owners: np.ndarray
) -> None:
    parts = partition.split("natural", labels, None, seed=0, owners=owners)
    names = partition.owner_names(owners)
    check_partition(parts, N)
    assert sorted(names) == ["cleveland", "hungary", "va", "zurich"]
    assert [owners[part[0]] for part in parts] == names
    assert names[0] == owners[0]
    for name, part in zip(names, parts, strict=True):
        assert np.array_equal(part, np.flatnonzero(owners == name))
    # Natural draws nothing: the seed cannot change it, and num_sites may name its size.
    again = partition.split("natural", labels, 4, seed=99, owners=owners)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_natural_owners_may_be_numbers() -> None:
    owners = np.array([5, 2, 5, 9, 2])
    parts = partition.split("natural", np.zeros(5), None, seed=0, owners=owners)
    assert partition.owner_names(owners) == ["5", "2", "9"]
    assert [p.tolist() for p in parts] == [[0, 2], [1, 4], [3]]


def test_natural_errors(labels: np.ndarray, owners: np.ndarray) -> None:
    with pytest.raises(ConfigError, match=r"has 4 owners; set sim.num_sites = 4 \(or leave"):
        partition.split("natural", labels, 3, seed=0, owners=owners)
    with pytest.raises(ConfigError, match="owner"):
        partition.split("natural", labels, None, seed=0)
    with pytest.raises(ConfigError, match="one owner per example"):
        partition.split("natural", labels, None, seed=0, owners=owners[:-1])
    with pytest.raises(ConfigError, match="min_size"):
        partition.split("natural", labels, None, seed=0, owners=owners, min_size=N)


def test_dirichlet_skew_grows_as_alpha_falls(labels: np.ndarray) -> None:
    skewed = partition.split("dirichlet", labels, 10, seed=1, alpha=0.1)
    even = partition.split("dirichlet", labels, 10, seed=1, alpha=100.0)
    middle = partition.split("dirichlet", labels, 10, seed=1, alpha=1.0)
    # IID sites hold ~10% of each class; alpha=0.1 puts most of a site in one class.
    assert skew(labels, even) < 0.2
    assert skew(labels, skewed) > 0.5
    assert skew(labels, even) < skew(labels, middle) < skew(labels, skewed)


def test_dirichlet_gives_up_with_the_settings_to_change(labels: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="alpha") as caught:
        partition.split("dirichlet", labels, 100, seed=0, alpha=0.01, min_size=25)
    assert "sim.num_sites" in str(caught.value)
    assert "min_size" in str(caught.value)


def test_shards_give_most_sites_two_classes(labels: np.ndarray) -> None:
    parts = partition.split("shards", labels, 100, seed=0, shards_per_site=2)
    _, counts = partition.histogram(labels, parts)
    classes_per_site = (counts > 0).sum(axis=1)
    assert np.mean(classes_per_site <= 2) >= 0.9
    # 200 shards of 15 over 300-example classes: no shard straddles two classes.
    assert classes_per_site.max() <= 2
    assert all(len(part) == 30 for part in parts)


def test_shards_errors() -> None:
    with pytest.raises(ConfigError, match="shards_per_site"):
        partition.split("shards", np.zeros(10), 3, seed=0, shards_per_site=4)
    # 9 examples in 6 shards (3 of 2, 3 of 1): a site dealt the three short ones gets 3.
    with pytest.raises(ConfigError, match="only 3 examples"):
        partition.split("shards", np.zeros(9), 2, seed=0, shards_per_site=3, min_size=4)
    with pytest.raises(ConfigError, match="shards_per_site must be at least 1"):
        partition.split("shards", np.zeros(9), 2, seed=0, shards_per_site=0)


def test_quantity_sizes_are_unequal_and_sum_to_n(labels: np.ndarray) -> None:
    iid = partition.split("iid", labels, 20, seed=0)
    parts = partition.split("quantity", labels, 20, seed=0, power=1.5, min_size=10)
    check_partition(parts, N, min_size=10)
    sizes = np.array([len(p) for p in parts])
    iid_sizes = np.array([len(p) for p in iid])
    assert sizes.sum() == N
    assert iid_sizes.max() / np.median(iid_sizes) < 1.01
    assert sizes.max() / np.median(sizes) > 2.0
    # Labels stay IID: no site of a few hundred examples is dominated by one class.
    big = [p for p in parts if len(p) >= 200]
    assert big and skew(labels, big) < 0.25


def test_quantity_survives_a_tiny_exponent() -> None:
    # exp(E / 0.01) overflows float64; the weights are computed relative to the largest draw.
    parts = partition.split("quantity", np.zeros(100), 10, seed=0, power=0.01, min_size=3)
    check_partition(parts, 100, min_size=3)


def test_iid_sizes_differ_by_at_most_one() -> None:
    parts = partition.split("iid", np.zeros(103), 10, seed=0)
    assert {len(p) for p in parts} == {10, 11}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "stripes"}, "one of natural, iid, dirichlet, shards, quantity"),
        ({"labels": np.zeros((4, 4))}, "1-D"),
        ({"num_sites": None}, "needs sim.num_sites"),
        ({"num_sites": 0}, "at least 1"),
        ({"num_sites": 11}, "lower sim.num_sites or sim.partition.min_size"),
        ({"num_sites": 5, "min_size": 3}, "lower sim.num_sites or sim.partition.min_size"),
        ({"min_size": 0}, "min_size must be at least 1"),
        ({"kind": "dirichlet", "alpha": 0.0}, "alpha must be a positive"),
        ({"kind": "dirichlet", "alpha": float("nan")}, "alpha must be a positive"),
        ({"kind": "quantity", "power": -1.0}, "power must be a positive"),
        ({"kind": "quantity", "power": float("inf")}, "power must be a positive"),
        ({"labels": np.zeros(0)}, "no examples"),
    ],
)
def test_bad_settings_raise_config_error(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"kind": "iid", "labels": np.zeros(10), "num_sites": 2, "seed": 0}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        partition.split(**args)  # type: ignore[arg-type]


def test_histogram_counts_each_site_by_class(labels: np.ndarray) -> None:
    parts = partition.split("dirichlet", labels, 7, seed=2)
    names, counts = partition.histogram(labels, parts)
    assert names == [str(c) for c in range(CLASSES)]
    assert counts.shape == (7, CLASSES)
    assert counts.dtype == np.int64
    assert counts.sum(axis=1).tolist() == [len(p) for p in parts]
    assert counts.sum(axis=0).tolist() == [N // CLASSES] * CLASSES


def test_histogram_orders_classes_by_value_and_keeps_empty_ones() -> None:
    labels = np.array([10, 2, 2, 10, 1])
    names, counts = partition.histogram(labels, [np.array([1, 2]), np.array([0, 3])])
    assert names == ["1", "2", "10"]
    assert counts.tolist() == [[0, 2, 0], [0, 0, 2]]


def test_save_load_round_trip(tmp_path: pathlib.Path, labels: np.ndarray) -> None:
    parts = partition.split("quantity", labels, 9, seed=5)
    path = tmp_path / "nested" / "partition.safetensors"
    partition.save(path, parts)
    loaded = partition.load(path)
    assert len(loaded) == len(parts)
    for part, back in zip(parts, loaded, strict=True):
        assert back.dtype == np.int64
        assert np.array_equal(part, back)
    # One array underneath: the sites are views, not copies.
    base = loaded[0].base
    assert base is not None and all(part.base is base for part in loaded)


def test_save_load_of_no_sites_and_of_empty_sites(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "p.safetensors"
    partition.save(path, [])
    assert partition.load(path) == []
    partition.save(path, [np.array([], dtype=np.int64), np.array([0, 1])])
    assert [p.tolist() for p in partition.load(path)] == [[], [0, 1]]


I64 = np.int64


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"indices": np.arange(3, dtype=I64)}, "expected indices and offsets"),
        (
            {"indices": np.arange(3, dtype=I64), "offsets": np.array([0, 3], dtype=np.int32)},
            "offsets is int32",
        ),
        (
            {"indices": np.arange(3, dtype=np.float64), "offsets": np.array([0, 3], dtype=I64)},
            "indices is float64",
        ),
        (
            {"indices": np.arange(3, dtype=I64), "offsets": np.array([0, 2, 1, 3], dtype=I64)},
            "never decrease",
        ),
        ({"indices": np.arange(3, dtype=I64), "offsets": np.array([0, 2], dtype=I64)}, "end at 3"),
        ({"indices": np.arange(3, dtype=I64), "offsets": np.array([1, 3], dtype=I64)}, "start"),
        ({"indices": np.arange(3, dtype=I64), "offsets": np.zeros(0, dtype=I64)}, "offsets"),
        (
            {"indices": np.zeros((1, 3), dtype=I64), "offsets": np.array([0, 3], dtype=I64)},
            "1-D",
        ),
    ],
)
def test_load_rejects_malformed_files(
    tmp_path: pathlib.Path, tensors: dict[str, np.ndarray], message: str
) -> None:
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(ConfigError, match=message) as caught:
        partition.load(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("data", [b"", b"not safetensors at all", None])
def test_load_rejects_unreadable_files(tmp_path: pathlib.Path, data: bytes | None) -> None:
    path = tmp_path / "bad.safetensors"
    if data is not None:
        path.write_bytes(data)
    with pytest.raises(ConfigError, match=str(path)):
        partition.load(path)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    num_sites=st.integers(1, 12),
    kind=st.sampled_from(SEEDED),
    num_classes=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_kind_covers_disjointly(
    n: int, num_sites: int, kind: str, num_classes: int, seed: int
) -> None:
    labels = np.random.default_rng(seed).integers(0, num_classes, size=n)
    try:
        parts = partition.split(kind, labels, num_sites, seed, alpha=1.0)
    except ConfigError:
        # Only settings that cannot fit are refused: too few examples for the sites (or shards),
        # or a dirichlet draw that kept leaving a site empty.
        assert n < num_sites * (2 if kind == "shards" else 1) or kind == "dirichlet"
        return
    assert len(parts) == num_sites
    check_partition(parts, n)
    _, counts = partition.histogram(labels, parts)
    assert counts.sum(axis=1).tolist() == [len(p) for p in parts]


@settings(max_examples=30, deadline=None)
@given(owners=st.lists(st.sampled_from("abcdef"), min_size=1, max_size=60))
def test_natural_covers_disjointly(owners: list[str]) -> None:
    array = np.array(owners)
    parts = partition.split("natural", np.zeros(len(owners)), None, seed=0, owners=array)
    check_partition(parts, len(owners))
    assert partition.owner_names(array) == list(dict.fromkeys(owners))
