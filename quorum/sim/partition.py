"""Splitting one data set among a simulation's virtual sites (`[sim.partition]`), in pure numpy.

A partition is one int64 array of example positions per site: disjoint, together covering every
example, each sorted ascending. `split` builds one from the examples' labels (and, for the
natural kind, their owners); every random draw comes from `numpy.random.default_rng(seed)`, so
the same inputs and seed give identical arrays in every process.

Kinds:
- natural: the data's own owners (a hospital, a speaker), one site each, in order of the owner's
  first example; `owner_names` names them in that order. It draws nothing.
- iid: a seeded permutation cut into near-equal parts (sizes differ by at most one).
- dirichlet: label skew as in Hsu et al. 2019 (and FedLab's and Flower Datasets'
  DirichletPartitioner): for each class, site proportions drawn from Dir(alpha) cut the class's
  shuffled examples. The whole draw repeats (up to `DIRICHLET_ATTEMPTS` times) until every site
  has at least `min_size` examples; lower alpha is more skewed.
- shards: McMahan et al. 2017: examples sorted by label (ties in a seeded order), cut into
  num_sites * shards_per_site near-equal shards, each site dealt shards_per_site random shards.
- quantity: power-law sizes with IID labels. Raw weights are Pareto (type I) with tail exponent
  `power`: w = exp(E / power) with E ~ Exp(1), computed as exp((E - max E) / power) so that small
  exponents cannot overflow. Every site gets `min_size`, the rest of the examples is shared in
  proportion to the weights (largest remainders round, so the sizes sum exactly to n), and a
  seeded permutation is cut in those sizes.

`save` and `load` keep a partition in one safetensors file: "indices" (the parts concatenated)
and "offsets" (where each site's part starts, then the total), both int64.
"""

from __future__ import annotations

import math
import pathlib

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from quorum.atomic import write_atomic
from quorum.errors import ConfigError

KINDS = ("natural", "iid", "dirichlet", "shards", "quantity")
DIRICHLET_ATTEMPTS = 100
"""Draws the dirichlet kind makes before it gives up on every site reaching min_size."""


def split(
    kind: str,
    labels: np.ndarray,
    num_sites: int | None,
    seed: int,
    *,
    alpha: float = 0.5,
    shards_per_site: int = 2,
    power: float = 1.5,
    min_size: int = 1,
    owners: np.ndarray | None = None,
) -> list[np.ndarray]:
    """One int64 index array per site (positions into `labels`), disjoint, together covering
    every example (each site's indices sorted ascending). ConfigError, naming the setting to
    change, when the settings cannot give such a partition."""
    if kind not in KINDS:
        raise ConfigError(
            f"unknown partition kind {kind!r}; sim.partition.kind is one of {', '.join(KINDS)}"
        )
    if labels.ndim != 1:
        raise ConfigError(f"partition labels must be 1-D, got shape {labels.shape}")
    if min_size < 1:
        raise ConfigError(f"sim.partition.min_size must be at least 1, got {min_size}")
    n = len(labels)
    if n == 0:
        raise ConfigError("the data set to partition has no examples")
    if kind == "natural":
        return _natural(labels, owners, num_sites, min_size)
    if num_sites is None:
        raise ConfigError(f"the {kind} partition needs sim.num_sites")
    if num_sites < 1:
        raise ConfigError(f"sim.num_sites must be at least 1, got {num_sites}")
    if num_sites * min_size > n:
        raise ConfigError(
            f"{num_sites} sites of at least {min_size} examples need {num_sites * min_size}, but "
            f"the data set has {n}; lower sim.num_sites or sim.partition.min_size"
        )
    rng = np.random.default_rng(seed)
    if kind == "iid":
        parts = np.array_split(rng.permutation(n), num_sites)
    elif kind == "dirichlet":
        _check_positive("alpha", alpha)
        parts = _dirichlet(labels, num_sites, alpha, min_size, rng)
    elif kind == "shards":
        parts = _shards(labels, num_sites, shards_per_site, min_size, rng)
    else:
        _check_positive("power", power)
        parts = _quantity(n, num_sites, power, min_size, rng)
    return [np.sort(part).astype(np.int64, copy=False) for part in parts]


