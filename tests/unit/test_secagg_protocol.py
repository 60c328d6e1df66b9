"""SecAgg+ end to end in memory: ClientRound and ServerRound with real cryptography.

The central property: whatever sites drop out at whatever stage, the server's result is exactly
the sum of the updates of the sites that sent masked vectors, or the round fails with
SecAggError. It is never a wrong sum.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from quorum import identity
from quorum.errors import SecAggError
from quorum.privacy.secagg import (
    AdvertisedKeys,
    ClientRound,
    DecodedSum,
    EncryptedShare,
    Peer,
    RevealedShare,
    RoundContext,
    ServerRound,
    Setup,
    UnmaskRequest,
    encode_update,
    generate_keypair,
    levels,
    neighbours,
    prg,
    quantize,
    reconstruct,
)
from quorum.privacy.secagg._encoding import keys_transcript

CONTEXT = RoundContext(run_id="run-7", round=3, attempt=0, model_digest="sha256:feedface")
Vector = npt.NDArray[np.uint32]
# The stage (1..4) at which a site drops out: 1 = never advertises ... 4 = never unmasks.
STAGES = (1, 2, 3, 4)


@dataclasses.dataclass
class Cohort:
    graph: list[frozenset[int]]
    threshold: int
    length: int
    keys: list[Ed25519PrivateKey]
    clients: list[ClientRound]
    server: ServerRound

    @property
    def n(self) -> int:
        return len(self.graph)


def mask_update(
    client: ClientRound, shares: Sequence[EncryptedShare], update: np.ndarray
) -> np.ndarray:
    """The site's two steps after share_keys: take its shares, then mask its update."""
    client.receive_shares(shares)
    return client.mask(update)


def make_cohort(
    n: int,
    degree: int,
    threshold: int,
    length: int = 4,
    seed: int = 0,
    contexts: dict[int, RoundContext] | None = None,
) -> Cohort:
    graph = neighbours(n, degree, random.Random(seed))
    keys = [Ed25519PrivateKey.generate() for _ in range(n)]
    public = [identity.public_bytes(k) for k in keys]
    clients = []
    for i in range(n):
        peers = tuple(Peer(j, f"site-{j}", public[j]) for j in sorted(graph[i]))
        context = (contexts or {}).get(i, CONTEXT)
        clients.append(ClientRound(keys[i], Setup(context, i, threshold, length, peers)))
    server = ServerRound(CONTEXT, graph, threshold, length)
    return Cohort(graph, threshold, length, keys, clients, server)


def as_any(array: npt.NDArray[Any]) -> Any:
    """Lets a test hand a wrongly typed array to an API that must refuse it."""
    return array


def random_updates(n: int, length: int, seed: int = 1) -> list[Vector]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 2**32, size=length, dtype=np.uint32) for _ in range(n)]


def plain_sum(updates: list[Vector], sites: Iterable[int], length: int) -> Vector:
    total = np.zeros(length, dtype=np.uint64)
    for i in sites:
        total += updates[i]
    return (total % 2**32).astype(np.uint32)


@dataclasses.dataclass
class Outcome:
    total: Vector | None = None
    error: SecAggError | None = None
    refused: dict[int, int] = dataclasses.field(default_factory=dict)  # site -> stage


def run(cohort: Cohort, updates: list[Vector], drop: dict[int, int] | None = None) -> Outcome:
    """Drives a whole round; a site that raises SecAggError is treated as having dropped."""
    drop = drop or {}
    server, clients = cohort.server, cohort.clients
    outcome = Outcome()

    def present(i: int, stage: int) -> bool:
        return drop.get(i, 0) != stage

    try:
        for i in range(cohort.n):
            if present(i, 1):
                server.receive_keys(i, clients[i].advertise())
        relay = server.close_advertise()
        for i, keys in relay.items():
            if present(i, 2):
                try:
                    server.receive_shares(i, clients[i].share_keys(keys))
                except SecAggError:
                    outcome.refused[i] = 2
        inbox = server.close_shares()
        for i, shares in inbox.items():
            if present(i, 3):
                try:
                    server.add_masked(i, mask_update(clients[i], shares, updates[i]))
                except SecAggError:
                    outcome.refused[i] = 3
        request = server.close_masked()
        for i in sorted(request.survivors):
            if present(i, 4):
                try:
                    server.receive_unmask(i, clients[i].unmask(request))
                except SecAggError:
                    outcome.refused[i] = 4
        outcome.total = server.finish()
    except SecAggError as exc:
        outcome.error = exc
    return outcome


