"""The gossip relay's end-to-end encryption, and a site's kept models: signed round keys, one
key per pair, ciphertexts bound to run, round, attempt and direction, tampering detected."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from quorum import identity
from quorum.client.gossip_models import GossipModels
from quorum.errors import GossipError
from quorum.privacy import gossip_channel as channel
from quorum.wire import blobs

RUN, ROUND, ATTEMPT = "run-abc", 3, 1


def keys() -> tuple[tuple[object, bytes], tuple[object, bytes]]:
    return channel.generate_key(), channel.generate_key()


def test_a_round_key_verifies_only_for_its_identity_round_attempt_and_index() -> None:
    site = identity.generate()
    _, public = channel.generate_key()
    signature = channel.sign_key(site, RUN, ROUND, ATTEMPT, 2, public)
    registered = identity.public_bytes(site)
    channel.verify_key(registered, RUN, ROUND, ATTEMPT, 2, public, signature)
    other = identity.public_bytes(identity.generate())
    _, substitute = channel.generate_key()
    for args in [
        (other, RUN, ROUND, ATTEMPT, 2, public),  # another site's identity
        (registered, "run-xyz", ROUND, ATTEMPT, 2, public),
        (registered, RUN, ROUND + 1, ATTEMPT, 2, public),  # replayed into the next round
        (registered, RUN, ROUND, ATTEMPT + 1, 2, public),
        (registered, RUN, ROUND, ATTEMPT, 1, public),  # claimed for another index
        (registered, RUN, ROUND, ATTEMPT, 2, substitute),  # a key the server made up
    ]:
        with pytest.raises(GossipError) as caught:
            channel.verify_key(*args, signature)  # type: ignore[arg-type]
        assert caught.value.code == "bad_key_signature"


def test_both_ends_derive_one_pair_key_bound_to_the_round() -> None:
    (a_private, a_public), (b_private, b_public) = channel.generate_key(), channel.generate_key()
    ab = channel.pair_key(a_private, b_public, RUN, ROUND, ATTEMPT, 0, 1)
    assert ab == channel.pair_key(b_private, a_public, RUN, ROUND, ATTEMPT, 1, 0)
    assert ab != channel.pair_key(a_private, b_public, RUN, ROUND + 1, ATTEMPT, 0, 1)
    assert ab != channel.pair_key(a_private, b_public, RUN, ROUND, ATTEMPT, 0, 2)
    with pytest.raises(GossipError):
        channel.pair_key(a_private, bytes(32), RUN, ROUND, ATTEMPT, 0, 1)  # low-order point


def test_a_parcel_opens_only_with_its_key_round_and_direction() -> None:
    (a_private, _), (_, b_public) = channel.generate_key(), channel.generate_key()
    key = channel.pair_key(a_private, b_public, RUN, ROUND, ATTEMPT, 0, 1)
    model = blobs.encode({"w": np.arange(12, dtype=np.float32).reshape(3, 4)})
    sealed = channel.seal(key, model, channel.associated_data(RUN, ROUND, ATTEMPT, 0, 1))
    assert model not in sealed and len(sealed) == len(model) + channel.OVERHEAD_BYTES
    assert channel.open_parcel(key, sealed, channel.associated_data(RUN, ROUND, ATTEMPT, 0, 1)) == (
        model
    )
    wrong = [
        (key, channel.associated_data(RUN, ROUND, ATTEMPT, 1, 0)),  # reflected to its sender
        (key, channel.associated_data(RUN, ROUND, ATTEMPT, 0, 2)),  # redirected to another site
        (key, channel.associated_data(RUN, ROUND + 1, ATTEMPT, 0, 1)),  # replayed a round later
        (key, channel.associated_data(RUN, ROUND, ATTEMPT + 1, 0, 1)),
        (bytes(32), channel.associated_data(RUN, ROUND, ATTEMPT, 0, 1)),  # another key
    ]
    for other_key, associated in wrong:
        with pytest.raises(GossipError) as caught:
            channel.open_parcel(other_key, sealed, associated)
        assert caught.value.code == "relay_tampered"
    for position in (0, len(sealed) // 2, len(sealed) - 1):
        tampered = bytearray(sealed)
        tampered[position] ^= 0x80
        with pytest.raises(GossipError):
            channel.open_parcel(key, bytes(tampered), channel.associated_data(RUN, ROUND, 1, 0, 1))
    with pytest.raises(GossipError):
        channel.open_parcel(key, sealed[:20], channel.associated_data(RUN, ROUND, 1, 0, 1))


def test_kept_models_survive_a_restart_and_a_rerun_round_starts_from_the_one_before(
    tmp_path: pathlib.Path,
) -> None:
    def model(value: float) -> bytes:
        return blobs.encode({"w": np.full(3, value, np.float32)})

    kept = GossipModels(tmp_path)
    assert kept.latest_before(RUN, 1) is None
    for r in (1, 2, 3):
        kept.save(RUN, r, model(r))
    again = GossipModels(tmp_path)  # a restarted agent
    assert again.latest_before(RUN, 4) == (3, model(3))
    assert again.latest_before(RUN, 3) == (2, model(2))  # round 3 run again
    assert again.latest_before(RUN, 2) is None  # only the newest two are kept
    assert sorted(p.name for p in (tmp_path / RUN).iterdir()) == [
        "round-2.safetensors",
        "round-3.safetensors",
    ]
    (tmp_path / RUN / "round-3.safetensors").write_bytes(b"torn")
    assert again.latest_before(RUN, 4) == (2, model(2))  # a damaged file is passed over
    with pytest.raises(Exception, match="cannot name a folder"):
        again.save("../escape", 1, model(1))
