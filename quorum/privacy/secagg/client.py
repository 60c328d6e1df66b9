"""One site's side of one SecAgg+ round.

The site trusts the server only to relay messages. It checks every neighbour's round keys against
that neighbour's long-term identity key, so the server cannot substitute its own keys and
recover the masks; and it reveals, for each neighbour, a share of either its self-mask seed or
its mask key, never both, so the server cannot strip both masks off a site that did report.

Any error leaves the round unusable: a site that has refused a message takes no further part,
rather than retrying with state that may already have been shown to someone.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from quorum.errors import SecAggError
from quorum.privacy.secagg import crypto, shamir
from quorum.privacy.secagg._encoding import (
    keys_transcript,
    mask_key_info,
    share_associated,
    share_key_info,
    uint,
)
from quorum.privacy.secagg.messages import (
    AdvertisedKeys,
    EncryptedShare,
    Peer,
    RevealedShare,
    Setup,
    UnmaskRequest,
)

SIGNATURE_BYTES = 64
IDENTITY_KEY_BYTES = 32
SEED_BYTES = 32
_INDEX_BYTES = 8
_PLAINTEXT_BYTES = 2 * _INDEX_BYTES + 2 * shamir.SHARE_BYTES
SHARE_CIPHERTEXT_BYTES = crypto.NONCE_BYTES + crypto.TAG_BYTES + _PLAINTEXT_BYTES
"""The size of every encrypted pair of shares: anything else is refused by the relay."""


def verify_keys(context: bytes, keys: AdvertisedKeys, identity_key: bytes) -> None:
    """Checks that a site's round keys are well formed and signed by its identity key for this
    round and model; raises SecAggError saying which check failed."""
    if len(keys.cipher_public) != crypto.KEY_BYTES or len(keys.mask_public) != crypto.KEY_BYTES:
        raise SecAggError(
            f"public keys of {len(keys.cipher_public)} and {len(keys.mask_public)} bytes, "
            f"expected {crypto.KEY_BYTES}"
        )
    transcript = keys_transcript(context, keys.index, keys.cipher_public, keys.mask_public)
    try:
        Ed25519PublicKey.from_public_bytes(identity_key).verify(keys.signature, transcript)
    except (InvalidSignature, ValueError):
        raise SecAggError(
            "the signature on the keys does not verify: the keys were substituted in transit, "
            "or that site was sent a different round or model"
        ) from None


class _Stage(enum.Enum):
    ADVERTISE = "advertise"
    SHARE_KEYS = "share_keys"
    RECEIVE_SHARES = "receive_shares"
    MASK = "mask"
    UNMASK = "unmask"
    DONE = "done"
    FAILED = "failed"


def _check_setup(setup: Setup) -> None:
    index = setup.index
    if index < 0:
        raise SecAggError(f"site index {index} is negative")
    seen: set[int] = set()
    for peer in setup.peers:
        if peer.index < 0 or peer.index == index or peer.index in seen:
            raise SecAggError(
                f"site {index}: neighbour index {peer.index} is negative, repeated or its own"
            )
        if len(peer.identity_key) != IDENTITY_KEY_BYTES:
            raise SecAggError(
                f"site {index}: neighbour {peer.index} has an identity key of "
                f"{len(peer.identity_key)} bytes, expected {IDENTITY_KEY_BYTES}"
            )
        seen.add(peer.index)
    if not 1 <= setup.threshold <= len(setup.peers) + 1:
        raise SecAggError(
            f"site {index}: threshold {setup.threshold} is invalid for a neighbourhood of "
            f"{len(setup.peers) + 1} sites (itself included)"
        )
    if setup.vector_length < 1:
        raise SecAggError(
            f"site {index}: vector length must be positive, got {setup.vector_length}"
        )


class ClientRound:
    """advertise → share_keys → mask → unmask, each once and in that order."""

    def __init__(self, identity: Ed25519PrivateKey, setup: Setup) -> None:
        _check_setup(setup)
        self._identity = identity
        self._setup = setup
        self._index = setup.index
        self._threshold = setup.threshold
        self._context = setup.context.encode()
        self._peers: dict[int, Peer] = {p.index: p for p in setup.peers}
        self._stage = _Stage.ADVERTISE
        self._cipher_key, self._cipher_public = crypto.generate_keypair()
        self._mask_key, self._mask_public = crypto.generate_keypair()
        self._u1: frozenset[int] = frozenset()
        self._u2: frozenset[int] = frozenset()
        self._channels: dict[int, bytes] = {}  # neighbour -> share-encryption key
        self._pairwise: dict[int, bytes] = {}  # neighbour -> pairwise mask seed
        self._seed = b""
        self._held: dict[int, tuple[bytes, bytes]] = {}  # owner -> (seed share, key share)

    @property
    def index(self) -> int:
        return self._index

    def _begin(self, stage: _Stage) -> None:
        # The stage is set to FAILED while a step runs, so an exception leaves it there.
        if self._stage is not stage:
            if self._stage is _Stage.FAILED:
                raise SecAggError(
                    f"site {self._index}: {stage.value} refused, an earlier step of this round "
                    "failed"
                )
            raise SecAggError(
                f"site {self._index}: {stage.value} called out of order, expected "
                f"{self._stage.value}"
            )
        self._stage = _Stage.FAILED

    def advertise(self) -> AdvertisedKeys:
        self._begin(_Stage.ADVERTISE)
        signature = self._identity.sign(
            keys_transcript(self._context, self._index, self._cipher_public, self._mask_public)
        )
        self._stage = _Stage.SHARE_KEYS
        return AdvertisedKeys(self._index, self._cipher_public, self._mask_public, signature)

    def _check_keys(self, keys: AdvertisedKeys) -> None:
        j = keys.index
        if j == self._index:
            raise SecAggError(f"site {self._index}: received its own keys back from the relay")
        peer = self._peers.get(j)
        if peer is None:
            raise SecAggError(f"site {self._index}: received keys of site {j}, not a neighbour")
        try:
            verify_keys(self._context, keys, peer.identity_key)
        except SecAggError as exc:
            raise SecAggError(
                f"site {self._index}: keys of site {j} ({peer.name}): {exc}"
            ) from None

    def share_keys(self, keys: Sequence[AdvertisedKeys]) -> list[EncryptedShare]:
        self._begin(_Stage.SHARE_KEYS)
        advertised: dict[int, AdvertisedKeys] = {}
        for k in keys:
            if k.index in advertised:
                raise SecAggError(f"site {self._index}: keys of site {k.index} relayed twice")
            self._check_keys(k)
            advertised[k.index] = k
        u1 = frozenset(advertised) | {self._index}
        if len(u1) < self._threshold:
            raise SecAggError(
                f"site {self._index}: only {len(u1)} sites of its neighbourhood (itself included) "
                f"advertised keys, threshold {self._threshold}"
            )
        # Both agreements are made now, so a neighbour's unusable key stops the round before
        # any share of this site's secrets leaves it.
        info_share = share_key_info(self._context)
        info_mask = mask_key_info(self._context)
        for j, k in advertised.items():
            try:
                self._channels[j] = crypto.agree(self._cipher_key, k.cipher_public, info_share)
                self._pairwise[j] = crypto.agree(self._mask_key, k.mask_public, info_mask)
            except SecAggError as exc:
                raise SecAggError(
                    f"site {self._index}: keys of site {j} are unusable: {exc}"
                ) from None
        self._seed = secrets.token_bytes(SEED_BYTES)
        xs = [i + 1 for i in sorted(u1)]
        seed_shares = shamir.split(self._seed, self._threshold, xs)
        key_shares = shamir.split(crypto.private_bytes(self._mask_key), self._threshold, xs)
        own = self._index + 1
        self._held[self._index] = (seed_shares[own], key_shares[own])
        out = []
        for j in sorted(advertised):
            plaintext = uint(self._index) + uint(j) + seed_shares[j + 1] + key_shares[j + 1]
            ciphertext = crypto.encrypt(
                self._channels[j], plaintext, share_associated(self._context, self._index, j)
            )
            out.append(EncryptedShare(self._index, j, ciphertext))
        self._u1 = u1
        self._stage = _Stage.RECEIVE_SHARES
        return out

    def _open(self, share: EncryptedShare) -> tuple[bytes, bytes]:
        j = share.sender
        try:
            plaintext = crypto.decrypt(
                self._channels[j],
                share.ciphertext,
                share_associated(self._context, j, self._index),
            )
        except SecAggError as exc:
            raise SecAggError(f"site {self._index}: the shares from site {j}: {exc}") from None
        if (
            len(plaintext) != _PLAINTEXT_BYTES
            or plaintext[:_INDEX_BYTES] != uint(j)
            or plaintext[_INDEX_BYTES : 2 * _INDEX_BYTES] != uint(self._index)
        ):
            raise SecAggError(
                f"site {self._index}: the shares from site {j} are malformed or name the wrong "
                "sender or receiver"
            )
        body = plaintext[2 * _INDEX_BYTES :]
        return body[: shamir.SHARE_BYTES], body[shamir.SHARE_BYTES :]

    def receive_shares(self, shares: Sequence[EncryptedShare]) -> None:
        """Takes the shares addressed to this site and settles its mask: its self mask plus
        the pairwise masks with every neighbour that shared keys, expanded when it is added
        (`mask_in_place`)."""
        self._begin(_Stage.RECEIVE_SHARES)
        received: dict[int, tuple[bytes, bytes]] = {}
        for share in shares:
            j = share.sender
            if share.receiver != self._index:
                raise SecAggError(
                    f"site {self._index}: received shares from site {j} addressed to site "
                    f"{share.receiver}"
                )
            if j == self._index or j not in self._channels:
                raise SecAggError(
                    f"site {self._index}: received shares from site {j}, which is not a "
                    "neighbour that advertised keys"
                )
            if j in received:
                raise SecAggError(f"site {self._index}: shares from site {j} relayed twice")
            received[j] = self._open(share)
        u2 = frozenset(received) | {self._index}
        if len(u2) < self._threshold:
            raise SecAggError(
                f"site {self._index}: only {len(u2)} sites of its neighbourhood (itself "
                f"included) shared keys, threshold {self._threshold}"
            )
        self._held.update(received)
        self._u2 = u2
        self._pairwise = {j: self._pairwise[j] for j in u2 - {self._index}}
        self._stage = _Stage.MASK

    def mask(self, update: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
        """The masked update, a new vector: update + the mask, modulo 2^32."""
        if isinstance(update, np.ndarray) and update.dtype == np.uint32:
            update = update.copy()
        return self.mask_in_place(update)

    def mask_in_place(self, update: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
        """Adds the mask into `update` (modulo 2^32) and returns it: the keystreams are
        expanded straight into the vector, so no mask vector is ever held beside it (a site
        passes its upload's own tensor)."""
        self._begin(_Stage.MASK)
        if (
            not isinstance(update, np.ndarray)
            or update.dtype != np.uint32
            or update.shape != (self._setup.vector_length,)
        ):
            raise SecAggError(
                f"site {self._index}: the update must be a uint32 vector of length "
                f"{self._setup.vector_length}"
            )
        crypto.add_prg(update, self._seed)
        for j in sorted(self._pairwise):
            crypto.add_prg(update, self._pairwise[j], subtract=self._index > j)
        # The seeds are no longer needed: this site's own share of them is what it keeps.
        self._seed = b""
        self._pairwise.clear()
        self._stage = _Stage.UNMASK
        return update

    def unmask(self, request: UnmaskRequest) -> list[RevealedShare]:
        self._begin(_Stage.UNMASK)
        survivors, dropped = request.survivors, request.dropped
        if survivors & dropped:
            raise SecAggError(
                f"site {self._index}: sites {sorted(survivors & dropped)} are listed both as "
                "survivors and as dropped"
            )
        if self._index not in survivors:
            raise SecAggError(f"site {self._index}: is not listed among the survivors")
        remaining = self._u2 & survivors
        if len(remaining) < self._threshold:
            raise SecAggError(
                f"site {self._index}: only {len(remaining)} sites of its neighbourhood survived, "
                f"threshold {self._threshold}"
            )
        out = []
        for j in sorted(self._u2):
            seed_share, key_share = self._held[j]
            if j in survivors:
                out.append(RevealedShare(j, "seed", seed_share))
            elif j in dropped:
                out.append(RevealedShare(j, "key", key_share))
        self._held.clear()
        self._stage = _Stage.DONE
        return out
