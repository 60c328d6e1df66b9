"""Unit tests of quorum.aggregation: the streaming accumulator and the server strategies."""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quorum.aggregation import Accumulator, FedAvg, FedOpt, Strategy, accumulator, make_strategy
from quorum.aggregation.accumulator import FOLD_BLOCK, FlatBlocks, by_slices
from quorum.aggregation.fedbuff import FedBuff
from quorum.errors import ConfigError, StoreError
from quorum.privacy.dp.central import ClippedSum

# --- Accumulator -----------------------------------------------------------------------------


def test_accumulator_weighted_mean_by_hand() -> None:
    acc = Accumulator(3)
    acc.fold(np.array([1.0, 2.0, 3.0]), 1)
    acc.fold(np.array([3.0, 0.0, -1.0]), 3)
    # (1*[1, 2, 3] + 3*[3, 0, -1]) / 4 = [10, 2, 0] / 4
    np.testing.assert_allclose(acc.mean(), [2.5, 0.5, 0.0], rtol=0, atol=1e-15)
    assert acc.count == 2
    assert acc.total_weight == 4.0
    # a float32 vector is folded in float64: 0.1 is not representable in float32, and
    # (4*[2.5, 0.5, 0] + 6*[-0.5, 1.5, 4]) / 10 = [0.7, 1.1, 2.4]
    acc.fold(np.array([-0.5, 1.5, 4.0], dtype=np.float32), 6.0)
    mean = acc.mean()
    assert mean.dtype == np.float64
    np.testing.assert_allclose(mean, [0.7, 1.1, 2.4], rtol=0, atol=1e-15)
    assert acc.count == 3
    assert acc.total_weight == 10.0


def test_accumulator_float16_input_and_fractional_weights() -> None:
    acc = Accumulator(2)
    acc.fold(np.array([0.5, -2.0], dtype=np.float16), 0.25)
    acc.fold(np.array([1.5, 2.0], dtype=np.float16), 0.75)
    # 0.25*[0.5, -2] + 0.75*[1.5, 2] = [0.125 + 1.125, -0.5 + 1.5]
    np.testing.assert_array_equal(acc.mean(), [1.25, 1.0])


def test_accumulator_mean_is_a_fresh_array() -> None:
    acc = Accumulator(2)
    acc.fold(np.array([1.0, 1.0]), 2)
    first = acc.mean()
    acc.fold(np.array([3.0, 3.0]), 2)
    np.testing.assert_array_equal(first, [1.0, 1.0])
    np.testing.assert_array_equal(acc.mean(), [2.0, 2.0])


def test_accumulator_does_not_modify_inputs() -> None:
    vector = np.array([1.0, 2.0])
    vector.flags.writeable = False  # as the read-only views over received blobs are
    acc = Accumulator(2)
    acc.fold(vector, 5)
    np.testing.assert_array_equal(vector, [1.0, 2.0])


@pytest.mark.parametrize(
    "bad",
    [np.zeros(2), np.zeros(4), np.zeros((3, 1)), np.zeros((1, 3)), np.zeros(())],
)
def test_accumulator_rejects_wrong_shape(bad: np.ndarray) -> None:
    acc = Accumulator(3)
    with pytest.raises(ValueError, match="shape"):
        acc.fold(bad, 1.0)
    assert acc.count == 0


@pytest.mark.parametrize("weight", [0, 0.0, -1.0, math.nan, math.inf])
def test_accumulator_rejects_non_positive_weight(weight: float) -> None:
    acc = Accumulator(3)
    with pytest.raises(ValueError, match="weight"):
        acc.fold(np.ones(3), weight)
    assert acc.count == 0
    assert acc.total_weight == 0.0


def test_accumulator_rejects_integer_vectors() -> None:
    with pytest.raises(ValueError, match="dtype"):
        Accumulator(3).fold(np.ones(3, dtype=np.int64), 1.0)