def expected(
    graph: list[frozenset[int]], t: int, drop: dict[int, int]
) -> tuple[frozenset[int] | None, dict[int, int]]:
    """The protocol's rules restated on sets: the sites whose sum should come out (None when the
    round must fail), and the sites expected to refuse a step themselves."""
    n = len(graph)
    refused: dict[int, int] = {}
    u1 = frozenset(i for i in range(n) if drop.get(i) != 1)
    if len(u1) < t:
        return None, refused
    u2 = set()
    for i in u1:
        if drop.get(i) == 2:
            continue
        if len(graph[i] & u1) + 1 < t:
            refused[i] = 2
        else:
            u2.add(i)
    if len(u2) < t:
        return None, refused
    u3 = set()
    for i in u2:
        if drop.get(i) == 3:
            continue
        if len(graph[i] & u2) + 1 < t:
            refused[i] = 3
        else:
            u3.add(i)
    if len(u3) < t:
        return None, refused
    dropped = u2 - u3
    if any(len((graph[j] | {j}) & u3) < t for j in u3) or any(
        len(graph[u] & u3) < t for u in dropped
    ):
        return None, refused
    if not _connected(graph, frozenset(u3)):  # separate groups would reveal partial sums
        return None, refused
    u4 = {i for i in u3 if drop.get(i) != 4}
    if len(u4) < t:
        return None, refused
    if any(len((graph[j] | {j}) & u4) < t for j in u3) or any(
        len(graph[u] & u4) < t for u in dropped
    ):
        return None, refused
    return frozenset(u3), refused


def _connected(graph: list[frozenset[int]], members: frozenset[int]) -> bool:
    seen = {min(members)}
    frontier = list(seen)
    while frontier:
        for j in graph[frontier.pop()] & members:
            if j not in seen:
                seen.add(j)
                frontier.append(j)
    return seen == members


@st.composite
def rounds(draw: st.DrawFn) -> tuple[Cohort, list[Vector], dict[int, int]]:
    n = draw(st.integers(2, 12))
    degree = draw(st.integers(1, n - 1))
    seed = draw(st.integers(0, 2**16))
    graph = neighbours(n, degree, random.Random(seed))
    t = draw(st.integers(1, min(len(g) for g in graph) + 1))
    length = draw(st.integers(1, 5))
    cohort = make_cohort(n, degree, t, length, seed)
    updates = [
        np.array(
            draw(st.lists(st.integers(0, 2**32 - 1), min_size=length, max_size=length)),
            dtype=np.uint32,
        )
        for _ in range(n)
    ]
    stage_of = draw(st.lists(st.sampled_from((0, 0, 0, 0, 1, 2, 3, 4)), min_size=n, max_size=n))
    drop = {i: s for i, s in enumerate(stage_of) if s}
    return cohort, updates, drop


@settings(max_examples=150, deadline=None)
@given(rounds())
def test_result_is_the_exact_sum_of_survivors_or_a_secagg_error(
    case: tuple[Cohort, list[Vector], dict[int, int]],
) -> None:
    cohort, updates, drop = case
    survivors, refusals = expected(cohort.graph, cohort.threshold, drop)
    outcome = run(cohort, updates, drop)
    if survivors is None:
        assert outcome.total is None
        assert outcome.error is not None
    else:
        assert outcome.error is None, str(outcome.error)
        assert outcome.total is not None
        assert cohort.server.masked == survivors
        assert np.array_equal(outcome.total, plain_sum(updates, survivors, cohort.length))
        assert outcome.refused == refusals


# --- fixed scenarios ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "degree", "threshold", "drop"),
    [
        (5, 4, 3, {}),
        (8, 4, 3, {}),
        (8, 4, 3, {0: 1}),
        (8, 4, 3, {1: 2}),
        (8, 4, 3, {2: 3}),
        (8, 4, 3, {3: 4}),
        (10, 6, 2, {0: 1, 3: 2, 6: 3, 9: 4}),
        (12, 6, 4, {1: 3, 2: 3, 7: 3}),
        (1, 1, 1, {}),
    ],
)
def test_round_recovers_the_sum_despite_dropouts(
    n: int, degree: int, threshold: int, drop: dict[int, int]
) -> None:
    cohort = make_cohort(n, degree, threshold, length=7, seed=n)
    assert expected(cohort.graph, threshold, drop)[0] is not None  # the scenario is recoverable
    updates = random_updates(n, 7)
    outcome = run(cohort, updates, drop)
    assert outcome.error is None, str(outcome.error)
    survivors = [i for i in range(n) if drop.get(i) not in (1, 2, 3)]
    assert outcome.total is not None
    assert np.array_equal(outcome.total, plain_sum(updates, survivors, 7))
    server = cohort.server
    assert server.advertised == {i for i in range(n) if drop.get(i) != 1}
    assert server.shared == {i for i in range(n) if drop.get(i) not in (1, 2)}
    assert server.masked == set(survivors)
    assert server.unmasked == {i for i in survivors if drop.get(i) != 4}


@pytest.mark.parametrize(
    ("drop", "match"),
    [
        ({0: 1, 1: 1, 2: 1}, "2 sites advertised keys, threshold 3"),
        ({0: 2, 1: 2, 2: 2}, "2 sites shared keys, threshold 3"),
        ({0: 3, 1: 3, 2: 3}, "2 sites sent masked vectors, threshold 3"),
        ({0: 4, 1: 4, 2: 4}, "2 sites revealed their shares, threshold 3"),
    ],
)
def test_too_few_survivors_at_any_stage_abort_with_a_reason(
    drop: dict[int, int], match: str
) -> None:
    cohort = make_cohort(5, 4, 3)
    outcome = run(cohort, random_updates(5, 4), drop)
    assert outcome.total is None
    assert outcome.error is not None
    assert match in str(outcome.error)
    with pytest.raises(SecAggError, match="aborted"):
        cohort.server.finish()


