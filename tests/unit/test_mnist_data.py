"""The MNIST IDX loader: the copy bundled in quorum/data/mnist, and every kind of bad file."""

from __future__ import annotations

import gzip
import pathlib
import struct

import numpy as np
import pytest

from quorum.data import mnist
from quorum.errors import TaskError

# The published class counts of MNIST's 10,000 test images (digits 0-9) and its first labels.
TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
FIRST_TEST_LABELS = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]

SHARED = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"


def _idx(path: pathlib.Path, header: bytes, payload: bytes, *, compress: bool = True) -> None:
    data = header + payload
    path.write_bytes(gzip.compress(data) if compress else data)


def _header(*shape: int, type_byte: int = 0x08) -> bytes:
    return bytes([0, 0, type_byte, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


def test_real_test_set() -> None:
    images, labels = mnist.load_test_set()
    assert images.shape == (mnist.TEST_SET_SIZE, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (mnist.TEST_SET_SIZE,) and labels.dtype == np.uint8
    assert labels[:10].tolist() == FIRST_TEST_LABELS
    assert np.bincount(labels, minlength=10).tolist() == TEST_CLASS_COUNTS
    assert images.min() == 0 and images.max() == 255
    # Row-major, as stored: the raw bytes after the 16-byte header (magic and three sizes).
    raw = gzip.decompress((mnist.default_folder() / mnist.IMAGES_FILE).read_bytes())
    assert raw[16:] == images.tobytes()
    # Digits are centred: the mean image is dark in the corners and bright in the middle.
    mean = images.mean(axis=0)
    assert mean[14, 14] > 100 > 1 > mean[0, 0]
    assert images.flags.writeable


def test_real_split_is_disjoint_normalised_and_seeded() -> None:
    split = mnist.load_split(n_train=8000, n_test=2000, seed=0)
    assert split.x_train.shape == (8000, 1, 28, 28) and split.x_train.dtype == np.float32
    assert split.x_test.shape == (2000, 1, 28, 28)
    assert split.y_train.dtype == np.int64 and split.y_test.shape == (2000,)
    # Normalised with MNIST's training statistics: about zero mean and unit spread here too.
    assert abs(float(split.x_train.mean())) < 0.05
    assert abs(float(split.x_train.std()) - 1.0) < 0.05
    # The two sets are the whole test set, without overlap.
    images, labels = mnist.load_test_set()
    both = np.concatenate([split.x_train, split.x_test])
    assert np.array_equal(np.sort(np.concatenate([split.y_train, split.y_test])), np.sort(labels))
    assert len({row.tobytes() for row in both}) == len({row.tobytes() for row in images})
    again = mnist.load_split(n_train=8000, n_test=2000, seed=0)
    assert np.array_equal(again.y_train, split.y_train)
    other = mnist.load_split(n_train=8000, n_test=2000, seed=1)
    assert not np.array_equal(other.y_train, split.y_train)
    with pytest.raises(TaskError, match="cannot draw 9000 train and 2000 test"):
        mnist.load_split(n_train=9000, n_test=2000)


def test_bundled_copies() -> None:
    folder = mnist.default_folder()
    assert folder == pathlib.Path(mnist.__file__).resolve().parent / "mnist"
    assert (folder / "PROVENANCE.md").is_file()
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is not there to compare with")
    for name in (mnist.IMAGES_FILE, mnist.LABELS_FILE):
        assert (folder / name).read_bytes() == (SHARED / name).read_bytes(), name


def test_split_indices() -> None:
    train, test = mnist.split_indices(10, n_train=6, n_test=3, seed=4)
    assert len(train) == 6 and len(test) == 3
    assert len(set(train.tolist()) | set(test.tolist())) == 9
    split = mnist.load_split(n_train=8000, n_test=2000, seed=0)
    train, test = mnist.split_indices(mnist.TEST_SET_SIZE, 8000, 2000, 0)
    _, labels = mnist.load_test_set()
    assert np.array_equal(labels[train], split.y_train)
    assert np.array_equal(labels[test], split.y_test)
    with pytest.raises(TaskError, match="cannot draw 0 train"):
        mnist.split_indices(10, n_train=0, n_test=3)


def test_reads_a_well_formed_file(tmp_path: pathlib.Path) -> None:
    values = np.arange(2 * 28 * 28, dtype=np.uint8)
    _idx(tmp_path / "images.gz", _header(2, 28, 28), values.tobytes())
    _idx(tmp_path / "labels.gz", _header(2), bytes([3, 9]))
    images = mnist.load_images(tmp_path / "images.gz")
    assert images.shape == (2, 28, 28)
    assert np.array_equal(images.reshape(-1), values)
    assert mnist.load_labels(tmp_path / "labels.gz").tolist() == [3, 9]


@pytest.mark.parametrize(
    ("header", "payload", "message"),
    [
        (b"\x01\x00\x08\x01" + struct.pack(">I", 2), b"\x00\x01", "not an IDX file"),
        (_header(2, type_byte=0x0D), b"\x00" * 8, r"type 0x0d is not supported"),
        (_header(2, 1), b"\x00\x01", r"declares 2 dimension\(s\), expected 1"),
        (_header(3), b"\x00\x01", "truncated: the 3 values of shape"),
        (_header(2), b"\x00\x01\x02", "more data than the 2 values"),
        (b"\x00\x00", b"", "truncated: the magic number needs 4 bytes"),
        (_header(2)[:6], b"", "truncated: the shape needs 4 bytes"),
        (_header(2**31), b"", "more than the"),
        (_header(2), b"\x00\x0a", "label 10 is not a digit"),
    ],
)
def test_bad_label_files(
    tmp_path: pathlib.Path, header: bytes, payload: bytes, message: str
) -> None:
    _idx(tmp_path / "labels.gz", header, payload)
    with pytest.raises(TaskError, match=message):
        mnist.load_labels(tmp_path / "labels.gz")


def test_bad_image_shape(tmp_path: pathlib.Path) -> None:
    _idx(tmp_path / "images.gz", _header(1, 32, 32), b"\x00" * 32 * 32)
    with pytest.raises(TaskError, match="images are 32x32 pixels, MNIST's are 28x28"):
        mnist.load_images(tmp_path / "images.gz")


def test_not_gzip_missing_and_cut_short(tmp_path: pathlib.Path) -> None:
    _idx(tmp_path / "plain.gz", _header(2), b"\x00\x01", compress=False)
    with pytest.raises(TaskError, match="not a readable gzip file"):
        mnist.load_labels(tmp_path / "plain.gz")
    with pytest.raises(TaskError, match="no such file"):
        mnist.load_labels(tmp_path / "absent.gz")
    whole = gzip.compress(_header(2) + b"\x00\x01")
    (tmp_path / "cut.gz").write_bytes(whole[: len(whole) - 12])  # the deflate stream ends early
    with pytest.raises(TaskError, match=r"cut\.gz: not a readable gzip file \(EOFError"):
        mnist.load_labels(tmp_path / "cut.gz")


def test_folder_checks(tmp_path: pathlib.Path) -> None:
    with pytest.raises(TaskError, match=r"MNIST folder .* not found: pass the folder"):
        mnist.load_test_set(tmp_path / "nowhere")
    _idx(tmp_path / mnist.IMAGES_FILE, _header(3, 28, 28), b"\x00" * 3 * 28 * 28)
    _idx(tmp_path / mnist.LABELS_FILE, _header(2), b"\x01\x02")
    with pytest.raises(TaskError, match=r"holds 3 images but .* holds 2 labels"):
        mnist.load_test_set(tmp_path)
