"""16-bit storage conversions (fastnorm_half.h): exact widening, round-to-nearest-even narrowing, NaN kept,
on every ISA target this machine runs (F16C / AVX-512 BF16 code paths differ from the portable ones)."""

import ml_dtypes
import numpy as np
import pytest

import fastnorm._kernels.cpu as cpu
from fastnorm._dtypes import BFLOAT16, FLOAT16, HALF_FORMAT

TARGETS = cpu.runnable_targets()
FORMATS = [BFLOAT16, FLOAT16]


def _module(target):
    return cpu.target_module("_half", target)


def _special_floats() -> np.ndarray:
    """float32 values at every rounding boundary of both formats, their neighbours, and the specials."""
    rng = np.random.default_rng(0)
    bits = [rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)]
    # bfloat16 ties (low 16 bits exactly 0x8000) with even and odd kept bits, and one ulp either side
    hi = rng.integers(0, 2**16, 20_000, dtype=np.uint64).astype(np.uint32) << 16
    bits += [hi | 0x8000, hi | 0x7FFF, hi | 0x8001]
    # float16 ties: every float16 value's midpoint to its successor, and one float32 ulp either side
    h = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float32)
    with np.errstate(over="ignore"):
        h_next = np.nextafter(h.astype(np.float16), np.float16(np.inf)).astype(np.float32)
    mid = ((h.astype(np.float64) + h_next.astype(np.float64)) / 2).astype(np.float32)
    for m in (mid, np.nextafter(mid, np.float32(0)), np.nextafter(mid, np.float32(np.inf))):
        bits += [m.view(np.uint32), (-m).view(np.uint32)]
    specials = np.array(
        [
            0.0,
            -0.0,
            np.inf,
            -np.inf,
            np.nan,
            65504,
            65519.99,
            65520,
            65536,
            1e-8,
            6e-8,
            3e-8,
            2.98e-8,
            5.96e-8,
            6.1e-5,
            3.4e38,
            1e-45,
            -1e-45,
            1.17549435e-38,
        ],
        np.float32,
    )
    bits += [specials.view(np.uint32), np.array([0x7F800001, 0xFFC00000, 0x7FFFFFFF, 0x7F7FFFFF], np.uint32)]
    return np.concatenate(bits).view(np.float32)


def _expected_bits(x: np.ndarray, dtype) -> np.ndarray:
    with np.errstate(all="ignore"):
        return x.astype(dtype).view(np.uint16)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", FORMATS, ids=lambda d: d.name)
def test_narrowing_rounds_to_nearest_even(target, dtype):
    x = _special_floats()
    got = np.empty(x.size, np.uint16)
    _module(target).half_from_float(x, got, HALF_FORMAT[dtype], 2)
    want = _expected_bits(x, dtype)
    nan = np.isnan(x)
    assert np.isnan(got[nan].view(dtype).astype(np.float32)).all(), "a NaN must stay NaN"
    bad = np.flatnonzero((got != want) & ~nan)
    assert bad.size == 0, [(hex(x[i : i + 1].view(np.uint32)[0]), hex(got[i]), hex(want[i])) for i in bad[:5]]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("dtype", FORMATS, ids=lambda d: d.name)
def test_widening_is_exact_for_every_pattern(target, dtype):
    patterns = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    got = np.empty(patterns.size, np.float32)
    _module(target).half_to_float(patterns, got, HALF_FORMAT[dtype], 2)
    want = patterns.view(dtype).astype(np.float32)
    nan = np.isnan(want)
    assert np.isnan(got[nan]).all()
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


@pytest.mark.parametrize("dtype", FORMATS, ids=lambda d: d.name)
def test_round_trip_of_every_pattern(dtype):
    patterns = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    wide = np.empty(patterns.size, np.float32)
    back = np.empty_like(patterns)
    mod = _module(cpu.TARGET)
    mod.half_to_float(patterns, wide, HALF_FORMAT[dtype], 1)
    mod.half_from_float(wide, back, HALF_FORMAT[dtype], 1)
    finite = ~np.isnan(wide)
    np.testing.assert_array_equal(back[finite], patterns[finite])


def test_bad_format_and_lengths():
    mod = _module(cpu.TARGET)
    with pytest.raises(ValueError, match="fmt"):
        mod.half_to_float(np.zeros(3, np.uint16), np.zeros(3, np.float32), 2, 1)
    with pytest.raises(ValueError, match="same length"):
        mod.half_from_float(np.zeros(3, np.float32), np.zeros(2, np.uint16), 0, 1)


def test_ml_dtypes_is_the_bfloat16():
    assert BFLOAT16 == np.dtype(ml_dtypes.bfloat16)
    assert BFLOAT16.itemsize == 2