def test_an_unrecoverable_neighbourhood_aborts_before_anyone_unmasks() -> None:
    # A ring (degree 2) with threshold 3: when a site's two neighbours both drop after sharing,
    # its own seed has 1 holder left and nothing can be recovered.
    cohort = make_cohort(6, 2, 3)
    ring = cohort.graph
    victim = 0
    a, b = sorted(ring[victim])
    outcome = run(cohort, random_updates(6, 4), {a: 3, b: 3})
    assert outcome.error is not None
    assert "cannot be removed" in str(outcome.error)
    assert cohort.server.unmasked == frozenset()


def test_pairwise_masks_cancel_exactly_once_self_masks_are_removed() -> None:
    n, length = 7, 9
    cohort = make_cohort(n, 4, 3, length)
    updates = random_updates(n, length)
    relay = {i: cohort.clients[i].advertise() for i in range(n)}
    for i in range(n):
        cohort.server.receive_keys(i, relay[i])
    to_site = cohort.server.close_advertise()
    for i in range(n):
        cohort.server.receive_shares(i, cohort.clients[i].share_keys(to_site[i]))
    inbox = cohort.server.close_shares()
    # The odd sites mask in place, as a site does in its upload's buffer; `mask` leaves the
    # update it is given as it was.
    masked = []
    for i in range(n):
        if i % 2:
            cohort.clients[i].receive_shares(inbox[i])
            update = updates[i].copy()
            assert cohort.clients[i].mask_in_place(update) is update
            masked.append(update)
        else:
            masked.append(mask_update(cohort.clients[i], inbox[i], updates[i]))
    for i in range(n):
        assert not np.array_equal(masked[i], updates[i])
    request = UnmaskRequest(frozenset(range(n)), frozenset())
    revealed: dict[int, dict[int, bytes]] = {}
    for i in range(n):
        shares = cohort.clients[i].unmask(request)
        assert {s.kind for s in shares} == {"seed"}
        assert {s.owner for s in shares} == cohort.graph[i] | {i}
        for s in shares:
            revealed.setdefault(s.owner, {})[i + 1] = s.share
    total = plain_sum(masked, range(n), length)
    for j in range(n):
        total -= prg(reconstruct(revealed[j], 3), length)
    assert np.array_equal(total, plain_sum(updates, range(n), length))


def _arrays(value: object) -> int:
    if isinstance(value, np.ndarray):
        return 1
    if isinstance(value, dict):
        return sum(_arrays(k) + _arrays(v) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return sum(_arrays(v) for v in value)
    return 0


def test_server_keeps_one_running_sum_and_no_individual_update() -> None:
    n, length = 6, 32
    cohort = make_cohort(n, 3, 2, length)
    server = cohort.server
    updates = random_updates(n, length)
    for i in range(n):
        server.receive_keys(i, cohort.clients[i].advertise())
    to_site = server.close_advertise()
    for i in range(n):
        server.receive_shares(i, cohort.clients[i].share_keys(to_site[i]))
    inbox = server.close_shares()
    for i in range(n):
        server.add_masked(i, mask_update(cohort.clients[i], inbox[i], updates[i]))
        held = [v for v in vars(server).values() if isinstance(v, np.ndarray)]
        assert len(held) == 1
        assert _arrays(vars(server)) == 1
        if i == 0:
            assert not np.array_equal(held[0], updates[0])
        assert not any(np.array_equal(held[0], u) for u in updates)


class _Blocks:
    """A masked vector as blocks (how the server reads an upload from its spool), or blocks
    that go wrong after the first one."""

    def __init__(self, vector: np.ndarray, size: int, broken: str | None = None) -> None:
        self.length = int(vector.shape[0])
        self._vector, self._size, self._broken = vector, size, broken

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, self.length, self._size):
            if start and self._broken == "read":
                raise OSError("the spool ended")
            if start and self._broken == "order":
                start += 1
            yield start, self._vector[start : start + self._size].copy()


def test_masked_vectors_in_blocks_give_the_exact_sum() -> None:
    n, length = 4, 9
    cohort = make_cohort(n, 3, 2, length)
    server = cohort.server
    updates = random_updates(n, length)
    inbox, _ = _through_share_keys(cohort)
    for i in range(n):
        masked = mask_update(cohort.clients[i], inbox[i], updates[i])
        server.add_masked(i, _Blocks(masked, size=i + 1) if i % 2 else masked)
    request = server.close_masked()
    for i in range(n):
        server.receive_unmask(i, cohort.clients[i].unmask(request))
    assert np.array_equal(server.finish(), plain_sum(updates, range(n), length))


def test_rounds_make_their_sums_in_one_given_vector() -> None:
    """A run hands each round's server the same vector for its sum: the last round's values in
    it are never read (the first masked vector is written, not added)."""
    n, length = 4, 9
    vector = np.full(length, 12345, np.uint32)
    for seed in range(2):  # two rounds, one vector
        cohort = make_cohort(n, 3, 2, length, seed=seed)
        server = ServerRound(CONTEXT, cohort.graph, cohort.threshold, length, sum_vector=vector)
        cohort = dataclasses.replace(cohort, server=server)
        updates = random_updates(n, length, seed=seed + 1)
        inbox, _ = _through_share_keys(cohort)
        for i in range(n):
            server.add_masked(i, mask_update(cohort.clients[i], inbox[i], updates[i]))
        request = server.close_masked()
        for i in range(n):
            server.receive_unmask(i, cohort.clients[i].unmask(request))
        total = server.finish()
        assert np.shares_memory(total, vector)
        assert np.array_equal(total, plain_sum(updates, range(n), length))
    with pytest.raises(SecAggError, match="uint32 vector of 9"):
        ServerRound(CONTEXT, cohort.graph, 2, length, sum_vector=np.zeros(8, np.uint32))


