"""SecAgg+ protocol messages (quorum.privacy.secagg) to and from their protobuf form, one way
for the site and the server alike."""

from __future__ import annotations

from collections.abc import Iterable

from quorum.privacy.secagg import AdvertisedKeys, EncryptedShare, RevealedShare
from quorum.proto import federation_pb2 as pb


def keys_to_pb(keys: AdvertisedKeys) -> pb.SecAggKeys:
    return pb.SecAggKeys(
        index=keys.index,
        cipher_public=keys.cipher_public,
        mask_public=keys.mask_public,
        signature=keys.signature,
    )


def keys_from_pb(keys: pb.SecAggKeys) -> AdvertisedKeys:
    return AdvertisedKeys(keys.index, keys.cipher_public, keys.mask_public, keys.signature)


def shares_to_pb(shares: Iterable[EncryptedShare]) -> pb.SecAggShareList:
    return pb.SecAggShareList(
        shares=[
            pb.SecAggShare(sender=s.sender, receiver=s.receiver, ciphertext=s.ciphertext)
            for s in shares
        ]
    )


def shares_from_pb(shares: pb.SecAggShareList) -> list[EncryptedShare]:
    return [EncryptedShare(s.sender, s.receiver, s.ciphertext) for s in shares.shares]


def revealed_to_pb(revealed: Iterable[RevealedShare]) -> pb.SecAggRevealedList:
    return pb.SecAggRevealedList(
        shares=[
            pb.SecAggRevealed(owner=r.owner, key=r.kind == "key", share=r.share) for r in revealed
        ]
    )


def revealed_from_pb(revealed: pb.SecAggRevealedList) -> list[RevealedShare]:
    return [RevealedShare(r.owner, "key" if r.key else "seed", r.share) for r in revealed.shares]
