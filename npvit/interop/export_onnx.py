"""A model as an ONNX graph, built from its weights with the ``onnx`` package (no torch), opset 17.

The graph is the forward pass in evaluation mode, node by node:

    images (batch, S, S, C) float32, normalised as the model takes them (channels last, as npvit)
    patches: Transpose to (B, C, S, S), Conv with kernel K = P + 2 O, stride P, pads O (the patch projection
             W (K K C, D) re-indexed to (D, C, K, K)), Reshape + Transpose to (B, N, D)
    or CCT's tokenizer: Transpose to (B, C, S, S); per layer Conv 3x3, pads 1, no bias (W (3, 3, Ci, Co) as
             (Co, Ci, 3, 3)), Relu, MaxPool 3, strides 2, pads 1; Reshape + Transpose to (B, N, C), [MatMul + Add]
    [class token Expand-ed to (B, 1, D), Concat in front], Add pos_embed
    per block: LayerNormalization; MatMul + Add to [Q|K|V], Reshape (B, T, 3, H, d), Transpose, Gather q, k, v;
               Softmax((q / sqrt d) k^T) v; Transpose + Reshape, MatMul + Add; Add the residual;
               LayerNormalization, the MLP (MatMul + Add, GELU where the arrangement has one), Add
    final LayerNormalization (on every token, or after the pooling with fc_norm); pool: Reshape (flatten),
    Gather token 0 (cls), ReduceMean over the patch tokens (gap) or CCT's sequence pooling (seq: MatMul by g,
    Softmax over the tokens, MatMul of the weights and the tokens); the head's MatMul + Add (GELU between)
    logits (batch, num_classes)

GELU is written out, 0.5 x (1 + Erf(x / sqrt 2)) or the tanh form (opset 17 has no Gelu operator). The batch
dimension is dynamic. The file's metadata ("npvit") holds the config and the preprocessing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..backend import to_numpy
from ..config import ViTConfig
from .errors import require

OPSET = 17
IR_VERSION = 8  # the IR of opset 17, so that runtimes of that generation read the file


class _Graph:
    """Nodes and initializers, each value under a fresh name."""

    def __init__(self, helper: Any, numpy_helper: Any) -> None:
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list = []
        self.initializers: list = []
        self.used: set[str] = set()
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, value: Any, hint: str, dtype: Any = np.float32) -> str:
        name = self.name(hint) if hint in self.used else hint
        self.used.add(name)
        self.initializers.append(self.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs: Any) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], **attrs))
        return out


def onnx_model(params: dict[str, Any], cfg: ViTConfig, metadata: dict[str, str] | None = None) -> Any:
    """The ``onnx.ModelProto`` of a model with ``params`` (npvit names and layouts) and config ``cfg``."""
    require("onnx", "exporting .onnx files")
    from onnx import TensorProto, helper, numpy_helper

    g = _Graph(helper, numpy_helper)
    w = {n: to_numpy(p).astype(np.float32) for n, p in params.items()}
    t = _conv_tokenizer(g, w, cfg) if cfg.tokenizer == "conv" else _patch_embed(g, w, cfg)  # (B, N, D)
    if cfg.has_class_token:
        batch = g.op("Shape", ["images"], start=0, end=1)  # (1,) the batch size
        shape = g.op("Concat", [batch, g.const([1, cfg.dim], "shape_1d", np.int64)], axis=0)
        cls = g.op("Expand", [g.const(w["cls_token"].reshape(1, 1, cfg.dim), "cls_token"), shape])
        t = g.op("Concat", [cls, t], axis=1)  # (B, T, D)
    t = g.op("Add", [t, g.const(w["pos_embed"], "pos_embed")])
    for i in range(cfg.depth):
        t = _block(g, w, cfg, t, f"blocks.{i}")
    norm = "fc_norm" if cfg.fc_norm else "norm"
    if not cfg.fc_norm:
        t = _layernorm(g, w, cfg, t, norm)
    if cfg.pool == "flatten":
        pooled = g.op("Reshape", [t, g.const([0, -1], "shape_flat", np.int64)])
    elif cfg.pool == "cls":
        pooled = g.op("Gather", [t, g.const(0, "index_0", np.int64)], axis=1)
    elif cfg.pool == "seq":  # softmax over the tokens of t g, then the weighted sum of the tokens
        weights = g.op("Softmax", [g.op("MatMul", [t, g.const(w["attention_pool.w"], "attention_pool.w")])],
                       axis=1)  # (B, T, 1)
        pooled = g.op("MatMul", [g.op("Transpose", [weights], perm=[0, 2, 1]), t])  # (B, 1, D)
        pooled = g.op("Reshape", [pooled, g.const([0, -1], "shape_pooled", np.int64)])  # (B, D)
    else:
        if cfg.has_class_token:  # the patch tokens only
            t = g.op("Slice", [t, g.const([1], "start_1", np.int64), g.const([cfg.num_tokens], "end_t", np.int64),
                               g.const([1], "axis_1", np.int64)])
        pooled = g.op("ReduceMean", [t], axes=[1], keepdims=0)
    if cfg.fc_norm:
        pooled = _layernorm(g, w, cfg, pooled, norm)
    h = pooled
    for j in range(len(cfg.head_units)):
        h = _gelu(g, _dense(g, w, h, f"head.fc{j}"), cfg.gelu)
    logits = _dense(g, w, h, "head.out")
    g.nodes.append(helper.make_node("Identity", [logits], ["logits"]))

    graph = helper.make_graph(
        g.nodes, "npvit_vit",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                       ["batch", cfg.image_size, cfg.image_size, cfg.channels])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", cfg.num_classes])],
        initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="npvit", doc_string="Vision Transformer exported by npvit")
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model  # onnx.checker passes it (tests/interop); checking here would cost seconds on a large model


def _patch_embed(g: _Graph, w: dict, cfg: ViTConfig) -> str:
    k, o = cfg.patch_window, cfg.patch_overlap
    # The patch projection as a convolution: row (i K + j) C + c of W is kernel[:, c, i, j]
    kernel = w["patch_embed.proj.w"].reshape(k, k, cfg.channels, cfg.dim).transpose(3, 2, 0, 1)
    x = g.op("Transpose", ["images"], perm=[0, 3, 1, 2])  # (B, C, S, S)
    x = g.op("Conv", [x, g.const(kernel, "patch_embed.proj.weight"), g.const(w["patch_embed.proj.b"],
             "patch_embed.proj.bias")], kernel_shape=[k, k], strides=[cfg.patch_size] * 2, pads=[o] * 4)
    x = g.op("Reshape", [x, g.const([0, cfg.dim, -1], "shape_bdn", np.int64)])  # (B, D, N)
    return g.op("Transpose", [x], perm=[0, 2, 1])  # (B, N, D)


def _conv_tokenizer(g: _Graph, w: dict, cfg: ViTConfig) -> str:
    x = g.op("Transpose", ["images"], perm=[0, 3, 1, 2])  # (B, C, S, S)
    for i in range(len(cfg.conv_channels)):
        name = f"tokenizer.conv{i}.w"
        kernel = w[name].transpose(3, 2, 0, 1)  # (3, 3, Ci, Co) -> (Co, Ci, 3, 3)
        x = g.op("Conv", [x, g.const(kernel, name)], kernel_shape=[3, 3], strides=[1, 1], pads=[1] * 4)
        x = g.op("MaxPool", [g.op("Relu", [x])], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    x = g.op("Reshape", [x, g.const([0, cfg.conv_channels[-1], -1], "shape_bcn", np.int64)])  # (B, C, N)
    t = g.op("Transpose", [x], perm=[0, 2, 1])  # (B, N, C)
    return _dense(g, w, t, "tokenizer.proj") if cfg.tokenizer_projects else t


def _dense(g: _Graph, w: dict, x: str, prefix: str) -> str:
    return g.op("Add", [g.op("MatMul", [x, g.const(w[f"{prefix}.w"], f"{prefix}.w")]),
                        g.const(w[f"{prefix}.b"], f"{prefix}.b")])


def _layernorm(g: _Graph, w: dict, cfg: ViTConfig, x: str, prefix: str) -> str:
    return g.op("LayerNormalization", [x, g.const(w[f"{prefix}.gamma"], f"{prefix}.gamma"),
                                       g.const(w[f"{prefix}.beta"], f"{prefix}.beta")],
                axis=-1, epsilon=float(cfg.ln_eps))


def _gelu(g: _Graph, x: str, kind: str) -> str:
    half = g.const(0.5, g.name("half"))
    one = g.const(1.0, g.name("one"))
    if kind == "erf":  # x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))
        inner = g.op("Erf", [g.op("Mul", [x, g.const(1.0 / math.sqrt(2.0), g.name("inv_sqrt2"))])])
    else:  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = g.op("Mul", [g.op("Mul", [x, x]), x])
        u = g.op("Add", [x, g.op("Mul", [cube, g.const(0.044715, g.name("c"))])])
        inner = g.op("Tanh", [g.op("Mul", [u, g.const(math.sqrt(2.0 / math.pi), g.name("sqrt_2_pi"))])])
    return g.op("Mul", [g.op("Mul", [x, half]), g.op("Add", [inner, one])])


def _block(g: _Graph, w: dict, cfg: ViTConfig, t: str, p: str) -> str:
    heads, d = cfg.num_heads, cfg.key_dim
    h = _layernorm(g, w, cfg, t, f"{p}.norm1")
    qkv = _dense(g, w, h, f"{p}.attn.qkv")  # (B, T, 3 H d), columns (q|k|v, head, feature)
    qkv = g.op("Reshape", [qkv, g.const([0, 0, 3, heads, d], g.name("shape_qkv"), np.int64)])
    qkv = g.op("Transpose", [qkv], perm=[2, 0, 3, 1, 4])  # (3, B, H, T, d)
    q, k, v = (g.op("Gather", [qkv, g.const(j, g.name("index"), np.int64)], axis=0) for j in range(3))
    q = g.op("Mul", [q, g.const(1.0 / math.sqrt(d), g.name("scale"))])
    scores = g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])])  # (B, H, T, T)
    o = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])  # (B, H, T, d)
    o = g.op("Reshape", [g.op("Transpose", [o], perm=[0, 2, 1, 3]),
                         g.const([0, 0, heads * d], g.name("shape_heads"), np.int64)])
    t = g.op("Add", [t, _dense(g, w, o, f"{p}.attn.proj")])
    h = _layernorm(g, w, cfg, t, f"{p}.norm2")
    units = len(cfg.mlp_units)
    for j in range(units):
        h = _dense(g, w, h, f"{p}.mlp.fc{j}")
        if cfg.arrangement != "timm" or j < units - 1:
            h = _gelu(g, h, cfg.gelu)
    return g.op("Add", [t, h])