@pytest.mark.parametrize("broken", ["read", "order"])
def test_a_masked_vector_that_cannot_be_read_whole_never_corrupts_a_sum(broken: str) -> None:
    n, length = 4, 9
    cohort = make_cohort(n, 3, 2, length)
    server = cohort.server
    updates = random_updates(n, length)
    inbox, _ = _through_share_keys(cohort)
    masked = [mask_update(cohort.clients[i], inbox[i], updates[i]) for i in range(n)]
    # The first: no sum yet, so the vector is refused and the round goes on without it.
    with pytest.raises(SecAggError, match="could not be read whole"):
        server.add_masked(0, _Blocks(masked[0], 4, broken))
    assert server.masked == frozenset()
    for i in range(1, n):
        server.add_masked(i, masked[i])
    # A later one: part of it is in the sum, which cannot give the right total: the round ends.
    cohort = make_cohort(n, 3, 2, length)
    server = cohort.server
    inbox, _ = _through_share_keys(cohort)
    server.add_masked(0, mask_update(cohort.clients[0], inbox[0], updates[0]))
    second = mask_update(cohort.clients[1], inbox[1], updates[1])
    with pytest.raises(SecAggError, match="round aborted"):
        server.add_masked(1, _Blocks(second, 4, broken))
    with pytest.raises(SecAggError, match="aborted"):
        server.add_masked(2, mask_update(cohort.clients[2], inbox[2], updates[2]))


# --- attacks and tampering ---------------------------------------------------------------------


def _through_share_keys(cohort: Cohort) -> tuple[dict[int, list[EncryptedShare]], Outcome]:
    for i in range(cohort.n):
        cohort.server.receive_keys(i, cohort.clients[i].advertise())
    to_site = cohort.server.close_advertise()
    for i in range(cohort.n):
        cohort.server.receive_shares(i, cohort.clients[i].share_keys(to_site[i]))
    return cohort.server.close_shares(), Outcome()


def test_a_tampered_share_ciphertext_is_refused_naming_the_sender() -> None:
    cohort = make_cohort(5, 4, 3)
    inbox, _ = _through_share_keys(cohort)
    receiver = 2
    shares = list(inbox[receiver])
    victim = shares[1]
    flipped = bytearray(victim.ciphertext)
    flipped[-5] ^= 0x40
    shares[1] = dataclasses.replace(victim, ciphertext=bytes(flipped))
    with pytest.raises(SecAggError, match=rf"site {victim.sender}\b.*authentication failed"):
        mask_update(cohort.clients[receiver], shares, np.zeros(4, dtype=np.uint32))
    with pytest.raises(SecAggError, match="earlier step"):
        cohort.clients[receiver].unmask(UnmaskRequest(frozenset(range(5)), frozenset()))


def test_a_reflected_or_redirected_share_fails_authentication() -> None:
    cohort = make_cohort(4, 3, 2)
    inbox, _ = _through_share_keys(cohort)
    # The share 1 -> 0 passed off as 0 -> 1 (the channel key is the same both ways).
    to_zero = next(s for s in inbox[0] if s.sender == 1)
    reflected = EncryptedShare(sender=0, receiver=1, ciphertext=to_zero.ciphertext)
    others = [s for s in inbox[1] if s.sender != 0]
    with pytest.raises(SecAggError, match=r"site 0.*authentication failed"):
        mask_update(cohort.clients[1], [reflected, *others], np.zeros(4, dtype=np.uint32))
    # The share 2 -> 0 passed to site 3 as if from 2.
    to_zero = next(s for s in inbox[0] if s.sender == 2)
    redirected = EncryptedShare(sender=2, receiver=3, ciphertext=to_zero.ciphertext)
    others = [s for s in inbox[3] if s.sender != 2]
    with pytest.raises(SecAggError, match=r"site 2.*authentication failed"):
        mask_update(cohort.clients[3], [redirected, *others], np.zeros(4, dtype=np.uint32))


def test_a_relay_that_substitutes_a_mask_key_is_caught_by_the_signature() -> None:
    cohort = make_cohort(5, 4, 3)
    advertised = {i: cohort.clients[i].advertise() for i in range(5)}
    _, attacker_public = generate_keypair()
    forged = dataclasses.replace(advertised[4], mask_public=attacker_public)
    relay = [forged if k.index == 4 else k for i, k in advertised.items() if i != 0]
    with pytest.raises(
        SecAggError, match=r"keys of site 4 \(site-4\): the signature .* does not verify"
    ):
        cohort.clients[0].share_keys(relay)


