"""``export --format onnx``: a folder that ONNX Runtime and FastEmbed serve (tests/test_onnx_export.py).

Layout (sentence-transformers' and optimum's, though their ONNX backend is untested: optimum's ONNX Runtime
classes need transformers < 4.58, see docs/benchmarks.md): ``onnx/model.onnx`` (the graph of ``onnx_graph``; its
weights go to ``onnx/model.onnx_data`` beside it when the file would pass protobuf's 2 GB limit), ``config.json``
(the architecture's Hugging Face config, which optimum reads), the tokenizer (made to append EOS for last-token
pooling, see ``st_files``), the sentence-transformers module files with the prompts, ``bitembed_config.json`` (our
config + an ``export`` section; ``onnx_runtime.OnnxEncoder`` reads it) and a README. ``tokenizer_config.json``'s
model_max_length is the export's max_length (FastEmbed truncates there). Bitnet models keep their ternary weights
as 2-bit codes; fp models (the teacher) as float32. ``int8_embeddings`` stores the token embeddings as int8
codes with a float16 scale per block of ``embedding_block`` values of a row (32: GGUF's Q8_0, 3.8x smaller;
each value within half a step of the float one), ``int4_embeddings`` as int4 codes (7x smaller).
"""
import json
import os

import onnx

from bitembed_jax.choices import DEFAULT_MAX_LENGTH
from bitembed_jax.convert.hf_config import to_hf_config
from bitembed_jax.export.onnx_graph import INPUTS, OPSET, OUTPUTS, build_onnx
from bitembed_jax.export.st_files import write_sentence_transformers, write_tokenizer
from bitembed_jax.io import paths
from bitembed_jax.io.load import load_model_dir
from bitembed_jax.io.model_dir import CONFIG_NAME

FORMAT_VERSION = 1
ONNX_DIR = "onnx"
ONNX_FILE = "model.onnx"
EXTERNAL_DATA = "model.onnx_data"
# protobuf refuses messages over 2 GiB; larger models keep their weights in one external file
SINGLE_FILE_LIMIT = 1_800_000_000
EMBEDDING_BLOCK = 32  # values per scale of int8 / int4 token embeddings: GGUF's Q8_0 / Q4_0 block


def refusal(cfg, *, dtype: str, int8_embeddings: bool, int4_embeddings: bool = False,
            embedding_block: int = EMBEDDING_BLOCK) -> str | None:
    """Why ``cfg`` or the options cannot be exported as ONNX (None if they can)."""
    if int8_embeddings and int4_embeddings:
        return "--int8-embeddings and --int4-embeddings exclude each other"
    if (int8_embeddings or int4_embeddings) and (embedding_block < 1 or cfg.hidden_size % embedding_block):
        return (f"--embedding-block {embedding_block} does not divide the hidden size {cfg.hidden_size} "
                f"(give {cfg.hidden_size} for one scale per row)")
    if int4_embeddings and cfg.hidden_size % 2:
        return f"--int4-embeddings packs two values per byte: hidden size {cfg.hidden_size} is odd"
    if dtype != "float32":
        return ("--dtype is an option of the packed formats; the ONNX graph keeps norms in float32 (use "
                "--int8-embeddings for smaller token embeddings)")
    if cfg.act_bits not in (4, 8):
        return f"{cfg.act_bits}-bit activations: the ONNX graph's uint8 codes take 4 or 8 bits"
    return None


def save_onnx(proto: onnx.ModelProto, onnx_dir: str) -> str:
    """Write and check ``onnx_dir/model.onnx``; returns its path."""
    path = os.path.join(onnx_dir, ONNX_FILE)
    size = sum(len(t.raw_data) for t in proto.graph.initializer)
    if size > SINGLE_FILE_LIMIT:
        onnx.save_model(proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=EXTERNAL_DATA, size_threshold=1024)
    else:
        onnx.save_model(proto, path)
    onnx.checker.check_model(path, full_check=True)  # from the path: the check reads external data too
    return path


