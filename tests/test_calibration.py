"""Per-dimension calibration of stored precisions (quant.calibration) against a numpy reference written here
from the definitions, and old folders / archives without statistics behaving exactly as before."""
import numpy as np
import pytest

from bitembed_jax.quant.calibration import META_KEY, Calibration, model_calibration
from bitembed_jax.quant.storage import (StoredEmbeddings, encode_storage, int_codes, model_storage, similarity)

INTS = ("int8", "int4", "int2")


def llm_like(n: int, d: int = 24, seed: int = 0) -> np.ndarray:
    """Unit vectors whose first two dimensions are massive and offset, as an LLM's last hidden state has."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    x[:, :2] = 30 + 25 * x[:, :2]
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def ref_codes(z: np.ndarray, precision: str, scale=None):
    """Integer codes and scales by the grid definitions (quant/grid.py's docstring), in float64."""
    top = {"int8": 127, "int4": 7, "int2": 4}[precision]
    s = np.abs(z).max(axis=1, keepdims=True) / top if scale is None else np.float64(scale)
    y = z / s
    if precision == "int2":  # mid-rise: levels +-1, +-3, thresholds 0 and +-2
        c = np.where(y >= 2, 3, np.where(y >= 0, 1, np.where(y >= -2, -1, -3)))
    else:
        c = np.clip(np.rint(y), -top, top)
    return c.astype(np.int64), s


def ref_z(x, sample, method, dim=None):
    d = x.shape[1] if dim is None else dim
    s = np.asarray(sample, np.float64)[:, :d]
    if method == "standardize":
        z = (np.asarray(x, np.float64)[:, :d] - s.mean(0)) / s.std(0)
        return z / np.linalg.norm(z, axis=1, keepdims=True)  # cosines of the standardised vectors
    center, width = (s.min(0) + s.max(0)) / 2, (s.max(0) - s.min(0)) / 2
    return (np.asarray(x, np.float64)[:, :d] - center) / width


def test_fit_is_the_sample_statistics():
    x = llm_like(40)
    st = Calibration.fit(x, "standardize")
    np.testing.assert_allclose(st.center, x.astype(np.float64).mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(st.width, x.astype(np.float64).std(0), rtol=1e-6)
    rg = Calibration.fit(x, "range")
    np.testing.assert_allclose(rg.center + rg.width, x.max(0), rtol=1e-6)
    np.testing.assert_allclose(rg.center - rg.width, x.min(0), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method", ["standardize", "range"])
@pytest.mark.parametrize("precision", INTS)
@pytest.mark.parametrize("dim", [None, 10])
def test_int_codes_and_scores_equal_the_reference(method, precision, dim):
    sample, docs, queries = llm_like(64, seed=1), llm_like(9, seed=2), llm_like(5, seed=3)
    cal = Calibration.fit(sample, method)
    stored_d = encode_storage(docs, precision, dim=dim, calibration=cal)
    stored_q = encode_storage(queries, precision, dim=dim, calibration=cal)
    fixed = 1 / {"int8": 127, "int4": 7, "int2": 4}[precision] if method == "range" else None
    cd, sd = ref_codes(ref_z(docs, sample, method, dim), precision, fixed)
    cq, sq = ref_codes(ref_z(queries, sample, method, dim), precision, fixed)
    np.testing.assert_array_equal(int_codes(stored_d), cd)
    assert stored_d.per_vector_scale == (method == "standardize")
    # integer dot products of the codes times the scales; a float query is coded like the stored side
    want = (cq @ cd.T) * sq * np.reshape(sd, (1, -1))
    np.testing.assert_allclose(similarity(stored_q, stored_d), want, rtol=1e-5)
    np.testing.assert_allclose(similarity(queries, stored_d), want, rtol=1e-5)


@pytest.mark.parametrize("method", ["standardize", "range"])
def test_binary_is_the_sign_of_the_centred_vector(method):
    sample, docs = llm_like(64, seed=4), llm_like(7, seed=5)
    cal = Calibration.fit(sample, method)
    bits = ref_z(docs, sample, method) >= 0
    stored = encode_storage(docs, "binary", calibration=cal)
    np.testing.assert_array_equal(np.unpackbits(stored.codes, axis=1, count=docs.shape[1]), bits)
    hamming = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    np.testing.assert_array_equal(similarity(stored, stored), -hamming)


def test_fp32_is_never_calibrated():
    x = llm_like(6)
    stored = encode_storage(x, "fp32", calibration=Calibration.fit(llm_like(20), "standardize"))
    assert stored.calibration is None
    np.testing.assert_array_equal(stored.codes, x)


@pytest.mark.parametrize("precision", [*INTS, "binary", "fp32"])
def test_a_folder_without_statistics_stores_exactly_as_before(precision):
    x = llm_like(8)
    meta = {"model": {}, "max_length": 128}
    got, old = model_storage(x, precision, meta), encode_storage(x, precision)
    assert got.calibration is None
    np.testing.assert_array_equal(got.codes, old.codes)
    assert (got.scale is None) == (old.scale is None)
    if got.scale is not None:
        np.testing.assert_array_equal(got.scale, old.scale)


def test_a_calibrated_folder_codes_with_its_statistics():
    x, sample = llm_like(8, seed=6), llm_like(30, seed=7)
    cal = Calibration.fit(sample, "standardize", source="30 passages")
    meta = {"model": {}, META_KEY: cal.to_meta()}
    back = model_calibration(meta)
    assert back.same_as(cal) and back.source == "30 passages" and back.n == 30  # exact float32 round trip
    got = model_storage(x, "int2", meta)
    np.testing.assert_array_equal(got.codes, encode_storage(x, "int2", calibration=cal).codes)


def test_calibration_travels_in_saved_archives(tmp_path):
    cal = Calibration.fit(llm_like(30), "range", source="corpus")
    stored = encode_storage(llm_like(5, seed=8), "int4", dim=12, calibration=cal)
    path = str(tmp_path / "v.npz")
    stored.save(path)
    back = StoredEmbeddings.load(path)
    assert back.calibration.same_as(cal) and back.calibration.source == "corpus"
    np.testing.assert_array_equal(similarity(back, back), similarity(stored, stored))
    plain = str(tmp_path / "plain.npz")  # as written before calibration existed: no calibration keys
    with open(plain, "wb") as f:
        np.savez(f, codes=stored.codes, scale=stored.scale, precision="int4", dim=12)
    assert StoredEmbeddings.load(plain).calibration is None


def test_different_calibrations_are_not_scored_together():
    x = llm_like(6)
    a = encode_storage(x, "int8", calibration=Calibration.fit(llm_like(20, seed=1), "standardize"))
    b = encode_storage(x, "int8", calibration=Calibration.fit(llm_like(20, seed=2), "standardize"))
    with pytest.raises(ValueError, match="different calibrations"):
        similarity(a, b)
    with pytest.raises(ValueError, match="different calibrations"):
        similarity(a, encode_storage(x, "int8"))


def planted_pairs(n: int, d: int, seed: int):
    """(queries, documents): pair i shares a latent vector in dims 2.., while dims 0-1 are massive, offset and
    uninformative (as an LLM's are for retrieval)."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, d))
    out = []
    for _ in range(2):
        x = latent + 0.7 * rng.normal(size=(n, d))
        x[:, :2] = 30 + 25 * rng.normal(size=(n, 2))
        out.append((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))
    return out


def test_calibration_puts_the_ladder_back_in_order_when_a_few_dimensions_are_massive():
    """The issue's failure: per-vector absmax lets the massive dimensions take the whole int2 range, so int2 finds
    fewer of the planted pairs than binary; standardised codes rank every precision above the one below it."""
    queries, docs = planted_pairs(300, 64, seed=0)
    sample = planted_pairs(300, 64, seed=1)[1]  # calibration vectors: not the scored ones

    def found(precision, cal):
        s = similarity(encode_storage(queries, precision, calibration=cal),
                       encode_storage(docs, precision, calibration=cal))
        return float((s.argmax(1) == np.arange(len(queries))).mean())

    plain = {p: found(p, None) for p in INTS + ("binary",)}
    assert plain["int2"] < plain["binary"]  # the disorder being fixed
    calibrated = [found(p, Calibration.fit(sample, "standardize")) for p in INTS + ("binary",)]
    assert calibrated == sorted(calibrated, reverse=True)
    assert calibrated[0] - calibrated[1] <= 0.02 and calibrated[2] > plain["int2"] + 0.1


@pytest.mark.parametrize("meta, named", [
    ({META_KEY: {"method": "minmax"}}, "method must be one of"),
    ({META_KEY: {"method": "standardize", "center": [0.0, 1.0], "width": [1.0]}}, "equal-length"),
    ({META_KEY: {"method": "standardize", "center": [0.0], "width": [0.0]}}, "widths positive"),
    ({META_KEY: {"method": "standardize", "center": "abc", "width": [1.0]}}, "lists of numbers"),
    ({META_KEY: {"method": "range", "center": [0.0], "width": [1.0]}, "embedding_scales": {"int8": 0.1}},
     "both embedding_scales"),
])
def test_bad_statistics_are_named_with_their_file(meta, named):
    with pytest.raises(ValueError, match=named) as e:
        model_calibration(meta, "/m/bitembed_config.json")
    assert str(e.value).startswith("/m/bitembed_config.json: ")


def test_fit_refuses_too_few_or_bad_vectors():
    with pytest.raises(ValueError, match="n >= 2"):
        Calibration.fit(np.ones((1, 4)))
    with pytest.raises(ValueError, match="method must be one of"):
        Calibration.fit(np.ones((3, 4)), "minmax")
    for sample in (np.tile([[1.0, 2.0, 3.0]], (5, 1)), [[1.0, 0.0, 3.0], [1.0, 2.0, 3.0]]):  # constant dims
        for method in ("standardize", "range"):
            z = Calibration.fit(sample, method).apply(np.array([[2.0, 2.0, 2.0]], np.float32))
            assert np.isfinite(z).all()  # floored widths: no division by 0