def test_a_site_sent_another_model_is_rejected_by_its_neighbours() -> None:
    other = dataclasses.replace(CONTEXT, model_digest="sha256:0ther")
    cohort = make_cohort(5, 4, 2, contexts={3: other})
    for i in range(5):
        cohort.server.receive_keys(i, cohort.clients[i].advertise())
    to_site = cohort.server.close_advertise()
    for i in (0, 1, 2, 4):
        with pytest.raises(SecAggError, match=r"site 3 .*does not verify"):
            cohort.clients[i].share_keys(to_site[i])
    # And site 3 rejects all of them in turn, naming the first.
    with pytest.raises(SecAggError, match=r"site 0 .*does not verify"):
        cohort.clients[3].share_keys(to_site[3])


def test_keys_replayed_from_another_round_do_not_verify() -> None:
    later = dataclasses.replace(CONTEXT, round=CONTEXT.round + 1)
    old = make_cohort(3, 2, 2)
    new = make_cohort(3, 2, 2, contexts={0: later, 1: later, 2: later})
    new.keys[:] = old.keys
    stale = old.clients[1].advertise()
    # Same identity key for site 1 in the new round: re-sign nothing, replay the old message.
    new_client = ClientRound(
        new.keys[0],
        Setup(
            later,
            0,
            2,
            4,
            tuple(Peer(j, f"site-{j}", identity.public_bytes(old.keys[j])) for j in sorted([1, 2])),
        ),
    )
    new_client.advertise()
    with pytest.raises(SecAggError, match=r"site 1 .*does not verify"):
        new_client.share_keys([stale])


def test_corrupted_revealed_shares_fail_the_round_instead_of_a_wrong_sum() -> None:
    for kind, drop in (("seed", {}), ("key", {4: 3})):
        cohort = make_cohort(5, 4, 2)
        server = cohort.server
        updates = random_updates(5, 4)
        inbox, _ = _through_share_keys(cohort)
        for i in range(5):
            if drop.get(i) != 3:
                server.add_masked(i, mask_update(cohort.clients[i], inbox[i], updates[i]))
        request = server.close_masked()
        for i in sorted(request.survivors):
            shares = cohort.clients[i].unmask(request)
            if i == 0:
                shares = [
                    dataclasses.replace(s, share=bytes(66)) if s.kind == kind else s for s in shares
                ]
            server.receive_unmask(i, shares)
        with pytest.raises(SecAggError, match=r"round aborted: the (self-mask seed|mask key)"):
            server.finish()


# --- the site's refusals -----------------------------------------------------------------------


def test_client_steps_must_come_in_order_and_once() -> None:
    cohort = make_cohort(3, 2, 2)
    client = cohort.clients[0]
    with pytest.raises(SecAggError, match="share_keys called out of order, expected advertise"):
        client.share_keys([])
    client.advertise()
    with pytest.raises(SecAggError, match="advertise called out of order"):
        client.advertise()
    with pytest.raises(SecAggError, match="receive_shares called out of order"):
        client.receive_shares([])
    with pytest.raises(SecAggError, match="mask called out of order"):
        client.mask(np.zeros(4, dtype=np.uint32))


def _advertised(cohort: Cohort) -> dict[int, AdvertisedKeys]:
    return {i: c.advertise() for i, c in enumerate(cohort.clients)}


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda ks: [*ks, ks[0]], "relayed twice"),
        (lambda ks: [dataclasses.replace(ks[0], index=0), *ks[1:]], "its own keys"),
        (lambda ks: [dataclasses.replace(ks[0], index=9), *ks[1:]], "not a neighbour"),
        (lambda ks: [dataclasses.replace(ks[0], mask_public=b"x" * 31)], "31 bytes"),
        (lambda ks: [dataclasses.replace(ks[0], signature=b"\x00" * 64)], "does not verify"),
        (lambda ks: [dataclasses.replace(ks[0], signature=b"")], "does not verify"),
        (lambda ks: [], "only 1 sites of its neighbourhood"),
    ],
)
def test_share_keys_refuses_bad_relays(mutate: object, match: str) -> None:
    cohort = make_cohort(4, 3, 2)
    keys = _advertised(cohort)
    relay = [keys[j] for j in (1, 2, 3)]
    assert callable(mutate)
    with pytest.raises(SecAggError, match=match):
        cohort.clients[0].share_keys(mutate(relay))


def test_share_keys_refuses_a_low_order_key_even_when_signed() -> None:
    cohort = make_cohort(3, 2, 2)
    cohort.clients[0].advertise()
    bad_cipher = bytes(32)
    mask_public = generate_keypair()[1]
    signature = cohort.keys[1].sign(keys_transcript(CONTEXT.encode(), 1, bad_cipher, mask_public))
    keys = AdvertisedKeys(1, bad_cipher, mask_public, signature)
    with pytest.raises(SecAggError, match=r"keys of site 1 are unusable.*low-order"):
        cohort.clients[0].share_keys([keys])


