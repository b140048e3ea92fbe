"""Last-layer pruning: compute the final encoder layer for the first token only.

A sequence-classification head reads one position of the last hidden state: ``[CLS]`` (BERT's
pooler, ELECTRA's and RoBERTa/XLM-R's classification heads all take ``hidden[:, 0]``). Every op
of a transformer layer after its attention is position-wise, and the attention's output row 0
needs only the query of row 0 (plus the keys and values of every row). So the last layer can
project the query, run the output projection, both layer norms and the whole feed-forward block
for one row per sequence instead of all of them. Keys and values still cover every token, so for
MiniLM-L6 the weight products per token drop from 10.6 M to 9.1 M multiply-adds (14%), with the
same scores up to float rounding (the export validates every variant against PyTorch).

:func:`prune_last_layer` rewrites a graph fused by onnxruntime's transformer optimizer when it
has exactly this shape, and otherwise leaves the graph alone and says why:

- the graph's one consumer of the last hidden state is ``Gather(axis=1, indices=0)``;
- between that Gather and the last fused ``Attention`` node there are only position-wise ops
  (:data:`ROW_WISE_OPS`, weight ``MatMul`` s, constant-operand arithmetic), fed by nothing but
  constants, that Attention's output and the Attention's own input (the residual);
- the Attention is the plain BERT form: input, packed Q/K/V weights and bias, a padding mask
  derived from the graph's ``attention_mask`` input (directly, through ``Cast``/``ReduceSum``, or
  as ``EmbedLayerNormalization``'s mask index), a filter value of at most -10000, no past state,
  no rotary or unidirectional options.

The Attention is replaced by standard ONNX ops (so the graph stays valid for every execution
provider and for the fp16 converter): the query projection of row 0, one packed key/value
projection of all rows, ``softmax(q k^T * scale + mask) v`` per head for the one query row, where
the mask adds -10000 at positions where ``attention_mask`` is 0 (exp of it underflows to exactly 0
in fp32, as the fused kernel's filter value of -10000 or below does, and the constant stays finite in
fp16). Like onnxruntime's mask index, which counts the valid tokens of each row, this assumes the
padding is on the right, as the crossrank runtime pads. The residual input of the pruned region is
sliced to row 0, so the Gather reads a ``[batch, 1, hidden]`` tensor. New nodes are placed in
topological order (the original order is kept wherever it already was one).
"""
from __future__ import annotations

import heapq
from collections import defaultdict
from typing import Any

import numpy as np

__all__ = ["prune_last_layer", "ROW_WISE_OPS"]

# Ops that act on each position independently (given constant or per-position operands).
ROW_WISE_OPS = frozenset({
    "SkipLayerNormalization", "LayerNormalization", "SkipSimplifiedLayerNormalization",
    "SimplifiedLayerNormalization", "BiasGelu", "Gelu", "FastGelu", "QuickGelu", "Relu", "Tanh", "Erf",
    "Sigmoid", "MatMul", "Add", "Sub", "Mul", "Div", "Cast", "Identity",
})
_ATTENTION_ATTRS = {"num_heads", "mask_filter_value", "scale"}
MASK_BIAS = 10000.0  # added as -10000 at padded key positions (finite in fp16; exp() of it is 0 in fp32)


