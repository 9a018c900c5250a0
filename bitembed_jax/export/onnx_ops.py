"""ONNX building blocks of the encoder graph, written with ``onnx.helper``: each function adds the nodes of one
piece of the JAX model (``layers/norms.py``, ``quant/activation.py``, ``quant/bitmatmul.py``,
``models/attention.py``) and returns the name of its output.

Every formula follows its JAX twin (the same roundings and clips): the float differences are those of evaluation
order, and an activation code differs from JAX's only where a value lies within an ulp of a rounding boundary.
Activations are float32 throughout.
"""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from bitembed_jax.quant.packing import pack_int2

F32 = TensorProto.FLOAT
MS_DOMAIN = "com.microsoft"  # ONNX Runtime's contrib operators
# the uint8 zero point of the activation codes: MatMulInteger's fast kernel is uint8 x int8
ZERO_POINT = 128


class Graph:
    """Nodes and initializers of one graph, with unique names and shared scalar constants."""

    def __init__(self):
        self.nodes, self.initializers = [], []
        self._count = 0
        self._consts = {}
        self.cache = {}  # values computed once per input (see rms)

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def op(self, op_type: str, *inputs: str, hint: str | None = None, outputs: int = 1, **attrs):
        """Add one node; returns its output name (a list of names when ``outputs`` > 1)."""
        base = self._name(hint or op_type.lower())
        names = [base] if outputs == 1 else [f"{base}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=base, **attrs))
        return names[0] if outputs == 1 else names

    def tensor(self, array: np.ndarray, name: str) -> str:
        """An initializer named after its parameter path (weights keep readable names)."""
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const(self, value, dtype=np.float32) -> str:
        """A shared constant (scalar or small vector) of ``dtype``."""
        array = np.asarray(value, dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            self._consts[key] = self.tensor(array, self._name("const"))
        return self._consts[key]

    def axes(self, *axes: int) -> str:
        return self.const(list(axes), np.int64)


def rms_norm(g: Graph, x: str, weight: np.ndarray, eps: float, offset: bool, name: str) -> str:
    """x / sqrt(mean(x^2) + eps) * w, w = 1 + weight for Gemma's offset norms (added in float32 as JAX does).

    Written as Pow -> ReduceMean -> Add -> Sqrt -> Div -> Mul, the pattern ONNX Runtime fuses into its
    SimplifiedLayerNormalization kernel."""
    w = np.asarray(weight, np.float32)
    w = (np.float32(1.0) + w).astype(np.float32) if offset else w
    ms = g.op("ReduceMean", g.op("Pow", x, g.const(2.0)), g.axes(-1), keepdims=1)
    y = g.op("Div", x, g.op("Sqrt", g.op("Add", ms, g.const(eps))))
    return g.op("Mul", y, g.tensor(w, name + ".weight"))


def rms(g: Graph, x: str, eps: float, dim: int) -> str:
    """sqrt(mean(x^2) + eps) per token (N, 1): one ReduceSumSquare pass, made once per (x, eps) and shared by
    the linears that read the same tokens (q/k/v, gate/up)."""
    key = ("rms", x, eps)
    if key not in g.cache:
        ms = g.op("Div", g.op("ReduceSumSquare", x, g.axes(-1), keepdims=1), g.const(float(dim)))
        g.cache[key] = g.op("Sqrt", g.op("Add", ms, g.const(eps)))
    return g.cache[key]


def ternary_weight(g: Graph, codes: np.ndarray, name: str) -> str:
    """The int8 ternary codes (in, out) as a graph value: an ONNX INT2 initializer (``quant.packing.pack_int2``:
    2 bits per weight in the file) and one Cast to int8. Its input is an initializer, so ONNX Runtime's
    constant folding casts it once, at session load (every optimization level but ORT_DISABLE_ALL), and the
    integer matmul pre-packs the result. One node, not a BitShift / BitwiseAnd / Cast / Sub / Reshape chain:
    the folding pass keeps every intermediate until it ends, which raised the load's peak memory by ~430 MB on
    Gemma3-270M."""
    codes = np.asarray(codes, np.int8)
    packed = helper.make_tensor(name + ".codes_int2", TensorProto.INT2, codes.shape, pack_int2(codes).tobytes(),
                                raw=True)
    g.initializers.append(packed)
    return g.op("Cast", packed.name, to=TensorProto.INT8)


def ternary_matmul(g: Graph, x: str, lin: dict, bits: int, eps: float, norm_eps: float, name: str) -> str:
    """``layers.bitlinear`` on tokens x (N, in): [per-linear RMSNorm], then ``quant.bitmatmul.code_matmul``:
    (Qx @ Qw) / s * gamma, Qx @ Qw exact in int32.

    The per-linear norm is x / r * w with one scalar r per token, so the absmax codes of the normed tokens are
    those of x * w with the code step multiplied by r: no normed tensor is written, and r (N, 1) goes into
    the step. One per-token QuantizeLinear (axis 0, scale step * r) divides, rounds half to even as jnp.round
    does, shifts and casts in a single pass; its saturation to [0, 255] is the clip, which never binds.
    ``MatMulIntegerToFloat`` (ORT's contrib op, uint8 x int8, its fast integer kernel) multiplies and
    rescales by step (N, 1) * gamma (scalar or per output) in one kernel. The float operations run in another
    order than JAX's, so a value within an ulp of a rounding boundary may get the neighbouring code."""
    qb = 2 ** (bits - 1) - 1
    norm = lin.get("norm")
    if norm is not None:
        r = rms(g, x, norm_eps, len(norm))
        x = g.op("Mul", x, g.tensor(np.asarray(norm, np.float32), name + ".norm.weight"))
    amax = g.op("Max", g.op("ReduceMax", x, g.axes(-1), keepdims=1),
                g.op("Neg", g.op("ReduceMin", x, g.axes(-1), keepdims=1)))
    if norm is not None:
        amax = g.op("Div", amax, r)
    step = g.op("Div", g.op("Max", amax, g.const(eps)), g.const(float(qb)))
    x_step = g.op("Reshape", step if norm is None else g.op("Mul", step, r), g.const([-1], np.int64))
    if "zero_points" not in g.cache:  # every linear quantizes the same N tokens
        g.cache["zero_points"] = g.op("Expand", g.const(ZERO_POINT, np.uint8), g.op("Shape", x_step))
    qx = g.op("QuantizeLinear", x, x_step, g.cache["zero_points"], axis=0)
    gamma = np.asarray(lin["gamma"], np.float32)
    gamma = g.tensor(gamma.reshape(() if gamma.size == 1 else (-1,)), name + ".scale")
    return g.op("MatMulIntegerToFloat", qx, ternary_weight(g, lin["codes"], name), step, gamma,
                g.const(ZERO_POINT, np.uint8), domain=MS_DOMAIN)


def linear(g: Graph, x: str, lin: dict, *, act_bits: int, act_eps: float, norm_eps: float, name: str) -> str:
    """One BitLinear (``layers/bitlinear.py``) on tokens x (N, in): [per-linear RMSNorm], ternary codes or
    fp32 matmul, [bias].

    ``lin``: {"kernel": float32 (in, out)} for fp, or {"codes", "gamma"} for ternary, plus optional
    "norm" (the inserted RMSNorm's weight) and "bias"."""
    if "codes" in lin:
        y = ternary_matmul(g, x, lin, act_bits, act_eps, norm_eps, name)
    else:
        if lin.get("norm") is not None:
            x = rms_norm(g, x, lin["norm"], norm_eps, False, name + ".norm")
        y = g.op("MatMul", x, g.tensor(np.asarray(lin["kernel"], np.float32), name + ".kernel"))
    if lin.get("bias") is not None:
        y = g.op("Add", y, g.tensor(np.asarray(lin["bias"], np.float32), name + ".bias"))
    return y


def rope_tables(g: Graph, positions: str, inv_freq: np.ndarray) -> tuple[str, str]:
    """cos (T, head_dim) of ``models.attention.rope_cos_sin`` and its sin with the first half negated
    (rotate_half's sign, moved from every q and k onto the table: exact); ``positions`` float32 (T, 1)."""
    freqs = g.op("Mul", positions, g.tensor(np.asarray(inv_freq, np.float32)[None, :], g._name("inv_freq")))
    sin = g.op("Sin", freqs)
    return g.op("Cos", g.op("Concat", freqs, freqs, axis=-1)), g.op("Concat", g.op("Neg", sin), sin, axis=-1)


def apply_rope(g: Graph, x: str, cos: str, signed_sin: str) -> str:
    """x * cos + rotate_half(x) * sin over the last axis (HF's rotate-half layout: rotate_half(x) * sin =
    [x2, x1] * [-sin, sin])."""
    x1, x2 = g.op("Split", x, axis=-1, num_outputs=2, outputs=2)
    return g.op("Add", g.op("Mul", x, cos), g.op("Mul", g.op("Concat", x2, x1, axis=-1), signed_sin))


def position_mask(g: Graph, positions: str, *, causal: bool, window: int | None) -> str | None:
    """Boolean (T, T) of ``models.attention.attention_mask``'s position part (None: every key allowed):
    causal q - window < k <= q, bidirectional |q - k| < window."""
    q = g.op("Unsqueeze", positions, g.axes(1))
    k = g.op("Unsqueeze", positions, g.axes(0))
    if causal:
        allowed = g.op("LessOrEqual", k, q)
        if window is not None:
            allowed = g.op("And", allowed, g.op("Greater", k, g.op("Sub", q, g.const(window, np.int64))))
        return allowed
    if window is not None:
        return g.op("Less", g.op("Abs", g.op("Sub", q, k)), g.const(window, np.int64))
    return None


def gqa_attention(g: Graph, q: str, k: str, v: str, mask: str, scale: float, num_heads: int,
                  head_dim: int) -> str:
    """softmax(q k^T * scale, masked) v for grouped queries, as ``models.attention.gqa_attention``.

    q: (B, Hkv, rep, T, D); k, v: (B, Hkv, 1, T, D) (broadcast over the rep query heads of each kv head
    instead of repeated: query head h = g * rep + r reads kv head g, as jnp.repeat does); mask: bool,
    broadcastable to (B, Hkv, rep, T, T); masked logits become float32's min, as in JAX. Returns the
    tokens (B * T, H * D)."""
    logits = g.op("Mul", g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 2, 4, 3])), g.const(scale))
    logits = g.op("Where", mask, logits, g.const(np.finfo(np.float32).min))
    out = g.op("MatMul", g.op("Softmax", logits, axis=-1), v)
    out = g.op("Transpose", g.op("Reshape", out, g.const([0, num_heads, -1, head_dim], np.int64)), perm=[0, 2, 1, 3])
    return g.op("Reshape", out, g.const([-1, num_heads * head_dim], np.int64))
