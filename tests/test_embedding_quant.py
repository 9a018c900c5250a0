import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bitembed_jax
from bitembed_jax.choices import PRECISIONS
from bitembed_jax.quant.embedding import matryoshka, quantize, quantize_ste
from bitembed_jax.quant.storage import (
    StoredEmbeddings, int_codes, bytes_per_vector, calibrate_scale, decode_storage, encode_storage, hamming, similarity,
)

INT = ("int8", "int4", "int2")
DIMS = (1, 3, 7, 8, 13, 64)  # not divisible by 2 / 4 / 8 included


def _vecs(n, d, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("d", DIMS)
def test_storage_round_trip_matches_jax(precision, d):
    e = _vecs(9, d)
    st = encode_storage(e, precision)
    assert st.dim == d and len(st) == 9
    np.testing.assert_allclose(decode_storage(st), np.asarray(quantize(jnp.asarray(e), precision)),
                               rtol=1e-6, atol=1e-7)
    # exact: re-encoding the decoded vectors gives the same bytes
    again = encode_storage(decode_storage(st), precision)
    np.testing.assert_array_equal(again.codes, st.codes)


@pytest.mark.parametrize("precision", INT)
def test_int_codes_are_on_grid(precision):
    e = _vecs(20, 13)
    c = int_codes(encode_storage(e, precision))
    allowed = {"int8": range(-127, 128), "int4": range(-7, 8), "int2": (-3, -1, 1, 3)}[precision]
    assert set(np.unique(c).tolist()) <= set(allowed)
    if precision != "int2":  # mid-tread: each vector's absmax lands on the top code
        assert np.all(np.abs(c).max(axis=1) == {"int8": 127, "int4": 7}[precision])


def test_all_zero_vectors():
    e = np.zeros((3, 10), np.float32)
    for p in PRECISIONS:
        out = decode_storage(encode_storage(e, p))
        assert np.all(np.isfinite(out))
    assert np.all(decode_storage(encode_storage(e, "int8")) == 0)
    # binary maps 0 to +1
    np.testing.assert_allclose(decode_storage(encode_storage(e, "binary")), 1 / np.sqrt(10))


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("d", DIMS)
def test_bytes_per_vector(precision, d):
    st = encode_storage(_vecs(4, d), precision)
    expected = {"fp32": 4 * d, "int8": d + 4, "int4": -(-d // 2) + 4, "int2": -(-d // 4) + 4,
                "binary": -(-d // 8)}[precision]
    assert bytes_per_vector(precision, d) == expected == st.nbytes_per_vector
    assert st.codes.nbytes == len(st) * (expected - (4 if st.per_vector_scale else 0))


@pytest.mark.parametrize("precision", INT)
def test_global_scale(precision):
    e = _vecs(30, 16, seed=4)
    s = calibrate_scale(e, precision)
    st = encode_storage(e, precision, scale=s)
    assert st.scale.shape == () and not st.per_vector_scale
    assert st.nbytes_per_vector == bytes_per_vector(precision, 16, per_vector_scale=False)
    np.testing.assert_allclose(decode_storage(st), np.asarray(quantize(jnp.asarray(e), precision, s)),
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("precision,scale", [(p, "vector") for p in PRECISIONS] + [(p, "global") for p in INT])
def test_ranking_packed_equals_dequantised(precision, scale):
    docs, queries = _vecs(50, 37, seed=5), _vecs(5, 37, seed=6)
    s = calibrate_scale(np.concatenate([docs, queries]), precision) if scale == "global" else None
    sd, sq = encode_storage(docs, precision, scale=s), encode_storage(queries, precision, scale=s)
    packed = similarity(sq, sd)
    assert packed.shape == (5, 50) and packed.dtype == np.float32
    deq = decode_storage(sq).astype(np.float64) @ decode_storage(sd).astype(np.float64).T
    for i in range(5):
        # the dequantised scores, read in the packed order, never go up (beyond rounding)
        assert np.all(np.diff(deq[i, np.argsort(-packed[i], kind="stable")]) <= 1e-6)
        assert np.all(np.diff(packed[i, np.argsort(-deq[i], kind="stable")]) <= 1e-6)
    if precision == "binary":  # exact affine relation: dot = (d - 2 * hamming) / d
        np.testing.assert_array_equal(packed, np.round((deq * 37 - 37) / 2))
    else:
        np.testing.assert_allclose(packed, deq, rtol=1e-5, atol=1e-6)


def test_similarity_accepts_float_arrays():
    a, b = _vecs(4, 16, seed=7), _vecs(6, 16, seed=8)
    np.testing.assert_allclose(bitembed_jax.similarity(a, b), a @ b.T, rtol=1e-6)
    np.testing.assert_array_equal(similarity(a, b, "int4"),
                                  similarity(encode_storage(a, "int4"), encode_storage(b, "int4")))
    with pytest.raises(ValueError):
        similarity(encode_storage(a, "int8"), b, "int4")
    with pytest.raises(ValueError):
        similarity(encode_storage(a, "int8"), encode_storage(b, "binary"))


@pytest.mark.parametrize("d", (1, 7, 8, 13, 100))
def test_hamming_brute_force(d):
    rng = np.random.default_rng(d)
    a, b = rng.normal(size=(7, d)), rng.normal(size=(11, d))
    brute = np.array([[np.sum((x >= 0) != (y >= 0)) for y in b] for x in a])
    sa, sb = encode_storage(a, "binary"), encode_storage(b, "binary")
    np.testing.assert_array_equal(hamming(sa.codes, sb.codes, block=3), brute)
    np.testing.assert_array_equal(similarity(sa, sb), -brute)


def test_matryoshka():
    e = jnp.asarray(_vecs(4, 32, seed=9)) * 3.0
    m = matryoshka(e, 8)
    assert m.shape == (4, 8)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(m), axis=1), 1.0, rtol=1e-6)
    # same direction as the truncated prefix
    np.testing.assert_allclose(np.asarray(m) * np.linalg.norm(np.asarray(e[:, :8]), axis=1, keepdims=True),
                               np.asarray(e[:, :8]), rtol=1e-5)
    # storage path truncates the same way
    st = encode_storage(np.asarray(e), "fp32", dim=8)
    assert st.dim == 8
    np.testing.assert_allclose(decode_storage(st), np.asarray(m), rtol=1e-6)
    with pytest.raises(ValueError):
        matryoshka(e, 33)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_quantize_ste_jit_and_gradient(precision, dtype):
    x = jnp.asarray(_vecs(6, 24, seed=10), dtype)
    w = jnp.asarray(np.random.default_rng(11).normal(size=(6, 24)), dtype)
    f = jax.jit(lambda v: quantize_ste(v, precision))
    y = f(x)
    assert y.dtype == dtype and y.shape == x.shape
    # forward is exactly the fake-quantized value, also in bfloat16
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(quantize(x, precision), np.float32))
    g = jax.jit(jax.grad(lambda v: jnp.sum(quantize_ste(v, precision) * w)))(x)
    assert g.dtype == dtype
    np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(w, np.float32))


def test_quantize_ste_global_scale_traced():
    x = jnp.asarray(_vecs(3, 16, seed=12))
    s = calibrate_scale(np.asarray(x), "int4")
    y = jax.jit(lambda v, sc: quantize_ste(v, "int4", sc))(x, jnp.float32(s))
    np.testing.assert_allclose(np.asarray(y), decode_storage(encode_storage(np.asarray(x), "int4", scale=s)),
                               rtol=1e-6)


def test_binary_unit_norm_and_cosine():
    e = _vecs(5, 40, seed=13)
    q = np.asarray(quantize(jnp.asarray(e), "binary"))
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, rtol=1e-6)
    h = hamming(encode_storage(e, "binary").codes, encode_storage(e, "binary").codes)
    np.testing.assert_allclose(q @ q.T, 1 - 2 * h / 40, atol=1e-6)