def test_mask_refuses_bad_deliveries_and_bad_updates() -> None:
    def fresh() -> tuple[Cohort, dict[int, list[EncryptedShare]]]:
        cohort = make_cohort(4, 3, 2)
        inbox, _ = _through_share_keys(cohort)
        return cohort, inbox

    zeros = np.zeros(4, dtype=np.uint32)
    cohort, inbox = fresh()
    with pytest.raises(SecAggError, match="relayed twice"):
        mask_update(cohort.clients[0], [*inbox[0], inbox[0][0]], zeros)
    cohort, inbox = fresh()
    with pytest.raises(SecAggError, match="addressed to site 1"):
        mask_update(cohort.clients[0], inbox[1][:1], zeros)
    cohort, inbox = fresh()
    with pytest.raises(SecAggError, match="not a neighbour that advertised"):
        mask_update(cohort.clients[0], [EncryptedShare(7, 0, b"x" * 40)], zeros)
    for bad in (np.zeros(4, dtype=np.int64), np.zeros(5, dtype=np.uint32)):
        cohort, inbox = fresh()
        with pytest.raises(SecAggError, match="uint32 vector of length 4"):
            mask_update(cohort.clients[0], inbox[0], as_any(bad))
    cohort = make_cohort(4, 3, 3)
    inbox, _ = _through_share_keys(cohort)
    with pytest.raises(SecAggError, match="only 2 sites of its neighbourhood"):
        mask_update(cohort.clients[0], inbox[0][:1], zeros)


def _masked_cohort(n: int = 5, degree: int = 4, threshold: int = 3) -> Cohort:
    cohort = make_cohort(n, degree, threshold)
    inbox, _ = _through_share_keys(cohort)
    for i in range(n):
        mask_update(cohort.clients[i], inbox[i], np.zeros(4, dtype=np.uint32))
    return cohort


@pytest.mark.parametrize(
    ("survivors", "dropped", "match"),
    [
        ({0, 1, 2}, {2, 3}, r"\[2\] are listed both"),
        ({1, 2, 3}, {0}, "not listed among the survivors"),
        ({0, 1}, {2, 3, 4}, "only 2 sites of its neighbourhood survived, threshold 3"),
    ],
)
def test_unmask_refuses_requests_that_would_leak(
    survivors: set[int], dropped: set[int], match: str
) -> None:
    cohort = _masked_cohort()
    with pytest.raises(SecAggError, match=match):
        cohort.clients[0].unmask(UnmaskRequest(frozenset(survivors), frozenset(dropped)))


def test_unmask_reveals_one_kind_per_site_and_only_once() -> None:
    cohort = _masked_cohort()
    shares = cohort.clients[0].unmask(UnmaskRequest(frozenset({0, 1, 2}), frozenset({3})))
    assert [(s.owner, s.kind) for s in shares] == [
        (0, "seed"),
        (1, "seed"),
        (2, "seed"),
        (3, "key"),
    ]
    with pytest.raises(SecAggError, match="unmask called out of order"):
        cohort.clients[0].unmask(UnmaskRequest(frozenset({0, 1, 2}), frozenset({3, 4})))


def test_setup_is_validated() -> None:
    key = Ed25519PrivateKey.generate()
    peer = Peer(1, "b", identity.public_bytes(Ed25519PrivateKey.generate()))
    for setup, match in (
        (Setup(CONTEXT, 0, 3, 4, (peer,)), "threshold 3"),
        (Setup(CONTEXT, 0, 1, 0, (peer,)), "vector length"),
        (Setup(CONTEXT, 0, 1, 4, (peer, peer)), "repeated"),
        (Setup(CONTEXT, 1, 1, 4, (peer,)), "its own"),
        (Setup(CONTEXT, 0, 1, 4, (Peer(1, "b", b"k"),)), "identity key of 1 bytes"),
    ):
        with pytest.raises(SecAggError, match=match):
            ClientRound(key, setup)
    with pytest.raises(SecAggError, match="non-negative"):
        RoundContext("r", -1, 0, "d")


def test_context_encoding_separates_every_field() -> None:
    base = CONTEXT.encode()
    variants = [
        dataclasses.replace(CONTEXT, run_id="run-8"),
        dataclasses.replace(CONTEXT, round=4),
        dataclasses.replace(CONTEXT, attempt=1),
        dataclasses.replace(CONTEXT, model_digest="sha256:feedfacf"),
        RoundContext("run-7" + "\x00", 3, 0, "sha256:feedface"[1:]),
    ]
    encodings = {v.encode() for v in variants}
    assert base not in encodings
    assert len(encodings) == len(variants)
    assert base.startswith((16).to_bytes(4, "big") + b"quorum-secagg-v1")


# --- the server's refusals ---------------------------------------------------------------------


def test_server_validates_its_configuration() -> None:
    ring = neighbours(5, 2, random.Random(0))
    with pytest.raises(SecAggError, match="threshold 4"):
        ServerRound(CONTEXT, ring, 4, 3)
    with pytest.raises(SecAggError, match="not symmetric"):
        ServerRound(CONTEXT, [frozenset({1}), frozenset()], 1, 3)
    with pytest.raises(SecAggError, match="at least one site"):
        ServerRound(CONTEXT, [], 1, 3)
    with pytest.raises(SecAggError, match="vector length"):
        ServerRound(CONTEXT, ring, 2, 0)


def test_server_refuses_bad_keys() -> None:
    cohort = make_cohort(3, 2, 2)
    server = cohort.server
    keys = cohort.clients[0].advertise()
    with pytest.raises(SecAggError, match="no such site"):
        server.receive_keys(3, dataclasses.replace(keys, index=3))
    with pytest.raises(SecAggError, match="claim to be those of site 0"):
        server.receive_keys(1, keys)
    with pytest.raises(SecAggError, match="32 bytes"):
        server.receive_keys(0, dataclasses.replace(keys, cipher_public=b"x"))
    with pytest.raises(SecAggError, match="64 bytes"):
        server.receive_keys(0, dataclasses.replace(keys, signature=b"x"))
    server.receive_keys(0, keys)
    with pytest.raises(SecAggError, match="already received"):
        server.receive_keys(0, keys)
    with pytest.raises(SecAggError, match="stage 'advertise keys'"):
        server.receive_shares(0, [])