def prune_last_layer(model: Any, *, mask_input: str = "attention_mask") -> tuple[bool, str]:
    """Rewrite ``model`` (an ``onnx.ModelProto``, in place) as the module docstring says.

    Returns ``(True, summary)`` when the graph was rewritten, else ``(False, reason)`` with the
    graph untouched.
    """
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    const_nodes = {n.output[0]: n for n in g.node if n.op_type == "Constant" and n.output}
    producer: dict[str, Any] = {}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for n in g.node:
        for o in n.output:
            producer[o] = n
        for i in n.input:
            if i:
                consumers[i].append(n)
    graph_outputs = {o.name for o in g.output}

    def is_const(name: str) -> bool:
        return name in inits or name in const_nodes

    def const_value(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        node = const_nodes.get(name)
        if node is not None:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    if mask_input not in {i.name for i in g.input}:
        return False, f"the graph has no {mask_input!r} input"
    opset = max((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), default=0)
    if opset < 13:
        return False, f"the graph's opset {opset} is below 13 (Split/Unsqueeze with tensor operands)"

    # 1. the head's read of position 0 of the last hidden state
    gathers = []
    for n in g.node:
        if n.op_type != "Gather" or n.domain not in ("", "ai.onnx"):
            continue
        axis = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), 0)
        idx = const_value(n.input[1])
        if axis == 1 and idx is not None and idx.size == 1 and int(idx.reshape(-1)[0]) == 0:
            gathers.append(n)
    if len(gathers) != 1:
        return False, f"expected one Gather of position 0 on axis 1 (the classification head's [CLS] read), found {len(gathers)}"
    gather = gathers[0]
    last = gather.input[0]
    if last in graph_outputs or len(consumers[last]) != 1 or last not in producer:
        return False, "the last hidden state has other readers than the head's [CLS] Gather"

    # 2. the last fused Attention upstream of the head (nodes are in topological order)
    ancestors: set[int] = set()
    stack = [producer[last]]
    while stack:
        node = stack.pop()
        if id(node) not in ancestors:
            ancestors.add(id(node))
            stack.extend(producer[i] for i in node.input if i in producer)
    attentions = [n for n in g.node if id(n) in ancestors and n.op_type == "Attention" and n.domain == "com.microsoft"]
    if not attentions:
        return False, "no fused Attention node precedes the head (onnxruntime did not fuse this model's attention)"
    attention = attentions[-1]
    x, att_out = attention.input[0], attention.output[0]

    # walk back from the head to that Attention's output and input through position-wise ops only
    region: list[Any] = []
    seen: set[int] = set()
    stack = [producer[last]]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type not in ROW_WISE_OPS:
            return False, f"{node.op_type} node {node.name!r} between the last Attention and the head is not position-wise"
        if node.op_type in ("LayerNormalization", "SimplifiedLayerNormalization"):
            axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), -1)
            if axis != -1:
                return False, f"{node.op_type} node {node.name!r} normalizes over axis {axis}, not the last one"
        if node.op_type == "MatMul" and (node.input[1] not in inits or len(inits[node.input[1]].dims) != 2):
            return False, f"MatMul {node.name!r} in the last layer has a non-constant or non-2-D weight"
        for k, i in enumerate(node.input):
            if not i or not is_const(i) or (node.op_type == "MatMul" and k == 1):
                continue
            value = const_value(i)
            if value is not None and value.ndim > 1 and any(d != 1 for d in value.shape[:-1]):
                # e.g. a per-position constant: it would not broadcast over one row
                return False, f"{node.op_type} node {node.name!r} in the last layer has a constant of shape {list(value.shape)}"
        region.append(node)
        for i in node.input:
            if i and i not in (x, att_out) and not is_const(i) and i in producer:
                stack.append(producer[i])
    if not any(att_out in n.input for n in region):
        return False, "the last Attention's output does not reach the head through position-wise ops"

    # 3. the Attention must be the plain BERT form
    attrs = {a.name: helper.get_attribute_value(a) for a in attention.attribute}
    if set(attrs) - _ATTENTION_ATTRS:
        return False, f"the last Attention has options this rewrite does not handle: {sorted(set(attrs) - _ATTENTION_ATTRS)}"
    ins = list(attention.input)
    if len(ins) > 4 or len(ins) < 3 or len(attention.output) != 1:
        return False, "the last Attention has past/extra inputs or outputs"
    if len(ins) < 4 or not ins[3] or not _derives_from(ins[3], mask_input, producer):
        return False, f"the last Attention's mask is not derived from the {mask_input!r} input"
    if float(attrs.get("mask_filter_value", -10000.0)) > -MASK_BIAS:
        return False, f"the last Attention's mask_filter_value {attrs['mask_filter_value']} is above -{MASK_BIAS:g}"
    w_name, b_name = ins[1], ins[2]
    w, b = const_value(w_name), const_value(b_name)
    heads = int(attrs.get("num_heads", 0))
    if w is None or b is None or w.ndim != 2 or w.shape[1] % 3 or b.shape != (w.shape[1],) or heads < 1:
        return False, "the last Attention's Q/K/V weights are not packed constants"
    hidden = w.shape[1] // 3
    if hidden % heads:
        return False, f"hidden size {hidden} is not a multiple of num_heads {heads}"
    head_dim = hidden // heads
    scale = float(attrs.get("scale", 0.0)) or 1.0 / float(np.sqrt(head_dim))

    # 4. everything entering the region is a constant, a region output, the Attention's output or x
    region_outputs = {o for n in region for o in n.output}
    for n in region:
        for i in n.input:
            if not i or i in region_outputs or i == att_out or i == x or is_const(i):
                continue
            return False, f"{n.op_type} node {n.name!r} in the last layer reads {i!r}, which is not per-position"
    for o in region_outputs | {att_out}:
        if o == last:
            continue
        if o in graph_outputs or any(id(c) not in seen for c in consumers[o]):
            return False, f"{o!r} of the last layer is also read outside it"

    # 5. rewrite
    p = attention.name or "last_attention"

    def name(s: str) -> str:
        return f"{p}/cls_only/{s}"

    new_inits = [
        numpy_helper.from_array(np.ascontiguousarray(w[:, :hidden]), name("q_weight")),
        numpy_helper.from_array(np.ascontiguousarray(b[:hidden]), name("q_bias")),
        numpy_helper.from_array(np.ascontiguousarray(w[:, hidden:]), name("kv_weight")),
        numpy_helper.from_array(np.ascontiguousarray(b[hidden:]), name("kv_bias")),
        numpy_helper.from_array(np.array([0], np.int64), name("zero")),
        numpy_helper.from_array(np.array([1], np.int64), name("one")),
        numpy_helper.from_array(np.array([0, 0, heads, head_dim], np.int64), name("heads_shape")),
        numpy_helper.from_array(np.array([0, 0, hidden], np.int64), name("hidden_shape")),
        numpy_helper.from_array(np.array([hidden, hidden], np.int64), name("kv_split")),
        numpy_helper.from_array(np.array(scale, np.float32), name("scale")),
        numpy_helper.from_array(np.array(1.0, np.float32), name("f_one")),
        numpy_helper.from_array(np.array(MASK_BIAS, np.float32), name("mask_bias")),
        numpy_helper.from_array(np.array([1, 2], np.int64), name("mask_axes")),
    ]
    x_cls = name("x_cls")
    taken = set(inits) | set(producer) | {i.name for i in g.input}
    if any(t.name in taken for t in new_inits) or any(k.startswith(f"{p}/cls_only/") for k in taken):
        return False, f"names under {p}/cls_only/ are already used in the graph"
    N = helper.make_node
    new_nodes = [
        N("Slice", [x, name("zero"), name("one"), name("one")], [x_cls], name=name("slice_row0")),
        N("MatMul", [x_cls, name("q_weight")], [name("q_mm")], name=name("q_matmul")),
        N("Add", [name("q_mm"), name("q_bias")], [name("q")], name=name("q_add")),
        N("MatMul", [x, name("kv_weight")], [name("kv_mm")], name=name("kv_matmul")),
        N("Add", [name("kv_mm"), name("kv_bias")], [name("kv")], name=name("kv_add")),
        N("Split", [name("kv"), name("kv_split")], [name("k"), name("v")], name=name("kv_split_node"), axis=-1),
        N("Reshape", [name("q"), name("heads_shape")], [name("q4")], name=name("q_reshape")),
        N("Transpose", [name("q4")], [name("qh")], name=name("q_transpose"), perm=[0, 2, 1, 3]),
        N("Reshape", [name("k"), name("heads_shape")], [name("k4")], name=name("k_reshape")),
        N("Transpose", [name("k4")], [name("kt")], name=name("k_transpose"), perm=[0, 2, 3, 1]),
        N("Reshape", [name("v"), name("heads_shape")], [name("v4")], name=name("v_reshape")),
        N("Transpose", [name("v4")], [name("vh")], name=name("v_transpose"), perm=[0, 2, 1, 3]),
        N("MatMul", [name("qh"), name("kt")], [name("qk")], name=name("scores")),
        N("Mul", [name("qk"), name("scale")], [name("qk_scaled")], name=name("scale_scores")),
        N("Cast", [mask_input], [name("mask_f")], name=name("mask_cast"), to=1),
        N("Sub", [name("mask_f"), name("f_one")], [name("mask_m1")], name=name("mask_sub")),
        N("Mul", [name("mask_m1"), name("mask_bias")], [name("mask_add2d")], name=name("mask_mul")),
        N("Unsqueeze", [name("mask_add2d"), name("mask_axes")], [name("mask_add")], name=name("mask_unsqueeze")),
        N("Add", [name("qk_scaled"), name("mask_add")], [name("logits")], name=name("mask_scores")),
        N("Softmax", [name("logits")], [name("probs")], name=name("softmax"), axis=-1),
        N("MatMul", [name("probs"), name("vh")], [name("ctx_h")], name=name("context")),
        N("Transpose", [name("ctx_h")], [name("ctx4")], name=name("ctx_transpose"), perm=[0, 2, 1, 3]),
        N("Reshape", [name("ctx4"), name("hidden_shape")], [att_out], name=name("ctx_reshape")),
    ]
    for n in region:
        for k, i in enumerate(n.input):
            if i == x:
                n.input[k] = x_cls
    # the new nodes where the Attention was, then a stable topological order (a region node that
    # reads x may come before that position)
    nodes = list(g.node)
    pos = nodes.index(attention)
    nodes[pos:pos + 1] = new_nodes
    del g.node[:]
    g.node.extend(_topological(nodes, {i.name for i in g.input} | set(inits) | {t.name for t in new_inits}))
    g.initializer.extend(new_inits)
    # shapes recorded for the pruned tensors said [batch, sequence, ...]: no longer true
    stale = region_outputs | {att_out}
    kept_info = [v for v in g.value_info if v.name not in stale]
    del g.value_info[:]
    g.value_info.extend(kept_info)
    # drop the packed weights when nothing else reads them
    for nm in (w_name, b_name):
        if nm in inits and nm not in graph_outputs and not any(nm in n.input for n in g.node):
            g.initializer.remove(inits[nm])
    return True, (
        f"last layer ({attention.name}) computed for position 0 only: {len(region)} position-wise nodes "
        f"on [batch, 1, {hidden}], attention for one query row over {heads} heads"
    )


