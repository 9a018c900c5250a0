"""ONNX export: onnxruntime's and FastEmbed's vectors match our JAX encoder's (fp and ternary, act_bits 8 and 4,
per-linear and SubLN norms, causal and bidirectional, last and mean pooling, Gemma3's sliding window), so do the
README's FastEmbed snippet's, the stored-precision codes agree up to ties, the folder has the
sentence-transformers layout, and bad input gets a one-line error."""
import json
import os
import stat

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from bitembed_jax.cli import main as cli
from bitembed_jax.convert.hf_import import convert
from bitembed_jax.encode import Encoder
from bitembed_jax.export.fastembed_loader import fastembed_model
from bitembed_jax.export.hf_export import export
from bitembed_jax.export.onnx_runtime import OnnxEncoder
from bitembed_jax.io.load import load_model_dir
from bitembed_jax.models import embed
from bitembed_jax.quant.storage import decode_storage

PROMPT = "Instruct: find the passage\nQuery: "
# lengths from 2 to ~70 tokens: padded batches of different widths, longer than Gemma3's window of 4
TEXTS = ["x", "sentence number 3 about topic 2", "alpha beta gamma delta with words " * 6,
         "sentence number 150 about topic 3 with words alpha beta gamma delta " * 5, "topic 4", "beta",
         "words about alpha and gamma"]
# (name, arch, convert options): every norm layout, both activation widths, both attentions and poolings
CASES = [
    ("qwen3_ternary_a8", "qwen3", dict(mode="bitnet", norm="per_linear", act_bits=8)),
    ("qwen3_subln_a4_rows", "qwen3", dict(mode="bitnet", norm="subln", act_bits=4, per_row_scale=True)),
    ("qwen3_fp", "qwen3", dict(mode="fp")),
    ("gemma3_ternary_a4_bidir_mean", "gemma3", dict(mode="bitnet", norm="per_linear", act_bits=4,
                                                    attention="bidirectional", pooling="mean")),
    ("gemma3_subln_a8", "gemma3", dict(mode="bitnet", norm="subln", act_bits=8)),
    ("gemma3_fp", "gemma3", dict(mode="fp")),
]


def _checkpoint(hf, out, **opts):
    """A model folder with a query prompt and a calibrated int4 scale in its config, as training writes."""
    path = convert(hf, str(out), **opts)
    cfg_path = os.path.join(path, "bitembed_config.json")
    with open(cfg_path) as f:
        meta = json.load(f)
    meta.update(prompts={"query": PROMPT}, embedding_scales={"int4": 0.02})
    with open(cfg_path, "w") as f:
        json.dump(meta, f)
    return path


@pytest.fixture(scope="module")
def exports(tiny_qwen3, tiny_gemma3, tmp_path_factory):
    """{case: (model folder, ONNX export folder)}, exported through the command line."""
    d = tmp_path_factory.mktemp("onnx")
    out = {}
    for name, arch, opts in CASES:
        ckpt = _checkpoint(tiny_qwen3 if arch == "qwen3" else tiny_gemma3, d / name, **opts)
        folder = str(d / (name + "_onnx"))
        assert cli(["export", "--checkpoint", ckpt, "--out", folder, "--format", "onnx"]) == 0
        out[name] = (ckpt, folder)
    return out


def _min_cos(a, b):
    return float((a * b).sum(axis=1).min())


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_onnxruntime_matches_the_jax_encoder(exports, name):
    ckpt, folder = exports[name]
    onnx.checker.check_model(os.path.join(folder, "onnx", "model.onnx"), full_check=True)
    ours, theirs = Encoder.from_pretrained(ckpt), OnnxEncoder(folder)
    assert theirs.prompts == {"query": PROMPT}
    # the prompt path once (it is the same for every model); each width is one more JAX compile
    for prompt in (None, PROMPT) if name == "qwen3_ternary_a8" else (None,):
        want = ours.encode(TEXTS, batch_size=4, prompt=prompt)
        got = theirs.encode(TEXTS, batch_size=4, prompt=prompt)
        assert got.shape == want.shape and got.dtype == np.float32
        assert _min_cos(got, want) >= 0.9999, _min_cos(got, want)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", ["qwen3_ternary_a8", "gemma3_ternary_a4_bidir_mean"])
