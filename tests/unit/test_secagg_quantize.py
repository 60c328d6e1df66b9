"""Fixed-point encoding for SecAgg: bounded error, clipping, weighted means, no wrap-around."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from quorum.errors import SecAggError
from quorum.privacy.secagg.quantize import (
    DecodedSum,
    add_encoded_update,
    dequantize_sum,
    encode_update,
    error_bound,
    levels,
    max_sites,
    quantize,
)

RING = 2**32


def _slack(count: int, clip: float) -> float:
    """Float64 rounding on top of the quantisation bound."""
    return 1e-9 * count * clip


def signed(q: np.ndarray) -> np.ndarray:
    return q.view(np.int32)


def test_levels_and_max_sites() -> None:
    assert levels(2) == 1
    assert levels(16) == 32767
    assert levels(31) == 2**30 - 1
    assert max_sites(31) == 2
    assert max_sites(16) == 65538
    for bits in range(2, 32):
        m = max_sites(bits)
        assert m * levels(bits) < 2**31 <= (m + 1) * levels(bits)
    for bad in (0, 1, 32, -1):
        with pytest.raises(SecAggError, match="bits"):
            levels(bad)


@pytest.mark.parametrize("bits", [2, 8, 16, 20, 31])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_a_sum_of_max_sites_vectors_at_the_top_level_does_not_wrap(bits: int, sign: float) -> None:
    count = max_sites(bits)
    top = quantize(np.array([5.0, 1.0]) * sign, 1.0, bits)
    assert np.all(signed(top) == sign * levels(bits))
    total = (top.astype(np.uint64) * count % RING).astype(np.uint32)  # what the server sums
    assert np.all(signed(total) == sign * count * levels(bits))
    np.testing.assert_allclose(dequantize_sum(total, count, 1.0, bits), sign * count * 1.0)
    with pytest.raises(SecAggError, match="wrap"):
        dequantize_sum(total, count + 1, 1.0, bits)
    with pytest.raises(SecAggError, match="expected 1"):
        dequantize_sum(total, 0, 1.0, bits)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 31),
    st.floats(1e-3, 1e3),
    st.integers(1, 6),
    st.integers(1, 40),
    st.data(),
)
def test_error_of_a_dequantised_sum_is_within_the_bound(
    bits: int, clip: float, count: int, length: int, data: st.DataObject
) -> None:
    count = min(count, max_sites(bits))
    element = st.floats(-2 * clip, 2 * clip, allow_nan=False)
    vectors = [data.draw(hnp.arrays(np.float64, length, elements=element)) for _ in range(count)]
    total = np.zeros(length, dtype=np.uint32)
    for v in vectors:
        q = quantize(v, clip, bits)
        assert q.dtype == np.uint32
        assert int(np.abs(signed(q).astype(np.int64)).max()) <= levels(bits)
        total += q
    exact = sum(np.clip(v, -clip, clip) for v in vectors)
    error = np.abs(dequantize_sum(total, count, clip, bits) - exact)
    assert np.all(error <= error_bound(clip, bits, count) + _slack(count, clip))


def test_clipping_and_endpoints() -> None:
    q = quantize(np.array([-10.0, -1.0, 0.0, 1.0, 10.0, np.inf, -np.inf]), 1.0, 8)
    assert signed(q).tolist() == [-127, -127, 0, 127, 127, 127, -127]  # zero is exact
    half = quantize(np.full(4, 0.5 / 127, dtype=np.float32), 1.0, 8)
    assert set(signed(half).tolist()) <= {0, 1}  # half a step: either neighbour


def test_stochastic_rounding_is_unbiased_far_below_one_step() -> None:
    # A tenth of a step, on 200,000 elements: rounding to nearest would give 0 (or, on an
    # offset grid, half a step of bias); stochastic rounding gives the value on average.
    step = 1.0 / levels(20)
    q = quantize(np.full(200_000, 0.1 * step), 1.0, 20, np.random.default_rng(7))
    assert set(signed(q).tolist()) == {0, 1}
    mean = float(dequantize_sum(q, 1, 1.0, 20).mean())
    assert abs(mean - 0.1 * step) < 0.005 * step  # ~7 standard errors
    zero = quantize(np.zeros(1000), 1.0, 20)
    assert not signed(zero).any()


def test_quantize_does_not_touch_its_input_and_refuses_nan() -> None:
    values = np.array([3.0, -3.0])
    quantize(values, 1.0, 8)
    assert values.tolist() == [3.0, -3.0]
    with pytest.raises(SecAggError, match="NaN"):
        quantize(np.array([0.0, np.nan]), 1.0, 8)
    for clip in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(SecAggError, match="clipping bound"):
            quantize(values, clip, 8)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(8, 24),
    st.lists(st.integers(1, 5000), min_size=1, max_size=8),
    st.integers(1, 2000),
    st.data(),
)
def test_decoded_sum_is_the_example_weighted_mean(
    bits: int, examples: list[int], max_weight: int, data: st.DataObject
) -> None:
    clip, length = 0.5, 6
    count = min(len(examples), max_sites(bits))
    examples = examples[:count]
    element = st.floats(-clip, clip, allow_nan=False)
    deltas = [data.draw(hnp.arrays(np.float64, length, elements=element)) for _ in examples]
    total = np.zeros(length + 1, dtype=np.uint32)
    weights = []
    for delta, n in zip(deltas, examples, strict=True):
        vector, w, _ = encode_update(delta, n, clip, bits, max_weight)
        assert vector.shape == (length + 1,)
        assert w == min(n, max_weight) == int(vector[-1])
        weights.append(w)
        total += vector
    decoded = DecodedSum(total, count, clip, bits, max_weight)
    mean, weight = decoded.mean_part(0, decoded.numel), decoded.weight
    assert weight == sum(weights)
    expected = np.average(np.stack(deltas), axis=0, weights=weights)
    bound = error_bound(clip, bits, count) * max_weight / weight
    assert np.all(np.abs(mean - expected) <= bound + _slack(count, clip) * max_weight / weight)


def test_encode_update_caps_the_weight_and_refuses_bad_counts() -> None:
    vector, w, _ = encode_update(np.array([0.5, -0.5]), 10_000, 1.0, 16, 100)
    assert w == 100
    assert vector[-1] == 100
    with pytest.raises(SecAggError, match="num_examples"):
        encode_update(np.zeros(2), 0, 1.0, 16, 100)
    with pytest.raises(SecAggError, match="max_weight"):
        encode_update(np.zeros(2), 1, 1.0, 16, 0)
    with pytest.raises(SecAggError, match="1-D"):
        encode_update(np.zeros((2, 2)), 1, 1.0, 16, 10)


def test_decoding_refuses_zero_weight_and_possible_wrap() -> None:
    total = np.zeros(3, dtype=np.uint32)
    with pytest.raises(SecAggError, match="summed weight 0 is outside"):
        DecodedSum(total, 1, 1.0, 16, 10)
    with pytest.raises(SecAggError, match="wrapped"):
        DecodedSum(total, 2, 1.0, 16, 2**31)
    with pytest.raises(SecAggError, match="wrap"):
        DecodedSum(total, max_sites(16) + 1, 1.0, 16, 10)


def test_encode_update_counts_the_clipped_elements() -> None:
    delta = np.array([0.1, 5.0, -5.0, 2.0, -1.9, np.inf], dtype=np.float32)
    # weight share 0.5: 5.0 -> 2.5 and inf are beyond clip 2.0, 2.0 -> 1.0 is not
    vector, weight, clipped = encode_update(delta, 50, 2.0, 16, 100)
    assert weight == 50 and clipped == 3
    values = signed(vector[:-1]).tolist()
    assert values[1] == levels(16) and values[2] == -levels(16) and values[5] == levels(16)
    with pytest.raises(SecAggError, match="NaN"):
        encode_update(np.array([np.nan, 0.0]), 1, 1.0, 16, 10)


def test_decoding_refuses_a_forged_total_weight() -> None:
    total = np.zeros(3, dtype=np.uint32)
    total[-1] = 2 * 10 + 1  # two sites can weigh at most 2 x max_weight = 20
    with pytest.raises(SecAggError, match=r"outside 2\.\.20"):
        DecodedSum(total, 2, 1.0, 16, 10)


def test_adding_the_update_in_parts_equals_the_whole_encoding_added() -> None:
    """A site adds its update into its upload in parts cut at tensor and block boundaries: the
    result is bit for bit the whole-vector encoding plus what `out` held, modulo 2^32."""
    delta = np.random.default_rng(3).normal(0.0, 0.4, 5_003).astype(np.float32)
    delta[17] = 50.0  # clipped
    whole, weight, clipped = encode_update(delta, 37, 1.0, 20, 100, np.random.default_rng(11))
    held = np.random.default_rng(5).integers(0, RING, delta.size + 1, dtype=np.uint32)
    out = held.copy()
    parts = [delta[:3], delta[3:3], delta[3:4_000], delta[4_000:]]
    assert add_encoded_update(out, parts, 37, 1.0, 20, 100, np.random.default_rng(11)) == (
        weight,
        clipped,
    )
    assert clipped == 1
    assert np.array_equal(out - held, whole)  # uint32 arithmetic wraps: the difference is exact
    with pytest.raises(SecAggError, match="do not fill"):
        add_encoded_update(out, [delta[:-1]], 37, 1.0, 20, 100)
    with pytest.raises(SecAggError, match="overrun"):
        add_encoded_update(out, [delta, delta[:1]], 37, 1.0, 20, 100)
    with pytest.raises(SecAggError, match="overrun"):
        add_encoded_update(np.zeros(3, np.uint32), [delta], 37, 1.0, 20, 100)