def test_bad_precision():
    with pytest.raises(ValueError):
        quantize(jnp.ones((2, 4)), "int3")
    with pytest.raises(ValueError):
        encode_storage(np.ones((2, 4)), "fp16")
    with pytest.raises(ValueError):
        encode_storage(np.ones((2, 4)), "binary", scale=1.0)
    assert isinstance(encode_storage(np.ones((2, 4)), "fp32"), StoredEmbeddings)


@pytest.mark.parametrize("precision, scale", [(p, None) for p in PRECISIONS] + [(p, 0.05) for p in INT])
def test_save_load_is_exact(tmp_path, precision, scale):
    e = np.random.default_rng(3).normal(size=(7, 37)).astype(np.float32)
    st = encode_storage(e, precision, scale=scale)
    st.save(str(tmp_path / "v.npz"))
    back = StoredEmbeddings.load(str(tmp_path / "v.npz"))
    assert (back.precision, back.dim, back.per_vector_scale) == (st.precision, st.dim, st.per_vector_scale)
    np.testing.assert_array_equal(back.codes, st.codes)
    assert (back.scale is None) == (st.scale is None)
    if st.scale is not None:
        np.testing.assert_array_equal(back.scale, st.scale)
    np.testing.assert_array_equal(similarity(back, back), similarity(st, st))


def test_load_names_what_is_wrong(tmp_path):
    np.savez(tmp_path / "other.npz", vecs=np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"other.npz: not a stored-embeddings archive \(missing \['codes'"):
        StoredEmbeddings.load(str(tmp_path / "other.npz"))
    st = encode_storage(np.ones((3, 16), np.float32), "int4")
    np.savez(tmp_path / "cut.npz", codes=st.codes[:, :5], scale=st.scale, precision="int4", dim=16)
    with pytest.raises(ValueError, match=r"cut.npz: codes uint8 \(3, 5\) do not hold int4 vectors of dim 16"):
        StoredEmbeddings.load(str(tmp_path / "cut.npz"))
    np.savez(tmp_path / "scale.npz", codes=st.codes, scale=st.scale[:2], precision="int4", dim=16)
    with pytest.raises(ValueError, match=r"scale.npz: scale of shape \(2,\) for 3 int4 vectors"):
        StoredEmbeddings.load(str(tmp_path / "scale.npz"))