def test_server_refuses_bad_share_deliveries() -> None:
    cohort = make_cohort(4, 3, 2)
    server = cohort.server
    for i in range(3):  # site 3 never advertises
        server.receive_keys(i, cohort.clients[i].advertise())
    to_site = server.close_advertise()
    with pytest.raises(SecAggError, match="refused"):
        server.receive_keys(3, cohort.clients[3].advertise())
    shares = cohort.clients[0].share_keys(to_site[0])
    assert {s.receiver for s in shares} == {1, 2}
    with pytest.raises(SecAggError, match="did not advertise"):
        server.receive_shares(3, [])
    with pytest.raises(SecAggError, match="claims to be from site 0"):
        server.receive_shares(1, shares)
    with pytest.raises(SecAggError, match=r"none for sites \[2\]"):
        server.receive_shares(0, shares[:1])
    with pytest.raises(SecAggError, match="two are addressed to site 1"):
        server.receive_shares(0, [shares[0], *shares])
    stray = dataclasses.replace(shares[0], receiver=3)
    with pytest.raises(SecAggError, match="site 3 is not a neighbour that advertised"):
        server.receive_shares(0, [*shares, stray])
    server.receive_shares(0, shares)
    with pytest.raises(SecAggError, match="already received"):
        server.receive_shares(0, shares)


def test_server_refuses_bad_masked_vectors_and_unmask_shares() -> None:
    cohort = make_cohort(5, 4, 2)
    server = cohort.server
    for i in range(5):
        server.receive_keys(i, cohort.clients[i].advertise())
    to_site = server.close_advertise()
    for i in range(4):  # site 4 drops before sharing
        server.receive_shares(i, cohort.clients[i].share_keys(to_site[i]))
    inbox = server.close_shares()
    assert sorted(inbox) == [0, 1, 2, 3]
    masked = {i: mask_update(cohort.clients[i], inbox[i], np.zeros(4, np.uint32)) for i in range(4)}
    with pytest.raises(SecAggError, match="did not share keys"):
        server.add_masked(4, masked[0])
    with pytest.raises(SecAggError, match="uint32 vector of length 4"):
        server.add_masked(0, masked[0][:3])
    with pytest.raises(SecAggError, match="uint32 vector of length 4"):
        server.add_masked(0, as_any(masked[0].astype(np.int64)))
    for i in range(3):  # site 3 drops after sharing
        server.add_masked(i, masked[i])
    with pytest.raises(SecAggError, match="already received"):
        server.add_masked(0, masked[0])
    request = server.close_masked()
    assert request == UnmaskRequest(frozenset({0, 1, 2}), frozenset({3}))
    with pytest.raises(SecAggError, match="refused"):
        server.add_masked(3, masked[3])
    shares = cohort.clients[0].unmask(request)
    with pytest.raises(SecAggError, match="did not send a masked vector"):
        server.receive_unmask(3, shares)
    with pytest.raises(SecAggError, match="holds no share of site 4"):
        server.receive_unmask(0, [RevealedShare(4, "key", bytes(66))])
    with pytest.raises(SecAggError, match="share of its key was expected, got 'seed'"):
        server.receive_unmask(0, [RevealedShare(3, "seed", bytes(66))])
    with pytest.raises(SecAggError, match="share of its seed was expected, got 'key'"):
        server.receive_unmask(0, [RevealedShare(1, "key", bytes(66))])
    with pytest.raises(SecAggError, match="two shares for site 1"):
        server.receive_unmask(0, [shares[1], shares[1]])
    with pytest.raises(SecAggError, match="65 bytes"):
        server.receive_unmask(0, [RevealedShare(1, "seed", bytes(65))])
    server.receive_unmask(0, shares)
    with pytest.raises(SecAggError, match="already received"):
        server.receive_unmask(0, shares)
    for i in (1, 2):
        server.receive_unmask(i, cohort.clients[i].unmask(request))
    assert np.array_equal(server.finish(), np.zeros(4, np.uint32))
    with pytest.raises(SecAggError, match="stage 'done'"):
        server.finish()


def test_a_server_with_the_identity_keys_refuses_bad_keys_from_one_site_only() -> None:
    cohort = make_cohort(4, 3, 3)
    public = [identity.public_bytes(k) for k in cohort.keys]
    server = ServerRound(CONTEXT, cohort.graph, 3, cohort.length, identity_keys=public)
    keys = [c.advertise() for c in cohort.clients]
    forged = dataclasses.replace(keys[1], signature=bytes(64))
    with pytest.raises(SecAggError, match="keys from site 1: the signature"):
        server.receive_keys(1, forged)
    low_order = bytes(32)  # the all-zero X25519 point: no shared secret
    signed_low = dataclasses.replace(keys[2], mask_public=low_order)
    with pytest.raises(SecAggError, match="keys from site 2"):
        server.receive_keys(2, signed_low)
    for i in (0, 1, 2, 3):
        server.receive_keys(i, keys[i])  # the genuine keys are still taken
    assert server.advertised == frozenset({0, 1, 2, 3})