def declare_max_length(folder: str, max_length: int) -> None:
    """tokenizer_config.json's ``model_max_length`` := the export's max_length. Loaders that read only the
    tokenizer files cut texts there: FastEmbed truncates at it, and refuses the 1e30 "unknown" many source
    tokenizers carry. (ONNX folders only: our ``Tokenize`` truncates by itself, and transformers would warn
    about the first longer text it reads with a packed export's tokenizer.)"""
    path = os.path.join(folder, "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
        tcfg = json.load(f)
    tcfg["model_max_length"] = max_length
    with open(path, "w", encoding="utf-8") as f:
        json.dump(tcfg, f, indent=2, ensure_ascii=False)


def _usage(cfg, prompt: str) -> str:
    """The README's loading snippets: the ones tests/test_onnx_export.py runs, and what the others need."""
    query = f"model.embed([{prompt!r} + q for q in queries])" if prompt else "model.embed(queries)"
    return f"""With onnxruntime alone (prompt=... for queries):
```python
from bitembed_jax.export.onnx_runtime import OnnxEncoder
vectors = OnnxEncoder("PATH").encode(["some text"])
```
With FastEmbed (`pip install fastembed`), from this folder, offline: a custom model reading the pooled,
normalised `sentence_embedding` output (pooling DISABLED). FastEmbed adds no prompt, even in `query_embed`:
```python
from fastembed import TextEmbedding
from fastembed.common.model_description import ModelSource, PoolingType
TextEmbedding.add_custom_model(model="local/bitembed", pooling=PoolingType.DISABLED, normalization=True,
                               sources=ModelSource(hf="local/bitembed"), dim={cfg.hidden_size},
                               model_file="onnx/model.onnx", output_name="sentence_embedding")
model = TextEmbedding("local/bitembed", specific_model_path="PATH")
vectors = list(model.embed(["some text"]))  # queries: list({query})
```
(`bitembed_jax.export.fastembed_loader.fastembed_model("PATH")` does the registration and loading.)

sentence-transformers' `SentenceTransformer("PATH", backend="onnx")` reads this layout through optimum's
ONNX Runtime classes (`optimum-onnx`), whose releases so far require transformers < 4.58; bitembed-jax uses
transformers 5, so that route is untested.
"""


def _readme(cfg, meta: dict, weights: str) -> str:
    prompt = (meta.get("prompts") or {}).get("query", "")
    pooling = "last-token (EOS appended by the tokenizer)" if cfg.pooling == "last" else "mean"
    return f"""---
library_name: sentence-transformers
tags:
- sentence-transformers
- feature-extraction
- onnx
- fastembed
- bitembed-jax
---

# {cfg.arch} text embedder ({cfg.mode}), ONNX

Exported by bitembed-jax: {cfg.num_layers} layers, hidden size {cfg.hidden_size}, {cfg.attention} attention,
{pooling} pooling and L2 normalisation. Linears: {weights}. Everything else is float32 (opset {OPSET}).

Inputs `{INPUTS[0]}`, `{INPUTS[1]}` (int64, batch x sequence); outputs `{OUTPUTS[0]}` (after the final
norm) and `{OUTPUTS[1]}` (pooled, L2-normalised).

Query prompt: {f"`{prompt!r}`" if prompt else "none"}; documents get none.

""" + _usage(cfg, prompt)


def _write(tmp: str, model, cfg, meta: dict, checkpoint_dir: str, max_length: int, embeddings: str,
           block: int) -> None:
    if cfg.mode == "bitnet":
        weights = (f"ternary codes (2 bits per weight, int8 once loaded) x per-token {cfg.act_bits}-bit activation "
                   "codes (MatMulIntegerToFloat)")
    else:
        weights = "float32 (MatMul)"
    if embeddings != "float32":
        weights += f"; token embeddings {embeddings} with a float16 scale per {block} values"
    os.makedirs(os.path.join(tmp, ONNX_DIR))
    save_onnx(build_onnx(model, cfg, doc=f"bitembed-jax {cfg.arch} encoder, {cfg.mode}", embeddings=embeddings,
                         embedding_block=block), os.path.join(tmp, ONNX_DIR))
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump(to_hf_config(cfg, None), f, indent=2)
    export_meta = {k: v for k, v in meta.items() if k != "source"}  # local paths stay local
    export_meta["export"] = {"format": "onnx", "version": FORMAT_VERSION, "opset": OPSET, "file": ONNX_DIR + "/"
                             + ONNX_FILE, "weights": weights, "embeddings": embeddings}
    if embeddings != "float32":
        export_meta["export"]["embedding_block"] = block
    export_meta["max_length"] = max_length
    with open(os.path.join(tmp, CONFIG_NAME), "w") as f:
        json.dump(export_meta, f, indent=2, sort_keys=True)
    write_tokenizer(checkpoint_dir, tmp, append_eos=cfg.pooling == "last", max_length=max_length)
    declare_max_length(tmp, max_length)
    write_sentence_transformers(tmp, hidden_size=cfg.hidden_size, pooling=cfg.pooling,
                                prompts=meta.get("prompts") or {}, max_length=max_length)
    with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
        f.write(_readme(cfg, meta, weights))


def write_onnx_export(checkpoint_dir: str, out_dir: str, cfg, meta: dict, *, max_length: int | None = None,
                      dtype: str = "float32", int8_embeddings: bool = False, int4_embeddings: bool = False,
                      embedding_block: int = EMBEDDING_BLOCK) -> str:
    """Write the model folder ``checkpoint_dir`` (config ``cfg``, metadata ``meta``) as an ONNX export at
    ``out_dir`` (whose overlap and overwrite checks the caller made). Returns ``out_dir``."""
    why = refusal(cfg, dtype=dtype, int8_embeddings=int8_embeddings, int4_embeddings=int4_embeddings,
                  embedding_block=embedding_block)
    if why:
        raise ValueError(f"cannot export {checkpoint_dir} as onnx: {why}")
    max_length = int(max_length or meta.get("max_length") or DEFAULT_MAX_LENGTH)
    model, cfg = load_model_dir(checkpoint_dir, dtype="float32")
    with paths.atomic_dir(out_dir) as tmp:  # the umask's modes, renamed into place once whole
        embeddings = "int8" if int8_embeddings else "int4" if int4_embeddings else "float32"
        _write(tmp, model, cfg, meta, checkpoint_dir, max_length, embeddings, embedding_block)
    return out_dir