def test_accumulator_mean_before_fold() -> None:
    with pytest.raises(ValueError, match="nothing was folded"):
        Accumulator(3).mean()


def test_accumulator_negative_numel() -> None:
    with pytest.raises(ValueError):
        Accumulator(-1)


def test_accumulator_never_reads_its_vector_before_the_first_fold() -> None:
    # The sum's vector is allocated uninitialised; memory an array of NaN just gave back is
    # likely handed out again, and none of it may reach the mean.
    for _ in range(20):
        junk = np.full(1000, np.nan)
        del junk
        acc = Accumulator(1000)
        acc.fold(np.full(1000, 3.0, np.float32), 2.0)
        acc.fold(np.ones(1000, np.float32), 1.0)
        assert np.array_equal(acc.mean(), np.full(1000, 7.0 / 3.0))


def test_every_sum_folds_blocks_of_any_size_into_its_one_scratch() -> None:
    """The plain sum, FedBuff's buffer and central DP's clipped sum fold an update whose blocks
    are larger than their scratch (a codec's), then smaller ones, each as the whole vector."""
    numel = 3 * FOLD_BLOCK + 7
    base = np.linspace(-1, 1, numel)
    first, second = np.linspace(0, 2, numel, dtype=np.float32), np.full(numel, 0.5, np.float32)
    large, small = FlatBlocks(first, block=2 * FOLD_BLOCK), FlatBlocks(second, block=1000)
    acc = Accumulator(numel)
    acc.fold(large, 1.0)
    acc.fold(large, 1.0)  # the second fold adds through the scratch, grown for these blocks
    acc.fold(small, 2.0)
    np.testing.assert_allclose(acc.mean(), (2 * first.astype(np.float64) + 2 * 0.5) / 4)
    buffer = FedBuff(numel, buffer_size=2)
    buffer.add(large, buffer.admit(0), base=base)
    buffer.add(small, buffer.admit(0), base=base)
    expected = (first.astype(np.float64) - base + 0.5 - base) / 2
    np.testing.assert_allclose(buffer.step(np.zeros(numel)), expected, rtol=1e-6, atol=1e-6)
    clipped = ClippedSum(base, clipping_norm=1e9)
    clipped.fold(large, 1.0)
    clipped.fold(small, 1.0)
    np.testing.assert_allclose(clipped.sum, 2 * expected, rtol=1e-6, atol=1e-6)


@pytest.fixture
def three_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Folds of 3,000 values or more in three slices, whatever the machine's cores."""
    monkeypatch.setattr(accumulator, "FOLD_THREADS", 3)
    monkeypatch.setattr(accumulator, "SLICE_VALUES", 1000)


@pytest.mark.usefixtures("three_slices")
def test_a_large_update_is_worked_on_in_slices_on_several_threads() -> None:
    """Every value once, in slices that start where the one before stops, the first on the
    caller's thread and the others on the fold pool's."""
    vector = np.arange(3500, dtype=np.float64)
    seen: dict[int, list[tuple[int, np.ndarray]]] = {}
    threads: set[str] = set()
    lock = threading.Lock()

    def work(blocks: object, index: int) -> None:
        got = [(start, values.copy()) for start, values in blocks]  # type: ignore[attr-defined]
        with lock:
            seen[index] = got
            threads.add(threading.current_thread().name)

    by_slices(FlatBlocks(vector, block=300), work)
    assert sorted(seen) == [0, 1, 2]
    starts = [[start for start, _ in seen[i]] for i in range(3)]
    assert [s[0] for s in starts] == [0, 1166, 2333]
    np.testing.assert_array_equal(np.concatenate([v for i in range(3) for _, v in seen[i]]), vector)
    assert threading.current_thread().name in threads and len(threads) >= 2
    # Slices of fewer than SLICE_VALUES, or an update that can only be read in order (a
    # codec's), in one piece.
    seen.clear()
    by_slices(FlatBlocks(vector[:1999]), work)
    assert sorted(seen) == [0] and len(seen[0]) == 1

    class InOrder:
        numel = 3500

        def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
            return FlatBlocks(vector).blocks()

    seen.clear()
    by_slices(InOrder(), work)
    assert sorted(seen) == [0] and len(seen[0]) == 1


