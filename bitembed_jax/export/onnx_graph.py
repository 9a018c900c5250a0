"""The encoder as one ONNX graph: input_ids, attention_mask (int64, dynamic batch and sequence axes) ->
last_hidden_state (after the final norm, what sentence-transformers' ONNX backend pools) and
sentence_embedding (pooled and L2-normalised as ``models.embed`` does).

Ternary linears store their codes at 2 bits per weight (unpacked to int8 by ONNX Runtime's constant folding at
session load) with their float32 scale, and run as per-token absmax uint8 codes x int8 codes through
``MatMulIntegerToFloat`` (ONNX Runtime's fast integer kernel on CPU, a contrib operator); fp models keep
float32 kernels and plain ``MatMul``. Everything else is float32, as the JAX model computes it with dtype
float32, except the token embeddings when exported as int8 or int4 codes (with float16 block scales).
"""
import jax.numpy as jnp
import numpy as np
import onnx
from flax import nnx
from onnx import TensorProto, helper

from bitembed_jax.export.onnx_ops import (MS_DOMAIN, Graph, apply_rope, gqa_attention, linear, position_mask, rms_norm,
                                          rope_tables)
from bitembed_jax.io.state_paths import flat_params
from bitembed_jax.layers.bitlinear import linears
from bitembed_jax.models.attention import rope_inv_freq
from bitembed_jax.quant.activation import EPS as ACT_EPS
from bitembed_jax.quant.packing import int4_blocks, int8_blocks
from bitembed_jax.quant.ternary import ternary_int

# INT2 initializers (the ternary codes) need opset 25 and IR 11 (onnxruntime 1.32 reads them; tested)
OPSET = 25
IR_VERSION = 11
INPUTS = ("input_ids", "attention_mask")
OUTPUTS = ("last_hidden_state", "sentence_embedding")


