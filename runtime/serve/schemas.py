"""Request and response bodies of the service's routes (pydantic models: validation + OpenAPI).

Two request shapes, each as its projects document it:

* Cohere / Jina / infinity (``POST /v1/rerank``, ``POST /v2/rerank``): ``query``, ``documents``
  (strings or ``{"text": ...}`` objects, whose other keys are the caller's and are ignored),
  ``top_n``, ``return_documents``, ``max_tokens_per_doc``, ``model``; crossrank adds
  ``deadline_ms`` and ``raw_scores``.
* text-embeddings-inference (``POST /rerank``): ``query``, ``texts``, ``raw_scores``,
  ``return_text``, ``truncate``, ``truncation_direction``; crossrank adds ``deadline_ms``.

Unknown top-level fields are refused with 422 naming them (a misspelt ``top_k`` must not be
silently ignored). Fields the service does not implement (``rank_fields``, ``max_chunks_per_doc``)
are refused the same way rather than accepted and dropped.
"""
from __future__ import annotations

from typing import Literal, Optional, Union

from typing_extensions import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

# A JSON number of milliseconds: no strings, no booleans, no Infinity/NaN (or 1e400, which is inf).
FiniteFloat = Annotated[StrictFloat, Field(allow_inf_nan=False)]

__all__ = [
    "DocumentObject",
    "RerankRequest",
    "RerankResult",
    "RerankResponse",
    "TEIRerankRequest",
    "TEIRank",
    "ErrorBody",
]


class DocumentObject(BaseModel):
    """A document given as an object; only ``text`` is read."""

    model_config = ConfigDict(extra="allow")
    text: StrictStr


class RerankRequest(BaseModel):
    """Cohere / Jina / infinity rerank request."""

    model_config = ConfigDict(extra="forbid")
    query: StrictStr
    documents: list[Union[StrictStr, DocumentObject]]
    top_n: Optional[StrictInt] = Field(default=None, ge=1, description="return at most this many results (default: all)")
    return_documents: StrictBool = Field(default=False, description="include each document's text as {'text': ...}")
    max_tokens_per_doc: Optional[StrictInt] = Field(default=None, ge=1, description="cap on each document's tokens (cheaper)")
    model: Optional[StrictStr] = Field(default=None, description="if given, must name the served model (GET /info)")
    raw_scores: StrictBool = Field(default=False, description="relevance_score is the raw logit instead of the activated score")
    deadline_ms: Optional[Union[StrictInt, FiniteFloat]] = Field(
        default=None,
        gt=0,
        description="latency budget in ms: answer on time with what could be scored (unscored results last, "
        "relevance_score null, scored false); also header X-Deadline-Ms",
    )


class ResultDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: Optional[float] = Field(description="null only when the deadline left this candidate unscored")
    document: Optional[ResultDocument] = None
    scored: Optional[bool] = Field(default=None, description="present (false) only on candidates a deadline left unscored")


class Usage(BaseModel):
    total_tokens: int
    prompt_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult]
    usage: Usage
    meta: dict
    unscored: int = Field(description="candidates a deadline left unscored (0 when complete)")
    partial: bool


class TEIRerankRequest(BaseModel):
    """text-embeddings-inference rerank request."""

    model_config = ConfigDict(extra="forbid")
    query: StrictStr
    texts: list[StrictStr]
    raw_scores: StrictBool = False
    return_text: StrictBool = False
    truncate: Optional[StrictBool] = Field(default=False, description="false: a pair longer than max_length is an error (422)")
    truncation_direction: Literal["Right", "right"] = Field(
        default="Right", description="only Right: crossrank cuts the document's end, never the query"
    )
    deadline_ms: Optional[Union[StrictInt, FiniteFloat]] = Field(default=None, gt=0, description="as in /v1/rerank")


class TEIRank(BaseModel):
    index: int
    score: Optional[float]
    text: Optional[str] = None


class ErrorBody(BaseModel):
    """Every error answer: ``error`` (what was wrong), ``error_type``, and ``field`` when one input was."""

    error: str
    error_type: str
    field: Optional[str] = None