@pytest.mark.usefixtures("three_slices")
def test_a_slice_that_fails_is_raised_once_every_slice_is_done() -> None:
    done = threading.Event()

    def work(blocks: object, index: int) -> None:
        if index == 1:
            raise ValueError("slice 1 could not be read")
        if index == 0:
            time.sleep(0.2)  # the failure comes first; the caller still waits for this slice
            done.set()

    with pytest.raises(ValueError, match="slice 1"):
        by_slices(FlatBlocks(np.zeros(3000)), work)
    assert done.is_set()


@pytest.mark.usefixtures("three_slices")
def test_a_slice_handed_over_is_waited_for_when_the_next_cannot_be(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pool takes slice 1, then refuses slice 2 (no thread can be started): the error is
    raised only once slice 1 has stopped writing."""
    done = threading.Event()
    real = accumulator._POOL

    class Refusing:
        def __init__(self) -> None:
            self.taken = 0

        def submit(self, *args: Any) -> Any:
            self.taken += 1
            if self.taken > 1:
                raise RuntimeError("can't start new thread")
            return real.submit(*args)

    refusing = Refusing()
    monkeypatch.setattr(accumulator, "_POOL", refusing)

    def work(blocks: object, index: int) -> None:
        time.sleep(0.2)
        done.set()

    with pytest.raises(RuntimeError, match="new thread"):
        by_slices(FlatBlocks(np.zeros(3000)), work)
    assert done.is_set()


@pytest.mark.usefixtures("three_slices")
def test_sums_folded_in_slices_are_the_sums_folded_whole() -> None:
    """The plain sum and FedBuff's buffer, over slices on three threads: the same values as
    the arithmetic on whole vectors (each value is folded once, by one thread)."""
    numel = 3500
    rng = np.random.default_rng(1)
    base = rng.standard_normal(numel)
    first, second = rng.standard_normal((2, numel)).astype(np.float32)
    acc = Accumulator(numel)
    acc.fold(FlatBlocks(first, block=256), 2.0)
    acc.fold(second, 3.0)
    wide = first.astype(np.float64), second.astype(np.float64)
    np.testing.assert_array_equal(acc.mean(), (2.0 * wide[0] + 3.0 * wide[1]) / 5)
    buffer = FedBuff(numel, buffer_size=2)
    buffer.add(FlatBlocks(first, block=256), buffer.admit(0), base=base)
    buffer.add(second, buffer.admit(0), base=base)
    expected = ((first - base) + (second - base)) / 2
    np.testing.assert_allclose(buffer.step(np.zeros(numel)), expected, rtol=1e-12)


_NUMEL = 5
_values = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)
_updates = st.lists(
    st.tuples(
        st.lists(_values, min_size=_NUMEL, max_size=_NUMEL),
        st.one_of(st.integers(1, 100_000), st.floats(min_value=1e-3, max_value=1e4)),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=100, deadline=None)
@given(updates=_updates, data=st.data())
def test_accumulator_fold_order_does_not_matter(
    updates: list[tuple[list[float], float]], data: st.DataObject
) -> None:
    order = data.draw(st.permutations(range(len(updates))))
    vectors = np.array([u[0] for u in updates], dtype=np.float64)
    weights = np.array([float(u[1]) for u in updates])

    forward, shuffled = Accumulator(_NUMEL), Accumulator(_NUMEL)
    for vector, weight in zip(vectors, weights, strict=True):
        forward.fold(vector, weight)
    for i in order:
        shuffled.fold(vectors[i], weights[i])

    expected = np.average(vectors, axis=0, weights=weights)
    np.testing.assert_allclose(forward.mean(), shuffled.mean(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(forward.mean(), expected, rtol=1e-9, atol=1e-9)
    assert forward.count == shuffled.count == len(updates)
    assert math.isclose(forward.total_weight, float(weights.sum()), rel_tol=1e-12)


# --- FedAvg / FedProx ------------------------------------------------------------------------


def test_fedavg_plain_mean_at_learning_rate_one() -> None:
    strategy = make_strategy("fedavg")
    assert isinstance(strategy, Strategy)
    mean = np.array([0.1, 0.2, 0.3])
    new = strategy.step(np.array([1.0, 2.0, 3.0]), mean)
    np.testing.assert_array_equal(new, mean)
    assert new is not mean
    assert strategy.site_config() == {}
    assert strategy.state() == {}


def test_fedavg_server_learning_rate() -> None:
    strategy = make_strategy("fedavg", server_learning_rate=0.5)
    new = strategy.step(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 0.0]))
    np.testing.assert_array_equal(new, [2.0, 2.0, 1.5])


def test_fedavg_keeps_the_model_dtype() -> None:
    current = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    mean = np.array([2.0, 2.0, 2.0])
    for lr in (1.0, 0.5):
        new = make_strategy("fedavg", server_learning_rate=lr).step(current, mean)
        assert new.dtype == np.float32
    np.testing.assert_array_equal(new, np.array([1.5, 2.0, 2.5], dtype=np.float32))


def test_fedprox_sends_mu_to_sites() -> None:
    strategy = make_strategy("fedprox", proximal_mu=0.01)
    assert strategy.name == "fedprox"
    assert strategy.site_config() == {"proximal_mu": 0.01}
    new = strategy.step(np.zeros(3), np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(new, [1.0, 2.0, 3.0])


def test_fedavg_rejects_mismatched_vectors() -> None:
    with pytest.raises(ValueError):
        make_strategy("fedavg").step(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError):
        make_strategy("fedavg").step(np.zeros((3, 1)), np.zeros((3, 1)))


def test_fedavg_state_round_trip() -> None:
    strategy = make_strategy("fedavg")
    strategy.load_state(strategy.state())
    with pytest.raises(StoreError):
        strategy.load_state({"m": np.zeros(3)})


# --- FedOpt by hand --------------------------------------------------------------------------
# beta1 = 0.5, beta2 = 0.75, tau = 1, eta = 1; round 1 delta = [2, -4, 0], round 2 delta = [1, 0, 3]

HAND = {"server_learning_rate": 1.0, "beta1": 0.5, "beta2": 0.75, "tau": 1.0}


def _two_steps(strategy: Strategy) -> tuple[np.ndarray, np.ndarray]:
    current0 = np.zeros(3)
    current1 = strategy.step(current0, np.array([2.0, -4.0, 0.0]))
    current2 = strategy.step(current1, current1 + np.array([1.0, 0.0, 3.0]))
    return current1, current2


def test_fedadagrad_by_hand() -> None:
    strategy = make_strategy("fedadagrad", **HAND)
    current1, current2 = _two_steps(strategy)
    # m = [1, -2, 0]; v = [4, 16, 0]; new = m / (sqrt(v) + 1) = [1/3, -2/5, 0]
    np.testing.assert_allclose(current1, [1 / 3, -0.4, 0.0], rtol=0, atol=1e-12)
    # m = [1, -1, 1.5]; v = [5, 16, 9]; new = current1 + m / ([sqrt 5, 4, 3] + 1)
    expected2 = [1 / 3 + 1 / (1 + math.sqrt(5)), -0.4 - 0.2, 0.375]
    np.testing.assert_allclose(current2, expected2, rtol=0, atol=1e-12)
    state = strategy.state()
    np.testing.assert_allclose(state["m"], [1.0, -1.0, 1.5], rtol=0, atol=1e-15)
    np.testing.assert_allclose(state["v"], [5.0, 16.0, 9.0], rtol=0, atol=1e-15)
    assert int(state["t"]) == 2


def test_fedadam_by_hand_without_bias_correction() -> None:
    strategy = make_strategy("fedadam", bias_correction="none", **HAND)
    current1, current2 = _two_steps(strategy)
    # m = [1, -2, 0]; v = 0.25 * [4, 16, 0] = [1, 4, 0]; new = m / ([1, 2, 0] + 1)
    np.testing.assert_allclose(current1, [0.5, -2 / 3, 0.0], rtol=0, atol=1e-12)
    # m = [1, -1, 1.5]; v = 0.75 * [1, 4, 0] + 0.25 * [1, 0, 9] = [1, 3, 2.25]
    expected2 = [1.0, -2 / 3 - 1 / (1 + math.sqrt(3)), 0.6]
    np.testing.assert_allclose(current2, expected2, rtol=0, atol=1e-12)
    np.testing.assert_allclose(strategy.state()["v"], [1.0, 3.0, 2.25], rtol=0, atol=1e-15)


def test_fedadam_by_hand_with_flwr_bias_correction() -> None:
    strategy = make_strategy("fedadam", **HAND)  # bias_correction="flwr" is the default
    current1, current2 = _two_steps(strategy)
    # Flower scales eta by sqrt(1 - beta2^(t+1)) / (1 - beta1^(t+1)) at step t
    eta1 = math.sqrt(1 - 0.75**2) / (1 - 0.5**2)
    np.testing.assert_allclose(current1, [0.5 * eta1, -2 / 3 * eta1, 0.0], rtol=0, atol=1e-12)
    eta2 = math.sqrt(1 - 0.75**3) / (1 - 0.5**3)
    step2 = np.array([0.5, -1 / (1 + math.sqrt(3)), 0.6])
    np.testing.assert_allclose(current2, current1 + eta2 * step2, rtol=0, atol=1e-12)


def test_fedadam_by_hand_with_kingma_bias_correction() -> None:
    strategy = make_strategy("fedadam", bias_correction="kingma", **HAND)
    current1, current2 = _two_steps(strategy)
    # step 1: sqrt(1 - 0.75) / (1 - 0.5) = 1, so the uncorrected step
    np.testing.assert_allclose(current1, [0.5, -2 / 3, 0.0], rtol=0, atol=1e-12)
    eta2 = math.sqrt(1 - 0.75**2) / (1 - 0.5**2)
    step2 = np.array([0.5, -1 / (1 + math.sqrt(3)), 0.6])
    np.testing.assert_allclose(current2, current1 + eta2 * step2, rtol=0, atol=1e-12)


def test_fedyogi_by_hand() -> None:
    strategy = make_strategy("fedyogi", **HAND)
    current1, current2 = _two_steps(strategy)
    # v = 0 - 0.25 * [4, 16, 0] * sign(0 - [4, 16, 0]) = [1, 4, 0]; as Adam: m / ([1, 2, 0] + 1)
    np.testing.assert_allclose(current1, [0.5, -2 / 3, 0.0], rtol=0, atol=1e-12)
    # delta² = [1, 0, 9]; sign(v - delta²) = sign([0, 4, -9]) = [0, 1, -1]
    # v = [1 - 0, 4 - 0, 0 + 0.25 * 9] = [1, 4, 2.25]; m = [1, -1, 1.5]
    # new = current1 + m / ([1, 2, 1.5] + 1) = [0.5 + 0.5, -2/3 - 1/3, 0 + 0.6]
    np.testing.assert_allclose(current2, [1.0, -1.0, 0.6], rtol=0, atol=1e-12)
    np.testing.assert_allclose(strategy.state()["v"], [1.0, 4.0, 2.25], rtol=0, atol=1e-15)


def test_fedopt_learning_rate_scales_the_step() -> None:
    strategy = make_strategy("fedyogi", **{**HAND, "server_learning_rate": 0.1})
    current1 = strategy.step(np.zeros(3), np.array([2.0, -4.0, 0.0]))
    np.testing.assert_allclose(current1, [0.05, -0.2 / 3, 0.0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_fedopt_keeps_the_model_dtype(name: str) -> None:
    strategy = make_strategy(name, **HAND)
    current = np.zeros(3, dtype=np.float32)
    new = strategy.step(current, np.array([2.0, -4.0, 0.0]))
    assert new.dtype == np.float32
    assert strategy.state()["m"].dtype == np.float64
    assert strategy.site_config() == {}


def test_fedopt_rejects_a_model_of_another_size() -> None:
    strategy = make_strategy("fedadam")
    strategy.step(np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="optimiser state"):
        strategy.step(np.zeros(4), np.ones(4))


# --- state / load_state ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_restored_strategy_continues_exactly(name: str) -> None:
    rng = np.random.default_rng(7)
    settings_ = {"server_learning_rate": 0.05, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}
    original = make_strategy(name, **settings_)
    current = rng.normal(size=50)
    for _ in range(3):
        current = original.step(current, current + rng.normal(scale=0.1, size=50))

    saved = original.state()
    assert set(saved) == {"m", "v", "t"}
    restored = make_strategy(name, **settings_)
    restored.load_state(saved)
    saved["m"][:] = 123.0  # state() hands out copies, and load_state keeps its own

    current_a = current_b = current
    for _ in range(3):
        mean = current_a + rng.normal(scale=0.1, size=50)
        current_a = original.step(current_a, mean)
        current_b = restored.step(current_b, mean)
        np.testing.assert_array_equal(current_a, current_b)
    for key in ("m", "v", "t"):
        np.testing.assert_array_equal(original.state()[key], restored.state()[key])


def test_fresh_fedopt_state_round_trip() -> None:
    strategy = make_strategy("fedyogi")
    state = strategy.state()
    assert set(state) == {"t"}
    assert int(state["t"]) == 0
    other = make_strategy("fedyogi")
    other.load_state(state)
    np.testing.assert_array_equal(
        strategy.step(np.zeros(2), np.ones(2)), other.step(np.zeros(2), np.ones(2))
    )


@pytest.mark.parametrize(
    "state",
    [
        {},
        {"m": np.zeros(3), "v": np.zeros(3)},
        {"t": np.array(1), "m": np.zeros(3)},
        {"t": np.array(1), "m": np.zeros(3), "v": np.zeros(4)},
        {"t": np.array(1.5), "m": np.zeros(3), "v": np.zeros(3)},
        {"t": np.array(-1)},
        {"t": np.array([1, 2])},
        {"t": np.array(1), "m": np.zeros(3), "v": np.zeros(3), "extra": np.zeros(1)},
    ],
)
def test_fedopt_load_state_rejects_bad_state(state: dict[str, np.ndarray]) -> None:
    strategy = make_strategy("fedadam")
    with pytest.raises(StoreError):
        strategy.load_state(state)


def test_fedopt_accepts_one_element_step_counter() -> None:
    strategy = make_strategy("fedadam")
    strategy.load_state({"t": np.array([4]), "m": np.zeros(2), "v": np.zeros(2)})
    assert int(strategy.state()["t"]) == 4


# --- factory ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("fedavg", FedAvg),
        ("fedprox", FedAvg),
        ("fedadam", FedOpt),
        ("fedyogi", FedOpt),
        ("fedadagrad", FedOpt),
        ("FedYogi", FedOpt),
    ],
)
def test_make_strategy_names(name: str, cls: type) -> None:
    strategy = make_strategy(name)
    assert isinstance(strategy, cls)
    assert strategy.name == name.lower()


def test_make_strategy_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        make_strategy("fedsgd")
    message = str(info.value)
    assert "fedsgd" in message
    for name in ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad"):
        assert name in message


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("fedavg", {"server_learning_rate": 0.0}),
        ("fedadam", {"server_learning_rate": -1.0}),
        ("fedadam", {"beta1": 1.0}),
        ("fedyogi", {"beta2": -0.1}),
        ("fedadagrad", {"tau": 0.0}),
        ("fedprox", {"proximal_mu": -0.1}),
        ("fedavg", {"proximal_mu": 0.1}),
        ("fedadam", {"bias_correction": "sometimes"}),
        ("fedyogi", {"bias_correction": "kingma"}),
        ("fedavg", {"bias_correction": "none"}),
    ],
)
def test_make_strategy_rejects_bad_settings(name: str, kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        make_strategy(name, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["fedavg", "fedadam", "fedyogi", "fedadagrad"])
def test_a_step_taken_block_by_block_is_the_whole_step(name: str) -> None:
    """The server writes a large model's new values a block at a time: the same values, and
    the same optimiser state after it, as one whole-vector step, round after round."""
    rng = np.random.default_rng(3)
    whole = make_strategy(name, server_learning_rate=0.5)
    blocks = make_strategy(name, server_learning_rate=0.5)
    current = rng.standard_normal(1000).astype(np.float32)
    for _ in range(3):
        mean = current + rng.standard_normal(1000) * 0.1
        expected = whole.step(current, mean)
        blocks.begin_step(current.shape[0])
        got = np.concatenate(
            [
                blocks.step_block(current[s : s + 64], mean[s : s + 64], s)
                for s in range(0, 1000, 64)
            ]
        )
        np.testing.assert_array_equal(got, expected)
        for key, value in whole.state().items():
            np.testing.assert_array_equal(blocks.state()[key], value)
        current = expected


def test_a_large_sum_is_faulted_in_before_its_first_fold() -> None:
    """A round's sum is made when its tasks are offered; its pages are faulted in by a thread
    of its own then, so the first fold, minutes later, does not wait for the kernel."""

    def anonymous_kib() -> int:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("RssAnon"))

    numel = 3 * accumulator.PREFAULT_BYTES // 8
    before = anonymous_kib()
    total = accumulator.Accumulator(numel)
    total._prefault.wait()
    assert anonymous_kib() - before >= 0.95 * numel * 8 / 1024
    total.fold(np.ones(numel, dtype=np.float32), 2.0)
    assert total.mean_part(0, 3).tolist() == [1.0, 1.0, 1.0]


def test_a_small_sum_is_not_prefaulted() -> None:
    assert accumulator.Accumulator(1000)._prefault._thread is None


def test_a_sum_dropped_before_its_first_fold_is_not_kept_by_its_prefault() -> None:
    """A round aborted before its first fold drops its sum: the prefault thread holds it a
    slice at a time only, stops, and keeps nothing."""
    total = accumulator.Accumulator(3 * accumulator.PREFAULT_BYTES // 8)
    held = weakref.ref(total._sum)
    prefault = total._prefault
    del total
    prefault.wait()
    assert held() is None


def test_a_sum_made_in_a_reused_vector_is_the_fresh_sum() -> None:
    rng = np.random.default_rng(5)
    updates = [rng.normal(size=FOLD_BLOCK + 17).astype(np.float32) for _ in range(3)]
    vector = np.full(FOLD_BLOCK + 17, np.nan)  # a last round's leftovers are never read
    for _ in range(2):  # two rounds in the one vector
        reused, fresh = Accumulator(vector.shape[0], vector), Accumulator(vector.shape[0])
        for weight, update in zip((1.0, 3.0, 0.5), updates, strict=True):
            reused.fold(update, weight)
            fresh.fold(update, weight)
        assert np.array_equal(reused.mean(), fresh.mean())


@pytest.mark.parametrize("vector", [np.empty(4), np.empty(5, np.float32)])
def test_a_sum_refuses_a_vector_of_another_size_or_dtype(vector: np.ndarray) -> None:
    with pytest.raises(ValueError, match="float64 vector"):
        Accumulator(5, vector)