def owner_names(owners: np.ndarray) -> list[str]:
    """The distinct owners, as str, in order of first appearance: the natural partition's sites."""
    uniques, first = np.unique(owners, return_index=True)
    return [str(uniques[i]) for i in np.argsort(first)]


def histogram(labels: np.ndarray, parts: list[np.ndarray]) -> tuple[list[str], np.ndarray]:
    """(class names as str, in sorted order of the labels; counts of shape (sites, classes),
    int64). Classes are every label of `labels`, so a class no site holds still has a column."""
    if labels.ndim != 1:
        raise ConfigError(f"partition labels must be 1-D, got shape {labels.shape}")
    classes, codes = np.unique(labels, return_inverse=True)
    counts = np.zeros((len(parts), len(classes)), dtype=np.int64)
    for site, part in enumerate(parts):
        counts[site] = np.bincount(codes[part], minlength=len(classes))
    return [str(c) for c in classes], counts


def save(path: pathlib.Path, parts: list[np.ndarray]) -> None:
    """Writes the partition as one safetensors file, atomically (a reader never sees a part)."""
    sizes = np.array([len(part) for part in parts], dtype=np.int64)
    offsets = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(sizes)])
    indices = (
        np.concatenate([np.asarray(part, dtype=np.int64) for part in parts])
        if parts
        else np.zeros(0, dtype=np.int64)
    )
    write_atomic(path, bytes(_st_save({"indices": indices, "offsets": offsets})))


def load(path: pathlib.Path) -> list[np.ndarray]:
    """The partition `save` wrote: one view per site into the file's one index array.
    ConfigError, naming the file, when it cannot be read or is not such a partition."""
    try:
        tensors = _st_load(path.read_bytes())
    except (OSError, SafetensorError) as exc:
        raise ConfigError(f"partition file {path}: cannot read it: {exc}") from None
    if set(tensors) != {"indices", "offsets"}:
        raise ConfigError(
            f"partition file {path}: has tensors {sorted(tensors)}; expected indices and offsets"
        )
    indices, offsets = tensors["indices"], tensors["offsets"]
    for name, array in (("indices", indices), ("offsets", offsets)):
        if array.dtype != np.int64 or array.ndim != 1:
            raise ConfigError(
                f"partition file {path}: {name} is {array.dtype} of shape {array.shape}; "
                "expected 1-D int64"
            )
    if (
        len(offsets) == 0
        or offsets[0] != 0
        or offsets[-1] != len(indices)
        or np.any(np.diff(offsets) < 0)
    ):
        raise ConfigError(
            f"partition file {path}: offsets must start at 0, never decrease and end at "
            f"{len(indices)} (the number of indices)"
        )
    # np.split with no cuts gives one part, so a partition of no sites needs its own case.
    return np.split(indices, offsets[1:-1]) if len(offsets) > 1 else []


def _check_positive(name: str, value: float) -> None:
    # NaN fails `> 0` and infinity is no usable exponent or concentration: both are rejected.
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"sim.partition.{name} must be a positive number, got {value}")


