"""Option objects check themselves on construction with one integer rule (crossrank.checks)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crossrank import InvalidInputError, Reranker
from crossrank.batching import BatchingOptions, plan_batches
from crossrank.session import SessionOptions

REFUSED = [0, -1, True, False, np.bool_(True), 2.0, "2", None]


@pytest.mark.parametrize("value", [1, 3, np.int64(3), np.int32(3), np.uint8(3)])
def test_every_positive_int_option_takes_any_integral(value) -> None:
    b = BatchingOptions(batch_tokens=value, max_batch_size=value)
    s = SessionOptions(threads=value)
    for got in (b.batch_tokens, b.max_batch_size, s.threads):
        assert got == int(value) and type(got) is int  # stored as a plain int


@pytest.mark.parametrize("value", REFUSED)
@pytest.mark.parametrize("name", ["batch_tokens", "max_batch_size", "threads"])
def test_every_positive_int_option_refuses_the_rest_naming_itself(name: str, value) -> None:
    if name == "threads" and value is None:
        assert SessionOptions(threads=None).threads is None  # None = onnxruntime's default
        return
    with pytest.raises(InvalidInputError, match=rf"^{name} must be .*an int >= 1; got {value!r}$"):
        if name == "threads":
            SessionOptions(threads=value)
        else:
            BatchingOptions(**{"batch_tokens": 8, "max_batch_size": 8, name: value})


def test_session_options_check_every_field() -> None:
    s = SessionOptions(graph_optimization=" ALL ", device_id=np.int64(1))
    assert (s.graph_optimization, s.device_id) == ("all", 1) and type(s.device_id) is int
    for kwargs, name in [
        ({"graph_optimization": "max"}, "graph_optimization"),
        ({"spinning": "no"}, "spinning"),
        ({"memory_arena": 1}, "memory_arena"),
        ({"device_id": -1}, "device_id"),
        ({"device_id": True}, "device_id"),
    ]:
        with pytest.raises(InvalidInputError, match=name):
            SessionOptions(**kwargs)


def test_plan_batches_follows_the_same_rule() -> None:
    # np.int64 was refused here before (plain int only) while Reranker.load accepted it.
    batches = plan_batches([5, 5, 5, 5], batch_tokens=np.int64(10), max_batch_size=np.int64(8))
    assert [b.shape for b in batches] == [(2, 5), (2, 5)]
    with pytest.raises(InvalidInputError, match="max_batch_size"):
        plan_batches([5], batch_tokens=10, max_batch_size=True)


def test_load_takes_numpy_ints_for_threads_and_batching(tiny_bert_folder: Path) -> None:
    # threads=np.int64 was refused while max_batch_size=np.int64 was accepted: one rule now.
    rr = Reranker.load(tiny_bert_folder, variant="fp32", threads=np.int64(1), batch_tokens=np.int64(200), max_batch_size=np.int64(3))
    assert (rr.batch_tokens, rr.max_batch_size) == (200, 3) and type(rr.max_batch_size) is int
    _, info = rr.score("q", ["a b c"] * 7, return_info=True)
    assert max(b for b, _ in info.batch_shapes) == 3
    with pytest.raises(InvalidInputError, match="threads"):
        Reranker.load(tiny_bert_folder, threads=np.float64(1.0))