def test_raw_session_on_left_and_right_padding(exports, name):
    """The graph itself, on ids the tokenizer never makes: left padding, right padding and a full row, against
    the JAX model on the same arrays; last_hidden_state too (what sentence-transformers pools)."""
    ckpt, folder = exports[name]
    model, _ = load_model_dir(ckpt)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 512, size=(3, 24)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 15:] = 0
    mask[2, :6] = 0
    sess = ort.InferenceSession(os.path.join(folder, "onnx", "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask"]
    hidden, pooled = sess.run(["last_hidden_state", "sentence_embedding"], {"input_ids": ids, "attention_mask": mask})
    want_hidden = np.asarray(model(ids.astype(np.int32), mask.astype(np.int32)).last_hidden_state)
    want = np.asarray(embed(model, ids.astype(np.int32), mask.astype(np.int32)))
    assert _min_cos(pooled, want) >= 0.9999
    real = mask.astype(bool)
    cos = (hidden[real] * want_hidden[real]).sum(-1) / (
        np.linalg.norm(hidden[real], axis=-1) * np.linalg.norm(want_hidden[real], axis=-1))
    assert cos.min() >= 0.9999, cos.min()


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_fastembed_matches_the_jax_encoder(exports, name):
    """FastEmbed's TextEmbedding over the folder (a custom model from the local path, offline): its vectors are
    our JAX Encoder's on padded batches; queries get the prompt prepended, as FastEmbed users must."""
    ckpt, folder = exports[name]
    model = fastembed_model(folder)
    assert model.embedding_size == 64
    ours = Encoder.from_pretrained(ckpt)
    # FastEmbed's own tokenizer (tokenizer.json + tokenizer_config.json): the ids OnnxEncoder feeds, which the
    # export checked are our Tokenize's; a text past max_length is cut with its EOS kept
    long = "alpha beta " * 400
    fe_ids = np.array([e.ids for e in model.model.tokenizer.encode_batch([long, "x"])])
    ids, mask = OnnxEncoder(folder).tokenize([long, "x"])
    assert fe_ids.shape == ids.shape == (2, 512) and (fe_ids == ids).all()
    got = {}
    for query in (False, True) if name == "qwen3_ternary_a8" else (False,):
        want = ours.encode(TEXTS, batch_size=4, prompt=PROMPT if query else None)
        got[query] = np.stack(list(model.query_embed([PROMPT + t for t in TEXTS], batch_size=4) if query
                                   else model.embed(TEXTS, batch_size=4)))
        assert got[query].shape == want.shape and got[query].dtype == np.float32
        assert _min_cos(got[query], want) >= 0.9999, _min_cos(got[query], want)
        np.testing.assert_allclose(np.linalg.norm(got[query], axis=1), 1.0, rtol=1e-5)
    # the same folder loads again in the process (FastEmbed keeps the registration)
    again = np.stack(list(fastembed_model(folder).embed(TEXTS[:2])))
    np.testing.assert_allclose(again, got[False][:2], atol=1e-6)
    if True in got:  # the README's FastEmbed snippet, its query line included, gives the same vectors
        ns = _run_fastembed_snippet(folder, name, queries=TEXTS)
        np.testing.assert_allclose(np.stack(ns["vectors"]), np.stack(list(model.embed(["some text"]))), atol=1e-6)
        np.testing.assert_allclose(np.stack(ns["query_vectors"]), got[True], atol=1e-6)


def _run_fastembed_snippet(folder, name, **names):
    """Run the export README's FastEmbed code block on ``folder`` (under a model name of its own: FastEmbed's
    registry is per process), its commented query expression as ``query_vectors``; returns its namespace."""
    with open(os.path.join(folder, "README.md"), encoding="utf-8") as f:
        block = f.read().split("```python\n")[2].split("```")[0]
    assert "TextEmbedding.add_custom_model" in block and "# queries: " in block
    code, query = block.replace("PATH", folder).replace("local/bitembed", "local/" + name).split("# queries: ")
    ns = dict(names)
    exec(code + "\nquery_vectors = " + query, ns)
    return ns


def _straddle(ya, yb, boundaries):
    """Whether a code boundary lies between ya and yb (elementwise): a tie the two runtimes broke apart."""
    lo, hi = np.minimum(ya, yb), np.maximum(ya, yb)
    return np.array([np.any((lo_ <= boundaries) & (boundaries <= hi_)) for lo_, hi_ in zip(lo.ravel(), hi.ravel())])


@pytest.mark.parametrize("name", ["qwen3_ternary_a8", "gemma3_ternary_a4_bidir_mean"])
def test_stored_codes_are_the_same_whichever_runtime(exports, name):
    ckpt, folder = exports[name]
    ours, theirs = Encoder.from_pretrained(ckpt), OnnxEncoder(folder)
    fa, fb = ours.encode(TEXTS), theirs.encode(TEXTS)
    for precision in ("int8", "int4", "int2", "binary"):
        a, b = ours.encode(TEXTS, precision=precision), theirs.encode(TEXTS, precision=precision)
        assert (a.precision, a.dim, a.codes.shape, a.codes.dtype) == (b.precision, b.dim, b.codes.shape, b.codes.dtype)
        if precision == "int4":  # the model's calibrated global scale, on both sides
            assert float(a.scale) == float(b.scale) == np.float32(0.02)
        if precision == "binary":
            differ = np.unpackbits(a.codes, axis=1) != np.unpackbits(b.codes, axis=1)
            assert not differ.any() or np.all(np.abs(fa[differ]) <= np.abs(fa - fb).max()), "a sign flip off zero"
            continue
        ya = fa / (a.scale[:, None] if a.scale.ndim else a.scale)
        yb = fb / (b.scale[:, None] if b.scale.ndim else b.scale)
        ca = np.rint(decode_storage(a) / (a.scale[:, None] if a.scale.ndim else a.scale))
        cb = np.rint(decode_storage(b) / (b.scale[:, None] if b.scale.ndim else b.scale))
        differ = ca != cb
        bounds = np.arange(-6.0, 7.0, 2.0) if precision == "int2" else np.arange(-127.5, 128.0)
        assert differ.mean() < 0.01, (precision, differ.mean())
        assert _straddle(ya[differ], yb[differ], bounds).all(), (precision, ya[differ], yb[differ])


def test_folder_layout_for_sentence_transformers(exports):
    ckpt, folder = exports["qwen3_ternary_a8"]
    names = set(os.listdir(folder))
    assert {"config.json", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
            "1_Pooling", "2_Normalize", "tokenizer.json", "tokenizer_config.json", "bitembed_config.json",
            "README.md", "onnx"} <= names
    assert os.listdir(os.path.join(folder, "onnx")) == ["model.onnx"]
    with open(os.path.join(folder, "config.json")) as f:
        assert json.load(f)["model_type"] == "qwen3"
    with open(os.path.join(folder, "config_sentence_transformers.json")) as f:
        assert json.load(f)["prompts"]["query"] == PROMPT
    with open(os.path.join(folder, "1_Pooling", "config.json")) as f:
        assert json.load(f)["pooling_mode"] == "lasttoken"
    with open(os.path.join(folder, "tokenizer_config.json")) as f:  # FastEmbed cuts texts there
        assert json.load(f)["model_max_length"] == 512
    with open(os.path.join(folder, "bitembed_config.json")) as f:
        meta = json.load(f)
    assert meta["export"]["format"] == "onnx" and "source" not in meta
    # ternary linears are 2-bit codes into MatMulIntegerToFloat; no float copy of them rides along
    model = onnx.load(os.path.join(folder, "onnx", "model.onnx"))
    inits = {t.name: t for t in model.graph.initializer}
    q_proj = inits["layers.0.self_attn.q_proj.codes_int2"]
    assert q_proj.data_type == onnx.TensorProto.INT2 and len(q_proj.raw_data) == -(-np.prod(q_proj.dims) // 4)
    assert not any(n.endswith(".kernel") for n in inits)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulIntegerToFloat") == 7 * 3 and "QuantizeLinear" in ops
    fp = onnx.load(os.path.join(exports["qwen3_fp"][1], "onnx", "model.onnx"))
    assert "MatMulInteger" not in [n.op_type for n in fp.graph.node]
    assert fp.graph.initializer[0].data_type == onnx.TensorProto.FLOAT
    # the folder and its files follow the umask (the temporary folder renamed into place is not 0700)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o777 & ~umask


def test_bad_input_gets_one_line_errors(exports, tmp_path, capsys):
    ckpt, folder = exports["qwen3_ternary_a8"]
    with pytest.raises(ValueError, match="--format 'tflite' is not one of") as e:
        export(ckpt, str(tmp_path / "a"), fmt="tflite")
    assert "\n" not in str(e.value)
    with pytest.raises(SystemExit):
        cli(["export", "--checkpoint", ckpt, "--out", str(tmp_path / "a"), "--format", "tflite"])
    assert "invalid choice: 'tflite'" in capsys.readouterr().err

    def error(argv):
        assert cli(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err, err
        return err

    assert "--dtype" in error(["export", "--checkpoint", ckpt, "--out", str(tmp_path / "b"), "--format",
                               "onnx", "--dtype", "bfloat16"])
    assert not os.path.exists(tmp_path / "b")
    assert "--embedding-block 0" in error(["export", "--checkpoint", ckpt, "--out", str(tmp_path / "b"), "--format",
                                           "onnx", "--int8-embeddings", "--embedding-block", "0"])
    assert "--overwrite" in error(["export", "--checkpoint", ckpt, "--out", folder, "--format", "onnx"])
    # an ONNX folder is no JAX model folder, and a model folder no ONNX export: both say what they are
    with pytest.raises(ValueError, match=r"is an ONNX export folder .*OnnxEncoder\.from_pretrained\(path\) or "
                                         r"FastEmbed"):
        Encoder.from_pretrained(folder)
    with pytest.raises(ValueError, match="is not an ONNX export") as e:
        OnnxEncoder(ckpt)
    assert ckpt in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="bitembed_config.json not found"):
        OnnxEncoder(str(tmp_path / "nowhere"))
    with pytest.raises(TypeError, match="single string"):
        OnnxEncoder(folder).encode("one text")


def test_overwrite_replaces_an_export(exports, tmp_path):
    ckpt, _ = exports["qwen3_fp"]
    out = tmp_path / "again"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    assert cli(["export", "--checkpoint", ckpt, "--out", str(out), "--format", "onnx", "--overwrite"]) == 0
    assert not (out / "stale.txt").exists()
    assert OnnxEncoder(str(out)).encode(["hello"]).shape == (1, 64)


def test_unpacked_weights_are_the_ternary_codes(exports, tmp_path):
    """The file holds 2-bit codes (INT2); ONNX Runtime's constant folding casts them at session load into int8
    tensors equal to the JAX model's ternary codes, and no unpacking node is left to run per call."""
    from bitembed_jax.export.onnx_graph import ternary_codes
    from bitembed_jax.layers.bitlinear import linears

    ckpt, folder = exports["qwen3_subln_a4_rows"]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(os.path.join(folder, "onnx", "model.onnx"), opts, providers=["CPUExecutionProvider"])
    optimized = onnx.load(opts.optimized_model_filepath)
    assert not [n for n in optimized.graph.node if any(i.endswith(".codes_int2") for i in n.input)]
    inits = {t.name: t for t in optimized.graph.initializer}
    matmuls = [n for n in optimized.graph.node if n.op_type == "MatMulIntegerToFloat"]
    model, _ = load_model_dir(ckpt)
    lins = linears(model)
    assert len(matmuls) == len(lins) == 7 * 3
    for path, lin in lins.items():
        name = path[:-len(".kernel")]
        node = next(n for n in matmuls if n.input[3] == name + ".scale")
        got = onnx.numpy_helper.to_array(inits[node.input[1]])
        want, _ = ternary_codes(lin)
        assert got.dtype == np.int8 and np.array_equal(got, want), name


@pytest.mark.parametrize("rows", [4, 6, 7])
def test_two_bit_unpacking_any_row_count(rows):
    """``ternary_weight``'s INT2 codes and Cast, run as nodes, for sizes that are and are not multiples of 4;
    and ``pack_int2`` against ONNX's own INT2 reader."""
    from onnx import helper

    from bitembed_jax.export.onnx_graph import IR_VERSION, OPSET
    from bitembed_jax.export.onnx_ops import Graph, ternary_weight
    from bitembed_jax.quant.packing import unpack_int2

    codes = np.random.default_rng(rows).integers(-1, 2, size=(rows, 5)).astype(np.int8)
    g = Graph()
    out = ternary_weight(g, codes, "w")
    assert np.array_equal(onnx.numpy_helper.to_array(g.initializers[0]).astype(np.int8), codes)
    assert np.array_equal(unpack_int2(np.frombuffer(g.initializers[0].raw_data, np.uint8), codes.shape), codes)
    graph = helper.make_graph(g.nodes, "unpack", [], [helper.make_tensor_value_info(out, onnx.TensorProto.INT8,
                                                                                    codes.shape)], g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    proto.ir_version = IR_VERSION
    onnx.checker.check_model(proto, full_check=True)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the nodes run, not folded
    got = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, {})[0]
    assert got.dtype == np.int8 and np.array_equal(got, codes)


@pytest.mark.parametrize("bits,block", [(8, None), (4, None), (8, "row")])
def test_low_bit_embeddings_option(exports, tmp_path, bits, block):
    """--int8-embeddings / --int4-embeddings: int8 or int4 codes and a float16 scale per block of 32 values
    (--embedding-block; the hidden size: one per row), each value within half a step of the float one,
    gathered then dequantized in the graph: its vectors are those of the JAX model whose table is the
    dequantized one. (What the rounding costs against the float table: bench/onnx_fidelity.py on a real
    model; random tiny ternary models amplify any change.)"""
    ckpt, _ = exports["qwen3_ternary_a8"]
    model, _ = load_model_dir(ckpt)
    table = np.asarray(model.embed_tokens.embedding[...], np.float32)
    size = 32 if block is None else table.shape[1]
    folder = str(tmp_path / f"int{bits}emb")
    extra = [] if block is None else ["--embedding-block", str(size)]
    assert cli(["export", "--checkpoint", ckpt, "--out", folder, "--format", "onnx", f"--int{bits}-embeddings",
                *extra]) == 0
    path = os.path.join(folder, "onnx", "model.onnx")
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    assert "embed_tokens.embedding" not in inits
    scale = inits["embed_tokens.block_scale"]
    assert scale.dtype == np.float16 and scale.shape == (table.shape[0], table.shape[1] // size, 1)
    if bits == 8:
        codes = inits["embed_tokens.int8"]
        assert codes.dtype == np.int8
    else:
        packed = inits["embed_tokens.int4"]
        assert packed.dtype == np.uint8 and packed.shape == (table.shape[0], table.shape[1] // 2)
        codes = np.stack([packed & 15, packed >> 4], axis=-1).reshape(table.shape).astype(np.int8) - 8
        assert np.abs(codes).max() <= 7
    step = np.repeat(scale[:, :, 0].astype(np.float32), size, axis=1)
    dequantized = codes * step
    assert (np.abs(dequantized - table) <= step / 2 * (1 + 1e-5)).all()
    with open(os.path.join(folder, "bitembed_config.json")) as f:
        export_meta = json.load(f)["export"]
    assert export_meta["embeddings"] == f"int{bits}" and export_meta["embedding_block"] == size
    # the graph's embedding rows are exactly the dequantized table's rows
    proto = onnx.load(path)
    rows = next(n for n in proto.graph.node if n.name.startswith("embedding_rows")).output[0]
    proto.graph.output.append(onnx.helper.make_tensor_value_info(rows, onnx.TensorProto.FLOAT, None))
    ids = np.random.default_rng(1).integers(3, 512, size=(3, 24)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 15:] = 0
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got, got_rows = sess.run(["sentence_embedding", rows], {"input_ids": ids, "attention_mask": mask})
    assert np.array_equal(got_rows.reshape(ids.shape + (-1,)), dequantized[ids])
    # and the vectors are the JAX model's with that table (up to the ulp-level code flips of every export,
    # which this random ternary model amplifies more than a trained one)
    model.embed_tokens.embedding[...] = dequantized
    want = np.asarray(embed(model, ids.astype(np.int32), mask.astype(np.int32)))
    assert _min_cos(got, want) >= 0.999, _min_cos(got, want)