def _natural(
    labels: np.ndarray, owners: np.ndarray | None, num_sites: int | None, min_size: int
) -> list[np.ndarray]:
    if owners is None:
        raise ConfigError("the natural partition needs each example's owner; this data has none")
    if owners.shape != labels.shape:
        raise ConfigError(
            f"the natural partition needs one owner per example: {len(labels)} labels, owners "
            f"of shape {owners.shape}"
        )
    _, first, codes = np.unique(owners, return_index=True, return_inverse=True)
    count = len(first)
    if num_sites is not None and num_sites != count:
        raise ConfigError(
            f"the natural partition has {count} owners; set sim.num_sites = {count} "
            "(or leave it out)"
        )
    # Renumber owners by first appearance, so site i is owner_names(owners)[i].
    rank = np.empty(count, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(count)
    site_of = rank[codes]
    sizes = np.bincount(site_of, minlength=count)
    if sizes.min() < min_size:
        small = owner_names(owners)[int(np.argmin(sizes))]
        raise ConfigError(
            f"owner {small!r} has {sizes.min()} examples, fewer than sim.partition.min_size = "
            f"{min_size}; lower it"
        )
    # A stable sort keeps each site's positions ascending.
    order = np.argsort(site_of, kind="stable").astype(np.int64)
    return np.split(order, np.cumsum(sizes)[:-1])


def _dirichlet(
    labels: np.ndarray, num_sites: int, alpha: float, min_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    _, codes = np.unique(labels, return_inverse=True)
    by_class = np.split(np.argsort(codes, kind="stable"), np.cumsum(np.bincount(codes))[:-1])
    for _ in range(DIRICHLET_ATTEMPTS):
        pieces: list[list[np.ndarray]] = [[] for _ in range(num_sites)]
        for members in by_class:
            shuffled = rng.permutation(members)
            shares = rng.dirichlet(np.full(num_sites, alpha))
            # Cumulative shares can round a hair past 1; the cap keeps every cut inside the class.
            cuts = np.minimum(
                (np.cumsum(shares)[:-1] * len(shuffled)).astype(np.int64), len(shuffled)
            )
            for site, piece in enumerate(np.split(shuffled, cuts)):
                pieces[site].append(piece)
        parts = [np.concatenate(site_pieces) for site_pieces in pieces]
        if min(len(part) for part in parts) >= min_size:
            return parts
    raise ConfigError(
        f"the dirichlet partition left some site with fewer than {min_size} examples in "
        f"{DIRICHLET_ATTEMPTS} draws (alpha={alpha}, {num_sites} sites, {len(labels)} examples); "
        "lower sim.num_sites, raise sim.partition.alpha or lower sim.partition.min_size"
    )


def _shards(
    labels: np.ndarray,
    num_sites: int,
    shards_per_site: int,
    min_size: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    if shards_per_site < 1:
        raise ConfigError(
            f"sim.partition.shards_per_site must be at least 1, got {shards_per_site}"
        )
    n = len(labels)
    num_shards = num_sites * shards_per_site
    if n < num_shards:
        raise ConfigError(
            f"the shards partition cuts {num_shards} shards ({num_sites} sites x "
            f"{shards_per_site}) from {n} examples; lower sim.num_sites or "
            "sim.partition.shards_per_site"
        )
    # Shards differ in size by at most one; a site dealt the shortest ones gets this many. Checking
    # the worst deal makes the error depend on the settings alone, never on the seed.
    size, longer = divmod(n, num_shards)
    smallest = shards_per_site * size + max(0, shards_per_site - (num_shards - longer))
    if smallest < min_size:
        raise ConfigError(
            f"the shards partition can give a site only {smallest} examples, fewer than "
            f"sim.partition.min_size = {min_size}; lower it or sim.partition.shards_per_site"
        )
    shuffled = rng.permutation(n)
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(by_label, num_shards)
    dealt = rng.permutation(num_shards).reshape(num_sites, shards_per_site)
    return [np.concatenate([shards[s] for s in row]) for row in dealt]


def _quantity(
    n: int, num_sites: int, power: float, min_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    draws = rng.standard_exponential(num_sites)
    weights = np.exp((draws - draws.max()) / power)
    quotas = weights / weights.sum() * (n - num_sites * min_size)
    extra = np.floor(quotas).astype(np.int64)
    short = (n - num_sites * min_size) - int(extra.sum())
    # Largest remainders take the examples flooring left over; a stable sort settles ties by site.
    extra[np.argsort(-(quotas - extra), kind="stable")[:short]] += 1
    sizes = min_size + extra
    return np.split(rng.permutation(n), np.cumsum(sizes)[:-1])
