"""MNIST from its original IDX files (gzip-compressed), for image examples and benchmarks.

The package bundles MNIST's official test set in `quorum/data/mnist/` (`default_folder()`):
`t10k-images-idx3-ubyte.gz` and `t10k-labels-idx1-ubyte.gz`, 10,000 images of 28x28 pixels with
labels 0-9 (provenance and licence, CC BY-SA 3.0, in `PROVENANCE.md` there). The 60,000 training
images are not bundled (47 MB), so `load_split` divides those 10,000 images into disjoint train
and test sets (`split_indices`). Pass another folder to read other copies of the IDX files.

IDX format (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type byte (0x08: unsigned byte,
the only type MNIST uses), the number of dimensions, one big-endian uint32 per dimension, then the
values in row-major order. `read_idx` checks every part of that header, that the file holds exactly
the values the header announces, and never inflates more than the header announces (a corrupt or
hostile file cannot make it allocate more than `MAX_IDX_BYTES`).
"""

from __future__ import annotations

import gzip
import math
import os
import pathlib
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from quorum.errors import TaskError

IMAGES_FILE = "t10k-images-idx3-ubyte.gz"
LABELS_FILE = "t10k-labels-idx1-ubyte.gz"
ROWS = COLUMNS = 28
NUM_CLASSES = 10
TEST_SET_SIZE = 10_000
UNSIGNED_BYTE = 0x08
MAX_IDX_BYTES = 64 * 2**20
"""The most values `read_idx` reads from one file: the 60,000 training images are 47 MB."""
PIXEL_MEAN = 0.1307
PIXEL_STD = 0.3081
"""Mean and standard deviation of the pixels (scaled to [0, 1]) of MNIST's training images, the
normalisation that PyTorch's and Opacus's MNIST examples use."""


@dataclass(frozen=True, eq=False)
class MnistSplit:
    """Train and test sets: x float32 (n, 1, 28, 28), normalised; y int64 (n,) in 0-9."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def default_folder() -> pathlib.Path:
    """The copy bundled with the package: `quorum/data/mnist/`."""
    return pathlib.Path(__file__).resolve().parent / "mnist"


def read_idx(path: str | os.PathLike[str], ndim: int) -> np.ndarray:
    """The unsigned-byte array of `ndim` dimensions stored in a gzip-compressed IDX file (a new,
    writable uint8 array). Raises TaskError, naming the file and what is wrong, when the file is
    missing, is not gzip, has another magic number, type or number of dimensions, is truncated,
    or has bytes after the values its header announces."""
    file = pathlib.Path(path)
    try:
        with gzip.open(file, "rb") as stream:
            magic = _read_exact(stream, 4, file, "the magic number")
            if magic[:2] != b"\x00\x00":
                raise TaskError(
                    f"{file}: not an IDX file (magic number {magic.hex()} does not start with 0000)"
                )
            if magic[2] != UNSIGNED_BYTE:
                raise TaskError(
                    f"{file}: IDX value type 0x{magic[2]:02x} is not supported (MNIST files hold "
                    f"unsigned bytes, type 0x{UNSIGNED_BYTE:02x})"
                )
            if magic[3] != ndim:
                raise TaskError(
                    f"{file}: the IDX header declares {magic[3]} dimension(s), expected {ndim}"
                )
            shape = struct.unpack(f">{ndim}I", _read_exact(stream, 4 * ndim, file, "the shape"))
            size = math.prod(shape)
            if size > MAX_IDX_BYTES:
                raise TaskError(
                    f"{file}: the IDX header declares shape {shape} ({size} values), more than the "
                    f"{MAX_IDX_BYTES} this loader reads"
                )
            data = _read_exact(stream, size, file, f"the {size} values of shape {shape}")
            if stream.read(1):
                raise TaskError(
                    f"{file}: the file holds more data than the {size} values its IDX header "
                    f"declares (shape {shape}); it is not an MNIST file or it is corrupt"
                )
    except FileNotFoundError:
        raise TaskError(f"{file}: no such file") from None
    except (OSError, EOFError, zlib.error) as exc:
        # gzip.BadGzipFile is an OSError; a truncated stream raises EOFError, bad deflate data
        # zlib.error.
        raise TaskError(f"{file}: not a readable gzip file ({type(exc).__name__}: {exc})") from None
    return np.frombuffer(bytearray(data), dtype=np.uint8).reshape(shape)


def load_images(path: str | os.PathLike[str]) -> np.ndarray:
    """The images of an IDX image file: uint8 (n, 28, 28), pixel values 0-255."""
    images = read_idx(path, 3)
    if images.shape[1:] != (ROWS, COLUMNS):
        raise TaskError(
            f"{path}: images are {images.shape[1]}x{images.shape[2]} pixels, MNIST's are "
            f"{ROWS}x{COLUMNS}"
        )
    return images


def load_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """The labels of an IDX label file: uint8 (n,), each in 0-9."""
    labels = read_idx(path, 1)
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise TaskError(
            f"{path}: label {int(labels.max())} is not a digit "
            f"(MNIST labels are 0-{NUM_CLASSES - 1})"
        )
    return labels


def load_test_set(
    folder: str | os.PathLike[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """MNIST's official test set from `folder` (default: `default_folder()`): images uint8
    (10000, 28, 28) and labels uint8 (10000,)."""
    root = default_folder() if folder is None else pathlib.Path(folder)
    if not root.is_dir():
        raise TaskError(
            f"MNIST folder {root} not found: pass the folder that holds {IMAGES_FILE} and "
            f"{LABELS_FILE} (or none, for the copy bundled with the package)"
        )
    images = load_images(root / IMAGES_FILE)
    labels = load_labels(root / LABELS_FILE)
    if len(images) != len(labels):
        raise TaskError(
            f"{root}: {IMAGES_FILE} holds {len(images)} images but {LABELS_FILE} holds "
            f"{len(labels)} labels"
        )
    return images, labels


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 images (n, 28, 28) -> float32 (n, 1, 28, 28): `(pixel / 255 - mean) / std`."""
    scaled = images.astype(np.float32) / np.float32(255.0)
    normalised = (scaled - np.float32(PIXEL_MEAN)) / np.float32(PIXEL_STD)
    return normalised[:, None, :, :]


