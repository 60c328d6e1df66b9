"""Transfer digests: SHA-256 (a blob's name) and BLAKE3 (what transfers may be checked
against), the choice a site makes from its server's welcome, and each writer and reader of a
blob giving the same digest of the same bytes."""

from __future__ import annotations

import asyncio
import hashlib
import io
import pathlib

import blake3
import numpy as np
import pytest

from quorum.errors import BlobError
from quorum.wire import blobs, digests
from quorum.wire.blobfiles import BlobFile, BlobWriter
from quorum.wire.incoming import Incoming

DATA = bytes(range(256)) * 9_000  # 2.2 MiB: more than one chunk


def test_blake3_is_the_published_function() -> None:
    # The empty input's BLAKE3, from the BLAKE3 paper's test vectors.
    empty = digests.hasher(digests.BLAKE3)
    assert empty.hexdigest() == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"


@pytest.mark.parametrize("algorithm", ["", digests.SHA256])
def test_sha256_is_also_the_digest_of_a_peer_that_names_none(algorithm: str) -> None:
    hashed = digests.hasher(algorithm)
    hashed.update(DATA)
    assert hashed.hexdigest() == hashlib.sha256(DATA).hexdigest() == blobs.digest(DATA)


def test_an_unknown_algorithm_is_named_in_the_error() -> None:
    with pytest.raises(BlobError, match=r"'md5'.*blake3, sha256"):
        digests.hasher("md5")


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (["blake3", "sha256"], "blake3"),
        (["sha256", "blake3"], "sha256"),  # the server's preference comes first
        (["k12", "blake3"], "blake3"),  # one this site does not know is passed over
        ([], "sha256"),  # a server from before BLAKE3: SHA-256 only
        (["k12"], "sha256"),
    ],
)
def test_a_site_sends_the_first_digest_it_knows_of_its_servers(
    offered: list[str], chosen: str
) -> None:
    assert digests.choose(offered) == chosen


@pytest.mark.parametrize("algorithm", [digests.SHA256, digests.BLAKE3])
def test_pieces_and_incoming_give_the_digest_of_the_joined_bytes(algorithm: str) -> None:
    params = {"a": np.arange(300_000, dtype=np.float32), "b": np.ones((3, 4), np.float64)}
    joined = blobs.encode(params)
    want = digests.hasher(algorithm)
    want.update(joined)
    assert blobs.pieces(params).digest(algorithm) == want.hexdigest()

    async def received() -> str:
        sink = io.BytesIO()
        incoming = Incoming(sink, algorithm)
        for chunk in blobs.chunks(joined):
            await incoming.add(bytes(chunk))
        digest = await incoming.finish()
        assert sink.getvalue() == joined
        return digest

    assert asyncio.run(received()) == want.hexdigest()


def test_a_written_blob_knows_both_digests_a_read_one_computes(tmp_path: pathlib.Path) -> None:
    params = {"w": np.linspace(0, 1, 500_000, dtype=np.float32)}
    with BlobWriter(tmp_path / "model.safetensors") as writer:
        blobs.write(params, writer)
        written = writer.finish()
    joined = blobs.encode(params)
    read = BlobFile(tmp_path / "model.safetensors")
    assert written.digest == read.digest == hashlib.sha256(joined).hexdigest()
    assert written.blake3 == read.blake3 == blake3.blake3(joined).hexdigest()
