"""The aggregator's side of one SecAgg+ round.

The server relays keys and encrypted shares between neighbours and folds masked vectors into a
single running sum; it never holds one site's vector apart from the others. After the masked
stage it learns, for each site that reported, its self-mask seed, and for each site that dropped
after sharing, its mask key, from which it removes the pairwise masks the survivors added for
it. What is left is the sum of the survivors' updates.

A malformed message from one site is refused without harming the round; a stage that closes
with too few sites, or shares that do not rebuild a secret, ends the round with SecAggError.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from quorum.errors import SecAggError
from quorum.privacy.secagg import crypto, shamir
from quorum.privacy.secagg._encoding import mask_key_info
from quorum.privacy.secagg.client import SHARE_CIPHERTEXT_BYTES, SIGNATURE_BYTES, verify_keys
from quorum.privacy.secagg.messages import (
    AdvertisedKeys,
    EncryptedShare,
    RevealedShare,
    RoundContext,
    UnmaskRequest,
)


class _Stage(enum.Enum):
    ADVERTISE = "advertise keys"
    SHARE = "share keys"
    MASK = "masked input"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


def _fold(
    total: npt.NDArray[np.uint32],
    blocks: Iterable[tuple[int, npt.NDArray[np.uint32]]],
    first: bool,
) -> None:
    """Writes (`first`) or adds, modulo 2^32 (uint32 addition wraps), blocks covering `total`."""
    end = 0
    for start, block in blocks:
        if start != end or block.dtype != np.uint32:
            raise ValueError(f"blocks out of order at {start}, or not uint32")
        end = start + block.shape[0]
        if first:
            total[start:end] = block
        else:
            np.add(total[start:end], block, out=total[start:end])
    if end != total.shape[0]:
        raise ValueError(f"blocks cover {end} of {total.shape[0]} values")


class MaskedBlocks(Protocol):
    """A masked vector of `length` uint32 values as consecutive (start, values) blocks, each
    valid until the next is asked for."""

    @property
    def length(self) -> int: ...

    def blocks(self) -> Iterator[tuple[int, npt.NDArray[np.uint32]]]: ...


class ServerRound:
    """receive_keys* → close_advertise → receive_shares* → close_shares → add_masked* →
    close_masked → receive_unmask* → finish.

    `advertised`, `shared`, `masked` and `unmasked` (U1..U4) grow as messages are accepted and
    are fixed once their stage closes.
    """

    def __init__(
        self,
        context: RoundContext,
        graph: Sequence[frozenset[int]],
        threshold: int,
        vector_length: int,
        identity_keys: Sequence[bytes] | None = None,
        sum_vector: npt.NDArray[np.uint32] | None = None,
    ) -> None:
        """`identity_keys` (each site's Ed25519 public key, by index), when given, lets the
        server refuse a site's badly signed or unusable keys instead of relaying them.
        `sum_vector` (uint32, `vector_length` values, its values not read), when given, is where
        the sum is made: a run's rounds one after the other in one vector, faulted in once."""
        if sum_vector is not None and (
            sum_vector.dtype != np.uint32 or sum_vector.shape != (vector_length,)
        ):
            raise SecAggError(f"the sum needs a uint32 vector of {vector_length} values")
        self._spare = sum_vector
        n = len(graph)
        if n < 1:
            raise SecAggError("a SecAgg round needs at least one site")
        for i, peers in enumerate(graph):
            for j in peers:
                if not 0 <= j < n or j == i or i not in graph[j]:
                    raise SecAggError(
                        f"the SecAgg graph is invalid at site {i}: neighbour {j} is out of "
                        "range, itself, or not symmetric"
                    )
        smallest = min(len(peers) for peers in graph) + 1
        if not 1 <= threshold <= smallest:
            raise SecAggError(
                f"threshold {threshold} is invalid: expected 1..{smallest}, the smallest "
                "neighbourhood (a site and its neighbours)"
            )
        if vector_length < 1:
            raise SecAggError(f"vector length must be positive, got {vector_length}")
        self._context = context
        if identity_keys is not None and len(identity_keys) != n:
            raise SecAggError(f"{len(identity_keys)} identity keys for {n} sites")
        self._identity_keys = identity_keys
        self._mask_info = mask_key_info(context.encode())
        self._graph = [frozenset(g) for g in graph]
        self._n = n
        self._threshold = threshold
        self._length = vector_length
        self._stage = _Stage.ADVERTISE
        self._keys: dict[int, AdvertisedKeys] = {}
        self._shares: dict[int, dict[int, EncryptedShare]] = {}  # sender -> receiver -> share
        self._masked: set[int] = set()
        self._sum: npt.NDArray[np.uint32] | None = None
        # owner -> x (revealer index + 1) -> share; kind follows from whether the owner survived
        self._revealed: dict[int, dict[int, bytes]] = {}
        self._unmasked: set[int] = set()

    @property
    def advertised(self) -> frozenset[int]:
        return frozenset(self._keys)

    @property
    def shared(self) -> frozenset[int]:
        return frozenset(self._shares)

    @property
    def masked(self) -> frozenset[int]:
        return frozenset(self._masked)

    @property
    def unmasked(self) -> frozenset[int]:
        return frozenset(self._unmasked)

    def _expect(self, stage: _Stage, action: str) -> None:
        if self._stage is not stage:
            raise SecAggError(
                f"{action} refused: the round is at stage '{self._stage.value}', not "
                f"'{stage.value}'"
            )

    def _abort(self, message: str) -> SecAggError:
        self._stage = _Stage.ABORTED
        self._sum = None
        return SecAggError(message)

    def _check_count(self, members: frozenset[int], what: str) -> None:
        if len(members) < self._threshold:
            raise self._abort(
                f"round aborted: {len(members)} sites {what}, threshold {self._threshold}"
            )

    # --- advertise keys ---------------------------------------------------------------------

    def receive_keys(self, index: int, keys: AdvertisedKeys) -> None:
        self._expect(_Stage.ADVERTISE, f"keys from site {index}")
        if not 0 <= index < self._n:
            raise SecAggError(f"keys from site {index}: no such site (0..{self._n - 1})")
        if keys.index != index:
            raise SecAggError(f"keys from site {index} claim to be those of site {keys.index}")
        if index in self._keys:
            raise SecAggError(f"keys from site {index}: already received")
        if len(keys.cipher_public) != crypto.KEY_BYTES or len(keys.mask_public) != crypto.KEY_BYTES:
            raise SecAggError(
                f"keys from site {index}: public keys must be {crypto.KEY_BYTES} bytes, got "
                f"{len(keys.cipher_public)} and {len(keys.mask_public)}"
            )
        if len(keys.signature) != SIGNATURE_BYTES:
            raise SecAggError(
                f"keys from site {index}: the signature must be {SIGNATURE_BYTES} bytes, got "
                f"{len(keys.signature)}"
            )
        if self._identity_keys is not None:
            # Refused here, one bad site is one dropout; relayed, it would make every one of
            # its neighbours leave the round.
            try:
                verify_keys(self._context.encode(), keys, self._identity_keys[index])
                probe, _ = crypto.generate_keypair()
                for public in (keys.cipher_public, keys.mask_public):
                    crypto.agree(probe, public, b"quorum-secagg-key-check")  # low-order points
            except SecAggError as exc:
                raise SecAggError(f"keys from site {index}: {exc}") from None
        self._keys[index] = keys

    def close_advertise(self) -> dict[int, list[AdvertisedKeys]]:
        """For each site that advertised, the keys of its neighbours that advertised."""
        self._expect(_Stage.ADVERTISE, "closing the advertise stage")
        u1 = self.advertised
        self._check_count(u1, "advertised keys")
        self._stage = _Stage.SHARE
        return {i: [self._keys[j] for j in sorted(self._graph[i] & u1)] for i in sorted(u1)}

    # --- share keys -------------------------------------------------------------------------

    def receive_shares(self, index: int, shares: Sequence[EncryptedShare]) -> None:
        self._expect(_Stage.SHARE, f"shares from site {index}")
        if index not in self._keys:
            raise SecAggError(f"shares from site {index}: it did not advertise keys")
        if index in self._shares:
            raise SecAggError(f"shares from site {index}: already received")
        expected = self._graph[index] & self.advertised
        by_receiver: dict[int, EncryptedShare] = {}
        for share in shares:
            if share.sender != index:
                raise SecAggError(
                    f"shares from site {index}: one claims to be from site {share.sender}"
                )
            if share.receiver not in expected:
                raise SecAggError(
                    f"shares from site {index}: site {share.receiver} is not a neighbour that "
                    "advertised keys"
                )
            if len(share.ciphertext) != SHARE_CIPHERTEXT_BYTES:
                raise SecAggError(
                    f"shares from site {index}: one is {len(share.ciphertext)} bytes, expected "
                    f"{SHARE_CIPHERTEXT_BYTES}"
                )
            if share.receiver in by_receiver:
                raise SecAggError(
                    f"shares from site {index}: two are addressed to site {share.receiver}"
                )
            by_receiver[share.receiver] = share
        if by_receiver.keys() != expected:
            raise SecAggError(
                f"shares from site {index}: none for sites {sorted(expected - by_receiver.keys())}"
            )
        self._shares[index] = by_receiver

    def close_shares(self) -> dict[int, list[EncryptedShare]]:
        """For each site that shared, the shares addressed to it by the others that did."""
        self._expect(_Stage.SHARE, "closing the share-keys stage")
        u2 = self.shared
        self._check_count(u2, "shared keys")
        self._stage = _Stage.MASK
        return {i: [self._shares[j][i] for j in sorted(self._graph[i] & u2)] for i in sorted(u2)}

    # --- masked input -----------------------------------------------------------------------

    def add_masked(self, index: int, vector: npt.NDArray[np.uint32] | MaskedBlocks) -> None:
        """Folds a site's masked vector into the running sum, whole or a block at a time (an
        upload read from its spool): the sum is the round's one vector of its own, written by
        the first (the first masked vector is the sum of one) and added to by the others."""
        self._expect(_Stage.MASK, f"masked vector from site {index}")
        if index not in self._shares:
            raise SecAggError(f"masked vector from site {index}: it did not share keys")
        if index in self._masked:
            raise SecAggError(f"masked vector from site {index}: already received")
        blocks: Iterable[tuple[int, npt.NDArray[np.uint32]]]
        if isinstance(vector, np.ndarray):
            fits = vector.dtype == np.uint32 and vector.shape == (self._length,)
            blocks = [(0, vector)]
        else:
            fits = vector.length == self._length
            blocks = vector.blocks()
        if not fits:
            raise SecAggError(
                f"masked vector from site {index}: expected a uint32 vector of length "
                f"{self._length}"
            )
        first = self._sum is None
        if self._sum is not None:
            total = self._sum
        elif self._spare is not None:
            total = self._spare
        else:
            total = np.empty(self._length, np.uint32)
        try:
            _fold(total, blocks, first)
        except (OSError, ValueError) as exc:
            message = f"masked vector from site {index} could not be read whole: {exc}"
            if first:  # nothing of it is in a sum yet
                raise SecAggError(message) from None
            raise self._abort(f"round aborted: {message}; the sum holds part of it") from None
        self._sum = total
        self._masked.add(index)

    def _recoverable(self, survivors: frozenset[int], dropped: frozenset[int]) -> None:
        """Fails early when, even if every survivor answers, some mask could not be removed."""
        for j in sorted(survivors):
            holders = len((self._graph[j] | {j}) & survivors)
            if holders < self._threshold:
                raise self._abort(
                    f"round aborted: the self-mask of site {j} cannot be removed, only "
                    f"{holders} sites holding its shares survived, threshold {self._threshold}"
                )
        for u in sorted(dropped):
            holders = len(self._graph[u] & survivors)
            if holders < self._threshold:
                raise self._abort(
                    f"round aborted: the masks of dropped site {u} cannot be removed, only "
                    f"{holders} sites holding its shares survived, threshold {self._threshold}"
                )

    def close_masked(self) -> UnmaskRequest:
        self._expect(_Stage.MASK, "closing the masked-input stage")
        u3 = self.masked
        self._check_count(u3, "sent masked vectors")
        dropped = self.shared - u3
        self._recoverable(u3, dropped)
        self._connected(u3)
        self._stage = _Stage.UNMASK
        return UnmaskRequest(survivors=u3, dropped=dropped)

    def _connected(self, survivors: frozenset[int]) -> None:
        """The pairwise masks hide single sums only across edges: if the survivors fell into
        groups with no edge between them, unmasking would reveal each group's sum."""
        start = min(survivors)
        seen = {start}
        frontier = [start]
        while frontier:
            for j in self._graph[frontier.pop()] & survivors:
                if j not in seen:
                    seen.add(j)
                    frontier.append(j)
        if seen != survivors:
            raise self._abort(
                f"round aborted: the {len(survivors)} sites that sent masked vectors are not "
                f"connected in the SecAgg graph (sites {sorted(survivors - seen)} share no "
                f"neighbour with site {start}); unmasking would reveal partial sums"
            )

    # --- unmask -----------------------------------------------------------------------------

    def receive_unmask(self, index: int, shares: Sequence[RevealedShare]) -> None:
        self._expect(_Stage.UNMASK, f"unmask shares from site {index}")
        if index not in self._masked:
            raise SecAggError(f"unmask shares from site {index}: it did not send a masked vector")
        if index in self._unmasked:
            raise SecAggError(f"unmask shares from site {index}: already received")
        owners = (self._graph[index] | {index}) & self.shared
        accepted: dict[int, bytes] = {}
        for share in shares:
            j = share.owner
            if j not in owners:
                raise SecAggError(f"unmask shares from site {index}: it holds no share of site {j}")
            expected = "seed" if j in self._masked else "key"
            if share.kind != expected:
                raise SecAggError(
                    f"unmask shares from site {index}: for site {j} a share of its "
                    f"{expected} was expected, got '{share.kind}'"
                )
            if j in accepted:
                raise SecAggError(f"unmask shares from site {index}: two shares for site {j}")
            if len(share.share) != shamir.SHARE_BYTES:
                raise SecAggError(
                    f"unmask shares from site {index}: the share for site {j} is "
                    f"{len(share.share)} bytes, expected {shamir.SHARE_BYTES}"
                )
            accepted[j] = share.share
        for j, share_bytes in accepted.items():
            self._revealed.setdefault(j, {})[index + 1] = share_bytes
        self._unmasked.add(index)

    def _rebuild(self, owner: int, what: str) -> bytes:
        shares = self._revealed.get(owner, {})
        if len(shares) < self._threshold:
            raise self._abort(
                f"round aborted: the {what} of site {owner} cannot be rebuilt, only "
                f"{len(shares)} shares were revealed, threshold {self._threshold}"
            )
        try:
            return shamir.reconstruct(shares, self._threshold)
        except SecAggError as exc:
            raise self._abort(
                f"round aborted: the {what} of site {owner} cannot be rebuilt: {exc}"
            ) from None

    def finish(self) -> npt.NDArray[np.uint32]:
        """The sum of the updates of the sites that sent masked vectors, modulo 2^32."""
        self._expect(_Stage.UNMASK, "finishing")
        self._check_count(self.unmasked, "revealed their shares")
        total = self._sum
        if total is None:  # unreachable: close_masked saw at least one masked vector
            raise self._abort("round aborted: no masked vector was received")
        survivors = frozenset(self._masked)
        for j in sorted(survivors):
            seed = self._rebuild(j, "self-mask seed")
            if len(seed) != crypto.KEY_BYTES:
                raise self._abort(
                    f"round aborted: the rebuilt self-mask seed of site {j} is {len(seed)} "
                    f"bytes, expected {crypto.KEY_BYTES}: bad shares"
                )
            crypto.add_prg(total, seed, subtract=True)
        for u in sorted(self.shared - survivors):
            raw = self._rebuild(u, "mask key")
            try:
                key = crypto.load_private(raw)
            except SecAggError as exc:
                raise self._abort(f"round aborted: mask key of site {u}: {exc}") from None
            if crypto.public_bytes(key) != self._keys[u].mask_public:
                raise self._abort(
                    f"round aborted: the rebuilt mask key of site {u} does not match the public "
                    "key it advertised: bad shares"
                )
            for v in sorted(self._graph[u] & survivors):
                try:
                    seed = crypto.agree(key, self._keys[v].mask_public, self._mask_info)
                except SecAggError as exc:
                    raise self._abort(f"round aborted: mask key of site {v}: {exc}") from None
                # v added +PRG when v < u and -PRG when v > u; undo it.
                crypto.add_prg(total, seed, subtract=v < u)
        self._sum = None
        self._revealed.clear()
        self._stage = _Stage.DONE
        return total