def load_split(
    folder: str | os.PathLike[str] | None = None,
    n_train: int = 8_000,
    n_test: int = 2_000,
    seed: int = 0,
) -> MnistSplit:
    """Disjoint train and test sets drawn from the official test set by a permutation seeded with
    `seed`, normalised with `normalise`.

    Shuffled rather than cut in order: the first 5,000 test images are known to be cleaner than
    the last 5,000 (different writers), so an in-order cut would give unlike train and test sets.
    """
    images, labels = load_test_set(folder)
    train_idx, test_idx = split_indices(len(images), n_train, n_test, seed)
    return MnistSplit(
        x_train=normalise(images[train_idx]),
        y_train=labels[train_idx].astype(np.int64),
        x_test=normalise(images[test_idx]),
        y_test=labels[test_idx].astype(np.int64),
    )


def split_indices(
    size: int, n_train: int = 8_000, n_test: int = 2_000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The positions (int64) of `load_split`'s train and test images among `size` images: the
    first `n_train` and the next `n_test` of a permutation seeded with `seed`. A rule per image,
    so that any division of the images into groups divides each of the two sets the same way."""
    if n_train < 1 or n_test < 0 or n_train + n_test > size:
        raise TaskError(
            f"cannot draw {n_train} train and {n_test} test images from {size} MNIST "
            "images (need n_train >= 1, n_test >= 0 and n_train + n_test <= the images)"
        )
    order = np.random.default_rng(seed).permutation(size)
    return order[:n_train], order[n_train : n_train + n_test]


def _read_exact(stream: gzip.GzipFile, count: int, file: pathlib.Path, what: str) -> bytes:
    data = stream.read(count)
    if len(data) != count:
        raise TaskError(
            f"{file}: truncated: {what} needs {count} bytes, the file ends after {len(data)}"
        )
    return data
