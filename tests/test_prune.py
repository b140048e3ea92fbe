"""export/prune.py's refusals, one each, on small graphs built with onnx.helper.

:func:`base_model` is the smallest graph ``prune_last_layer`` rewrites: a fused BERT ``Attention``
(com.microsoft) with its mask cast from ``attention_mask``, a residual + LayerNorm, a feed-forward
block, a second LayerNorm and the head's ``Gather`` of position 0. The first test shows it is pruned
and scores the same on a padded batch; every other case changes one thing of it and expects the
graph refused with the reason ``prune.py`` gives, and left untouched. Needs onnx (the export extra): ``pytest --lean`` does not collect this module.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from crossrank.export.prune import prune_last_layer

HIDDEN, HEADS = 8, 2


def _init(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def base_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)

    def w(*shape: int) -> np.ndarray:
        return rng.normal(0, 0.3, size=shape).astype(np.float32)

    inits = [
        _init("qkv_w", w(HIDDEN, 3 * HIDDEN)), _init("qkv_b", w(3 * HIDDEN)),
        _init("ln1_g", w(HIDDEN) + 1), _init("ln1_b", w(HIDDEN)),
        _init("ff_w", w(HIDDEN, HIDDEN)), _init("ff_b", w(HIDDEN)),
        _init("ln2_g", w(HIDDEN) + 1), _init("ln2_b", w(HIDDEN)),
        _init("cls_index", np.array(0, np.int64)), _init("head_w", w(HIDDEN, 1)),
    ]
    N = helper.make_node
    nodes = [
        N("Cast", ["attention_mask"], ["mask_i32"], name="mask_cast", to=TensorProto.INT32),
        N("Attention", ["hidden", "qkv_w", "qkv_b", "mask_i32"], ["att"], name="Attention_0", domain="com.microsoft", num_heads=HEADS),
        N("Add", ["att", "hidden"], ["res1"], name="residual1"),
        N("LayerNormalization", ["res1", "ln1_g", "ln1_b"], ["ln1"], name="ln1", axis=-1),
        N("MatMul", ["ln1", "ff_w"], ["ff_mm"], name="ff_matmul"),
        N("Add", ["ff_mm", "ff_b"], ["ff_add"], name="ff_bias"),
        N("Relu", ["ff_add"], ["ff_act"], name="ff_relu"),
        N("Add", ["ff_act", "ln1"], ["res2"], name="residual2"),
        N("LayerNormalization", ["res2", "ln2_g", "ln2_b"], ["last"], name="ln2", axis=-1),
        N("Gather", ["last", "cls_index"], ["cls"], name="cls_gather", axis=1),
        N("MatMul", ["cls", "head_w"], ["logits"], name="head"),
    ]
    graph = helper.make_graph(
        nodes, "tiny-last-layer",
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "sequence", HIDDEN]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def _node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute(name, value)])


def _replace_init(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    kept = [t for t in model.graph.initializer if t.name != name]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + [_init(name, value)])


def _as_graph_input(model: onnx.ModelProto, name: str, shape: list) -> None:
    """Turn initializer ``name`` into a graph input (a value only known at run time)."""
    _replace_init(model, name, np.zeros(1, np.float32))
    model.graph.initializer.pop()
    model.graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))


def test_the_base_graph_is_pruned_and_scores_the_same_on_a_padded_batch() -> None:
    import onnxruntime as ort

    model = base_model()
    before = model.SerializeToString()
    done, note = prune_last_layer(model)
    assert done, note
    assert "computed for position 0 only" in note and f"over {HEADS} heads" in note
    assert not any(n.op_type == "Attention" for n in model.graph.node)
    rng = np.random.default_rng(1)
    feed = {
        "hidden": rng.normal(size=(3, 5, HIDDEN)).astype(np.float32),
        "attention_mask": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], np.int64),
    }
    full = ort.InferenceSession(before, providers=["CPUExecutionProvider"]).run(None, feed)[0]
    pruned = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert np.ptp(full) > 1e-3
    np.testing.assert_allclose(pruned, full, atol=1e-5, rtol=0)


def _no_mask_input(m):
    m.graph.input[1].name = "mask"
    _node(m, "mask_cast").input[0] = "mask"


def _old_opset(m):
    m.opset_import[0].version = 12


def _no_cls_gather(m):
    _replace_init(m, "cls_index", np.array(1, np.int64))


def _two_cls_gathers(m):
    m.graph.node.append(helper.make_node("Gather", ["last", "cls_index"], ["cls2"], name="cls_gather2", axis=1))
    m.graph.output.append(helper.make_tensor_value_info("cls2", TensorProto.FLOAT, None))


def _last_hidden_state_is_an_output(m):
    m.graph.output.append(helper.make_tensor_value_info("last", TensorProto.FLOAT, None))


def _attention_not_fused(m):
    _node(m, "Attention_0").domain = ""


def _softmax_in_the_last_layer(m):
    _node(m, "ff_relu").op_type = "Softmax"


def _layer_norm_over_another_axis(m):
    _set_attr(_node(m, "ln2"), "axis", 1)


def _matmul_weight_from_an_input(m):
    _as_graph_input(m, "ff_w", [HIDDEN, HIDDEN])


def _per_position_constant(m):
    _replace_init(m, "ln2_g", np.ones((3, HIDDEN), np.float32))


def _attention_output_cut_off_by_a_constant(m):
    # an initializer named like the second residual's output: the walk back from the head stops
    # there, so the Attention's output never reaches the head through position-wise ops
    m.graph.initializer.append(_init("res2", np.ones(HIDDEN, np.float32)))


def _unidirectional_attention(m):
    _set_attr(_node(m, "Attention_0"), "unidirectional", 1)


def _attention_with_past(m):
    _node(m, "Attention_0").input.append("past")


def _attention_without_mask(m):
    del _node(m, "Attention_0").input[3:]


def _mask_filter_value_too_small(m):
    _set_attr(_node(m, "Attention_0"), "mask_filter_value", -100.0)


def _qkv_weights_from_an_input(m):
    _as_graph_input(m, "qkv_w", [HIDDEN, 3 * HIDDEN])


def _heads_do_not_divide_hidden(m):
    _set_attr(_node(m, "Attention_0"), "num_heads", 3)


def _residual_from_another_input(m):
    m.graph.input.append(helper.make_tensor_value_info("other", TensorProto.FLOAT, ["batch", "sequence", HIDDEN]))
    _node(m, "residual1").input[1] = "other"


def _attention_output_read_elsewhere(m):
    m.graph.node.append(helper.make_node("Identity", ["att"], ["att_copy"], name="att_copy"))
    m.graph.output.append(helper.make_tensor_value_info("att_copy", TensorProto.FLOAT, None))


def _rewrite_names_taken(m):
    m.graph.initializer.append(_init("Attention_0/cls_only/mine", np.zeros(1, np.float32)))


REFUSALS: list[tuple[Callable, str]] = [
    (_no_mask_input, "the graph has no 'attention_mask' input"),
    (_old_opset, "the graph's opset 12 is below 13"),
    (_no_cls_gather, "expected one Gather of position 0 on axis 1 (the classification head's [CLS] read), found 0"),
    (_two_cls_gathers, "expected one Gather of position 0 on axis 1 (the classification head's [CLS] read), found 2"),
    (_last_hidden_state_is_an_output, "the last hidden state has other readers than the head's [CLS] Gather"),
    (_attention_not_fused, "no fused Attention node precedes the head"),
    (_softmax_in_the_last_layer, "Softmax node 'ff_relu' between the last Attention and the head is not position-wise"),
    (_layer_norm_over_another_axis, "LayerNormalization node 'ln2' normalizes over axis 1, not the last one"),
    (_matmul_weight_from_an_input, "MatMul 'ff_matmul' in the last layer has a non-constant or non-2-D weight"),
    (_per_position_constant, "LayerNormalization node 'ln2' in the last layer has a constant of shape [3, 8]"),
    (_attention_output_cut_off_by_a_constant, "the last Attention's output does not reach the head through position-wise ops"),
    (_unidirectional_attention, "the last Attention has options this rewrite does not handle: ['unidirectional']"),
    (_attention_with_past, "the last Attention has past/extra inputs or outputs"),
    (_attention_without_mask, "the last Attention's mask is not derived from the 'attention_mask' input"),
    (_mask_filter_value_too_small, "the last Attention's mask_filter_value -100.0 is above -10000"),
    (_qkv_weights_from_an_input, "the last Attention's Q/K/V weights are not packed constants"),
    (_heads_do_not_divide_hidden, "hidden size 8 is not a multiple of num_heads 3"),
    (_residual_from_another_input, "Add node 'residual1' in the last layer reads 'other', which is not per-position"),
    (_attention_output_read_elsewhere, "'att' of the last layer is also read outside it"),
    (_rewrite_names_taken, "names under Attention_0/cls_only/ are already used in the graph"),
]


@pytest.mark.parametrize("change,reason", REFUSALS, ids=[c.__name__.strip("_") for c, _ in REFUSALS])
def test_each_refusal_names_its_reason_and_leaves_the_graph_untouched(change: Callable, reason: str) -> None:
    model = base_model()
    change(model)
    before = model.SerializeToString()
    done, note = prune_last_layer(model)
    assert (done, note[: len(reason)]) == (False, reason), note
    assert model.SerializeToString() == before