def ternary_codes(lin) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes (in, out), float32 gamma) of the weight the layer's forward uses.

    A layer loaded from a packed export keeps its stored scale (``frozen_scale``): its kernel is q * gamma,
    whose absmean is not gamma, so the codes come from that scale as ``quant.bitmatmul`` takes them."""
    if lin.frozen_scale is None:
        q, gamma = ternary_int(lin.kernel[...], lin.per_row_scale)
    else:
        gamma = lin.frozen_scale[...].astype(jnp.float32)
        q = jnp.clip(jnp.round(lin.kernel[...].astype(jnp.float32) / gamma), -1, 1).astype(jnp.int8)
    return np.asarray(q), np.asarray(gamma, np.float32)


class Params:
    """The model's weights as numpy, by dotted state path, and its linears in the form ``onnx_ops.linear``
    takes."""

    def __init__(self, model):
        self.values = {k: np.asarray(v, np.float32) for k, v in flat_params(nnx.state(model)).items()}
        self.lins = linears(model)

    def __getitem__(self, path: str) -> np.ndarray:
        return self.values[path]

    def get(self, path: str):
        return self.values.get(path)

    def linear(self, prefix: str) -> dict:
        lin = self.lins[prefix + ".kernel"]
        out = {"norm": self.get(prefix + ".norm.weight"), "bias": self.get(prefix + ".bias")}
        if lin.mode == "ternary":
            out["codes"], out["gamma"] = ternary_codes(lin)
        else:
            out["kernel"] = self[prefix + ".kernel"]
        return out


class _Builder:
    """Adds one encoder's layers to a Graph, following ``models/qwen3.py``, ``models/gemma3.py`` and
    ``models/blocks.py``.

    The residual stream is kept as tokens (B * T, hidden): 2-D operands for the matmuls, and one token axis
    along which DequantizeLinear rescales the integer products. Attention and the outputs reshape to
    (B, T, ...) with the batch shape of the input ids."""

    def __init__(self, g: Graph, cfg, params: Params, embeddings: str = "float32", embedding_block: int = 32):
        self.g, self.cfg, self.p = g, cfg, params
        self.embeddings, self.embedding_block = embeddings, embedding_block
        self.offset = cfg.arch == "gemma3"  # Gemma's norms are x * (1 + w)
        self.batch_shape = None  # Shape(input_ids): (B, T)
        self._shapes = {}

    def shape(self, *dims: int) -> str:
        """(B, T, *dims) as a shape tensor (one node per distinct dims)."""
        if dims not in self._shapes:
            self._shapes[dims] = self.g.op("Concat", self.batch_shape, self.g.const(list(dims), np.int64), axis=0)
        return self._shapes[dims]

    def norm(self, x: str, path: str, offset: bool | None = None) -> str:
        offset = self.offset if offset is None else offset
        return rms_norm(self.g, x, self.p[path + ".weight"], self.cfg.rms_norm_eps, offset, path)

    def linear(self, x: str, path: str) -> str:
        cfg = self.cfg
        return linear(self.g, x, self.p.linear(path), act_bits=cfg.act_bits, act_eps=ACT_EPS,
                      norm_eps=cfg.rms_norm_eps, name=path)

    def subln(self, x: str, path: str) -> str:
        """SubLN's inserted norm (plain x * w), where the model has one."""
        return self.norm(x, path, offset=False) if self.p.get(path + ".weight") is not None else x

    def heads(self, x: str, path: str, n: int, norm: str | None) -> str:
        """tokens (B * T, n * D) -> (B, n, T, D), with the per-head QK norm first where given."""
        g, d = self.g, self.cfg.head_dim
        x = g.op("Reshape", self.linear(x, path), self.shape(n, d))
        if norm is not None:
            x = self.norm(x, norm)
        return g.op("Transpose", x, perm=[0, 2, 1, 3])

    def attention(self, x: str, i: int, rope: tuple[str, str], mask: str) -> str:
        g, cfg = self.g, self.cfg
        pre = f"layers.{i}.self_attn."
        h, kv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q = self.heads(x, pre + "q_proj", h, pre + "q_norm")
        q = g.op("Reshape", q, g.const([0, kv, h // kv, -1, d], np.int64))
        k = g.op("Unsqueeze", self.heads(x, pre + "k_proj", kv, pre + "k_norm"), g.axes(2))
        v = g.op("Unsqueeze", self.heads(x, pre + "v_proj", kv, None), g.axes(2))
        if cfg.arch == "gemma3":
            scale = (cfg.query_pre_attn_scalar or cfg.head_dim) ** -0.5
        else:
            scale = cfg.head_dim ** -0.5
        out = gqa_attention(g, apply_rope(g, q, *rope), apply_rope(g, k, *rope), v, mask, scale, h, d)
        return self.linear(self.subln(out, pre + "o_norm"), pre + "o_proj")

    def mlp(self, x: str, i: int) -> str:
        g, pre = self.g, f"layers.{i}.mlp."
        gate = self.linear(x, pre + "gate_proj")
        if self.cfg.arch == "gemma3":
            act = g.op("Gelu", gate, approximate="tanh")
        else:
            act = g.op("Mul", gate, g.op("Sigmoid", gate))
        h = g.op("Mul", act, self.linear(x, pre + "up_proj"))
        return self.linear(self.subln(h, pre + "down_norm"), pre + "down_proj")

    def layer(self, x: str, i: int, rope, mask) -> str:
        g, pre = self.g, f"layers.{i}."
        if self.cfg.arch == "gemma3":
            a = self.norm(self.attention(self.norm(x, pre + "input_layernorm"), i, rope, mask),
                          pre + "post_attention_layernorm")
            x = g.op("Add", x, a)
            m = self.mlp(self.norm(x, pre + "pre_feedforward_layernorm"), i)
            return g.op("Add", x, self.norm(m, pre + "post_feedforward_layernorm"))
        x = g.op("Add", x, self.attention(self.norm(x, pre + "input_layernorm"), i, rope, mask))
        return g.op("Add", x, self.mlp(self.norm(x, pre + "post_attention_layernorm"), i))

    def tables(self, ids: str, attention_mask: str) -> tuple[dict, dict]:
        """({layer kind: (cos, sin)}, {layer kind: boolean mask}) as ``models.encoder.Encoder`` makes them."""
        g, cfg = self.g, self.cfg
        t = g.op("Squeeze", g.op("Shape", ids, start=1, end=2), g.axes(0))
        pos = g.op("Range", g.const(0, np.int64), t, g.const(1, np.int64))
        posf = g.op("Unsqueeze", g.op("Cast", pos, to=TensorProto.FLOAT), g.axes(1))
        valid = g.op("Unsqueeze", g.op("Cast", attention_mask, to=TensorProto.BOOL), g.axes(1, 2, 3))
        causal = cfg.attention == "causal"
        kinds = {"full_attention": (rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_factor), None)}
        if "sliding_attention" in cfg.layer_types:
            kinds["sliding_attention"] = (rope_inv_freq(cfg.head_dim, cfg.rope_local_theta), cfg.sliding_window)
        ropes, masks = {}, {}
        for kind, (inv_freq, window) in kinds.items():
            ropes[kind] = rope_tables(g, posf, np.asarray(inv_freq))
            allowed = position_mask(g, pos, causal=causal, window=window)
            masks[kind] = valid if allowed is None else g.op("And", allowed, valid)
        return ropes, masks

    def pool(self, hidden: str, attention_mask: str) -> str:
        """``models.pooling.pool``: the last real token's state (a one-hot matmul, exact) or the masked mean;
        then L2 normalisation."""
        g = self.g
        mask = g.op("Cast", attention_mask, to=TensorProto.INT32)
        if self.cfg.pooling == "last":
            last = g.op("ArgMax", mask, axis=1, keepdims=1, select_last_index=1)  # (B, 1)
            t = g.op("Shape", attention_mask, start=1, end=2)
            pos = g.op("Range", g.const(0, np.int64), g.op("Squeeze", t, g.axes(0)), g.const(1, np.int64))
            onehot = g.op("Cast", g.op("Equal", g.op("Unsqueeze", pos, g.axes(0)), last), to=TensorProto.FLOAT)
            v = g.op("Squeeze", g.op("MatMul", g.op("Unsqueeze", onehot, g.axes(1)), hidden), g.axes(1))
        else:
            m = g.op("Unsqueeze", g.op("Cast", mask, to=TensorProto.FLOAT), g.axes(2))
            total = g.op("ReduceSum", g.op("Mul", hidden, m), g.axes(1), keepdims=0)
            v = g.op("Div", total, g.op("Max", g.op("ReduceSum", m, g.axes(1), keepdims=0), g.const(1.0)))
        norm = g.op("ReduceL2", v, g.axes(-1), keepdims=1)
        return g.op("Div", v, g.op("Max", norm, g.const(1e-12)))

    def embed(self, ids: str) -> str:
        """The token embeddings of ``ids`` (B, T, ...; the caller reshapes them to tokens): float32 rows, or
        int8 / int4 codes times their float16 scale per block of ``embedding_block`` values, gathered and then
        dequantized (``quant.packing.int8_blocks`` / ``int4_blocks``: two int4 codes per byte, split after
        the Gather)."""
        g, table = self.g, self.p["embed_tokens.embedding"]
        if self.embeddings == "float32":
            return g.op("Gather", g.tensor(table, "embed_tokens.embedding"), ids)
        block = self.embedding_block
        if self.embeddings == "int8":
            codes, scale = int8_blocks(table, block, np.float16)
            digits = g.op("Cast", g.op("Gather", g.tensor(codes, "embed_tokens.int8"), ids), to=TensorProto.FLOAT)
        else:
            packed, scale = int4_blocks(table, block, np.float16)
            pairs = g.op("BitShift", g.op("Unsqueeze", g.op("Gather", g.tensor(packed, "embed_tokens.int4"), ids),
                                          g.axes(-1)), g.const([0, 4], np.uint8), direction="RIGHT")
            nibbles = g.op("Cast", g.op("BitwiseAnd", pairs, g.const(15, np.uint8)), to=TensorProto.FLOAT)
            digits = g.op("Sub", nibbles, g.const(8.0))  # (B, T, H / 2, 2): element 2j, 2j + 1
        blocks = g.op("Reshape", digits, g.const([0, 0, -1, block], np.int64))  # (B, T, H / block, block)
        scales = g.op("Cast", g.op("Gather", g.tensor(scale[:, :, None], "embed_tokens.block_scale"), ids),
                      to=TensorProto.FLOAT)
        return g.op("Mul", blocks, scales, hint="embedding_rows")

    def encoder(self, ids: str, attention_mask: str) -> tuple[str, str]:
        g, cfg = self.g, self.cfg
        self.batch_shape = g.op("Shape", ids)
        x = g.op("Reshape", self.embed(ids), g.const([-1, cfg.hidden_size], np.int64))
        if cfg.arch == "gemma3":
            # HF casts the scale to the embedding dtype before multiplying
            x = g.op("Mul", x, g.const(np.float32(cfg.hidden_size ** 0.5)))
        ropes, masks = self.tables(ids, attention_mask)
        for i in range(cfg.num_layers):
            kind = cfg.layer_type(i)
            x = self.layer(x, i, ropes[kind], masks[kind])
        hidden = g.op("Reshape", self.norm(x, "norm"), self.shape(cfg.hidden_size))
        return hidden, self.pool(hidden, attention_mask)


def build_onnx(model, cfg, *, doc: str = "", embeddings: str = "float32",
               embedding_block: int = 32) -> onnx.ModelProto:
    """The ONNX model of ``model`` (a bitembed-jax encoder with config ``cfg``), unchecked; ``embeddings``:
    "float32" (exact), or "int8" / "int4": token embeddings as codes with a float16 scale per block of
    ``embedding_block`` values of a row (an approximation, see ``embed``)."""
    g = Graph()
    hidden, pooled = _Builder(g, cfg, Params(model), embeddings, embedding_block).encoder(*INPUTS)
    for src, name in zip((hidden, pooled), OUTPUTS):
        g.nodes.append(helper.make_node("Identity", [src], [name], name=name))
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch_size", "sequence_length"]) for n in INPUTS]
    outputs = [
        helper.make_tensor_value_info(OUTPUTS[0], TensorProto.FLOAT, ["batch_size", "sequence_length",
                                                                      cfg.hidden_size]),
        helper.make_tensor_value_info(OUTPUTS[1], TensorProto.FLOAT, ["batch_size", cfg.hidden_size]),
    ]
    graph = helper.make_graph(g.nodes, "bitembed_encoder", inputs, outputs, g.initializers, doc_string=doc)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
                              producer_name="bitembed-jax")
    proto.ir_version = IR_VERSION
    helper.set_model_props(proto, {"mode": cfg.mode, "act_bits": str(cfg.act_bits), "norm": cfg.norm,
                                   "pooling": cfg.pooling, "arch": cfg.arch})
    return proto
