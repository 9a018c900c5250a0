import numpy as np
import pytest

from bitembed_jax.quant.packing import (
    pack_base3, pack_bitnet_2bit, unpack_base3, unpack_bitnet_2bit)

SHAPES_2BIT = [(1, 3), (3, 5), (4, 4), (5, 7), (6, 2), (7, 1), (9, 3), (10, 6), (64, 33), (13,)]


def _ternary(shape, seed=0):
    return np.random.default_rng(seed).integers(-1, 2, size=shape).astype(np.int8)


@pytest.mark.parametrize("shape", SHAPES_2BIT)
def test_bitnet_2bit_round_trip(shape):
    q = _ternary(shape)
    packed = pack_bitnet_2bit(q)
    assert packed.dtype == np.uint8
    assert packed.shape == (-(-shape[0] // 4), *shape[1:])
    np.testing.assert_array_equal(unpack_bitnet_2bit(packed, shape[0]), q)


def test_bitnet_2bit_layout():
    # packed row r holds original rows r, r+R, r+2R, r+3R in bits 0-1, 2-3, 4-5, 6-7
    q = np.array([[-1], [0], [1], [1], [0], [-1], [1]], np.int8)  # out = 7, R = 2
    packed = pack_bitnet_2bit(q)
    assert packed[0, 0] == 0 | 2 << 2 | 1 << 4 | 2 << 6  # rows 0, 2, 4, 6
    assert packed[1, 0] == 1 | 2 << 2 | 0 << 4            # rows 1, 3, 5; row 7 absent -> 0 bits


def test_bitnet_2bit_zeros_and_validation():
    q = np.zeros((5, 3), np.int8)
    np.testing.assert_array_equal(unpack_bitnet_2bit(pack_bitnet_2bit(q), 5), q)
    with pytest.raises(ValueError):
        pack_bitnet_2bit(np.array([[2, 0]]))
    with pytest.raises(ValueError):
        unpack_bitnet_2bit(pack_bitnet_2bit(q), 9)


@pytest.fixture(scope="module")
def hf_bitnet():
    import torch
    from transformers.integrations import bitnet
    return torch, bitnet


@pytest.mark.parametrize("shape", SHAPES_2BIT)
def test_bitnet_2bit_matches_transformers_pack(hf_bitnet, shape):
    torch, bitnet = hf_bitnet
    q = _ternary(shape, seed=1)
    theirs = bitnet.pack_weights(torch.from_numpy(q.copy()))  # mutates its input: pass a copy
    np.testing.assert_array_equal(pack_bitnet_2bit(q), theirs.numpy())


def test_bitnet_2bit_transformers_unpack_reads_ours(hf_bitnet):
    torch, bitnet = hf_bitnet
    for shape in [(5, 7), (64, 33)]:
        q = _ternary(shape, seed=2)
        w = bitnet.unpack_weights(torch.from_numpy(pack_bitnet_2bit(q)), dtype=torch.float32)
        # transformers returns 4 * R rows; rows past out_features are padding
        np.testing.assert_array_equal(w.numpy()[:shape[0]], q.astype(np.float32))


@pytest.mark.parametrize("shape", [(1,), (4,), (5,), (6,), (7, 3), (10, 10), (3, 4, 5), (2, 0)])
def test_base3_round_trip(shape):
    q = _ternary(shape, seed=3)
    packed = pack_base3(q)
    n = int(np.prod(shape))
    assert packed.dtype == np.uint8 and packed.shape == (-(-n // 5),)
    out = unpack_base3(packed, shape)
    assert out.dtype == np.int8 and out.shape == shape
    np.testing.assert_array_equal(out, q)


def test_base3_values_and_extremes():
    # byte = sum (t_i + 1) * 3**i
    assert pack_base3(np.array([1, -1, 0, 1, 1], np.int8))[0] == 2 + 0 + 9 + 54 + 162
    ones = np.ones(11, np.int8)
    assert pack_base3(ones).tolist() == [242, 242, 2]
    for q in (ones, -ones, np.zeros(11, np.int8)):
        np.testing.assert_array_equal(unpack_base3(pack_base3(q), q.shape), q)


def test_base3_validation():
    with pytest.raises(ValueError):
        unpack_base3(np.array([243], np.uint8), (5,))
    with pytest.raises(ValueError):
        unpack_base3(np.zeros(2, np.uint8), (5,))
    with pytest.raises(ValueError):
        pack_base3(np.array([0.5]))