def test_the_relay_refuses_share_ciphertexts_of_the_wrong_size() -> None:
    cohort = make_cohort(3, 2, 2)
    keys = [c.advertise() for c in cohort.clients]
    for i, k in enumerate(keys):
        cohort.server.receive_keys(i, k)
    relayed = cohort.server.close_advertise()
    shares = cohort.clients[0].share_keys(relayed[0])
    padded = [dataclasses.replace(shares[0], ciphertext=shares[0].ciphertext + b"x"), *shares[1:]]
    with pytest.raises(SecAggError, match="bytes, expected"):
        cohort.server.receive_shares(0, padded)
    cohort.server.receive_shares(0, shares)


def test_survivors_split_into_unconnected_groups_abort_before_unmasking() -> None:
    # A ring of 6 (each site's neighbours are the next and previous ones). Sites 2 and 5 drop
    # after sharing keys: {0, 1} and {3, 4} have no edge between them, so unmasking would hand
    # the server each pair's sum. Every per-site threshold check still passes.
    graph = [frozenset({(i - 1) % 6, (i + 1) % 6}) for i in range(6)]
    keys = [Ed25519PrivateKey.generate() for _ in range(6)]
    public = [identity.public_bytes(k) for k in keys]
    clients = [
        ClientRound(
            keys[i],
            Setup(
                CONTEXT, i, 2, 4, tuple(Peer(j, f"site-{j}", public[j]) for j in sorted(graph[i]))
            ),
        )
        for i in range(6)
    ]
    server = ServerRound(CONTEXT, graph, 2, 4)
    advertised = [c.advertise() for c in clients]
    for i, k in enumerate(advertised):
        server.receive_keys(i, k)
    relayed = server.close_advertise()
    for i, c in enumerate(clients):
        server.receive_shares(i, c.share_keys(relayed[i]))
    inbox = server.close_shares()
    for i in (0, 1, 3, 4):
        server.add_masked(i, mask_update(clients[i], inbox[i], np.zeros(4, np.uint32)))
    with pytest.raises(SecAggError, match="not connected"):
        server.close_masked()


# --- decoding the unmasked sum ------------------------------------------------------------------


def whole_vector_decode(
    total: Vector, clip: float, bits: int, max_weight: int
) -> npt.NDArray[np.float64]:
    """The mean as the server decoded it before it read it a block at a time (commit 1ce6d1d,
    `decode_sum`): one float64 vector of the whole model."""
    mean = np.asarray(total[:-1], dtype=np.uint32).view(np.int32).astype(np.float64)
    mean *= clip / levels(bits)
    mean *= max_weight / int(total[-1])
    return mean


@pytest.mark.parametrize(
    ("n", "degree", "threshold", "drop", "bits", "max_weight"),
    [
        (5, 4, 3, {}, 24, 1000),
        (8, 4, 3, {0: 1, 2: 3}, 16, 1000),
        (8, 4, 3, {3: 4}, 29, 7),  # max_sites(29) is 8: sums reach the int32 range's edge
        (10, 6, 2, {0: 1, 3: 2, 6: 3, 9: 4}, 20, 1),
    ],
)
def test_the_unmasked_sum_decodes_block_by_block_bit_for_bit_as_whole(
    monkeypatch: pytest.MonkeyPatch,
    n: int,
    degree: int,
    threshold: int,
    drop: dict[int, int],
    bits: int,
    max_weight: int,
) -> None:
    """The server's step reads the mean a block at a time (`DecodedSum.mean_part`, the async
    buffer through `blocks()`): every block, at any cut, is the bytes of the whole-vector decode,
    for sums of encoded updates recovered despite dropouts."""
    clip, length = 0.75, 2_501
    rng = np.random.default_rng(n + bits)
    updates = []
    for _ in range(n):
        delta = rng.normal(0.0, clip / 2, length).astype(np.float32)
        delta[:3] = [10 * clip, -10 * clip, 0.0]  # clipped to +-levels by every site, and zero
        vector, _, _ = encode_update(delta, int(rng.integers(1, 5_000)), clip, bits, max_weight)
        updates.append(vector)
    cohort = make_cohort(n, degree, threshold, length=length + 1, seed=n)
    outcome = run(cohort, updates, drop)
    assert outcome.error is None and outcome.total is not None, str(outcome.error)
    count = len(cohort.server.masked)
    assert count == sum(1 for i in range(n) if drop.get(i) not in (1, 2, 3))
    whole = whole_vector_decode(outcome.total, clip, bits, max_weight).tobytes()

    decoded = DecodedSum(outcome.total, count, clip, bits, max_weight)
    assert decoded.numel == length and decoded.weight == int(outcome.total[-1])
    for block in (1, 7, 1_000, length, length + 5):
        parts = [decoded.mean_part(s, s + block) for s in range(0, length, block)]
        assert b"".join(p.tobytes() for p in parts) == whole
    monkeypatch.setattr(quantize, "DECODE_BLOCK", 333)
    starts, parts = zip(*((s, p.copy()) for s, p in decoded.blocks()), strict=True)
    assert list(starts) == list(range(0, length, 333))
    assert b"".join(p.tobytes() for p in parts) == whole