def _derives_from(name: str, source: str, producer: dict[str, Any]) -> bool:
    """Whether tensor ``name`` is ``source`` itself, or made from it by Cast / ReduceSum or as
    EmbedLayerNormalization's mask index (its output 1, from its mask input 7)."""
    for _ in range(8):
        if name == source:
            return True
        node = producer.get(name)
        if node is None:
            return False
        if node.op_type in ("Cast", "ReduceSum") and node.input:
            name = node.input[0]
        elif node.op_type == "EmbedLayerNormalization" and len(node.output) > 1 and node.output[1] == name and len(node.input) > 7:
            name = node.input[7]
        else:
            return False
    return False


def _topological(nodes: list[Any], available: set[str]) -> list[Any]:
    """``nodes`` in a topological order that keeps their given order wherever it already is one."""
    made_by = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    waiting = [0] * len(nodes)
    users: dict[int, list[int]] = defaultdict(list)
    for k, n in enumerate(nodes):
        for i in {i for i in n.input if i and i not in available and i in made_by}:
            waiting[k] += 1
            users[made_by[i]].append(k)
    ready = [k for k, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    out = []
    while ready:
        k = heapq.heappop(ready)
        out.append(nodes[k])
        for u in users[k]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(out) != len(nodes):
        raise ValueError("the rewritten graph has a cycle")
    return out
