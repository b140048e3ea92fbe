"""The service's settings: one frozen, validated object the CLI and the Python API both build."""
from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from ..scheduler import DEFAULT_MAX_QUEUE_PAIRS, DEFAULT_REQUEST_TIMEOUT_S

__all__ = ["ServeConfig", "API_KEY_ENV", "CONFIG_ENV"]

API_KEY_ENV = "CROSSRANK_API_KEY"
# How `--workers N` hands the settings to each uvicorn worker process (JSON of ServeConfig).
CONFIG_ENV = "CROSSRANK_SERVE_CONFIG"


@dataclass(frozen=True)
class ServeConfig:
    """Settings of one ``crossrank serve`` process (see ``crossrank serve --help``).

    Model options are those of :meth:`crossrank.Reranker.load`. Limits (the figures are defaults,
    chosen for 20-200-candidate reranking, not measured maxima):

    * ``max_documents`` (1,000): documents per request; more -> 422.
    * ``max_body_bytes`` (10 MiB): request body; more -> 413.
    * ``max_text_chars`` (100,000): characters of the query or of one document; more -> 422. A
      512-token pair reads ~2-3 thousand characters, so this only stops abuse.
    * ``max_queue_pairs``: see :data:`crossrank.scheduler.DEFAULT_MAX_QUEUE_PAIRS`; full -> 429.
    * ``request_timeout_s`` (30): a request without a deadline not done by then -> 504.
    * ``grace_s`` (30): on SIGTERM, how long queued requests may take to finish.
    """

    model_dir: str
    variant: str = "auto"
    provider: str = "auto"
    threads: int | None = None
    max_length: int | None = None
    batch_tokens: int | None = None
    max_batch_size: int | None = None
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    api_key: str | None = None
    max_documents: int = 1000
    max_body_bytes: int = 10 * 1024 * 1024
    max_text_chars: int = 100_000
    max_queue_pairs: int = DEFAULT_MAX_QUEUE_PAIRS
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    batching: bool = True
    grace_s: float = 30.0
    warmup: bool = True
    cache_dir: str | None = None
    # onnxruntime's idle worker threads spin for new work by default (lowest latency for a lone
    # process); in a service they would burn the cores the event loop and tokenization need.
    spinning: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.model_dir, (str, os.PathLike)) or not str(self.model_dir):
            raise InvalidInputError(f"model_dir must be a folder path; got {self.model_dir!r}")
        object.__setattr__(self, "model_dir", str(self.model_dir))
        for name in ("port",):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 0 <= v <= 65535:
                raise InvalidInputError(f"{name} must be an int between 0 and 65535; got {v!r}")
        for name in ("workers", "max_documents", "max_body_bytes", "max_text_chars", "max_queue_pairs"):
            _positive_int(name, getattr(self, name))
        for name in ("threads", "max_length", "batch_tokens", "max_batch_size"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        for name in ("request_timeout_s", "grace_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (v > 0 and math.isfinite(v)):
                raise InvalidInputError(f"{name} must be a finite number of seconds > 0; got {v!r}")
        for name in ("batching", "warmup", "spinning"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidInputError(f"{name} must be True or False; got {getattr(self, name)!r}")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key.strip()):
            raise InvalidInputError(
                "the API key is empty: give a key, or leave --api-key and $CROSSRANK_API_KEY unset to serve without one"
            )
        if self.max_queue_pairs < self.max_documents:
            raise InvalidInputError(
                f"max_queue_pairs ({self.max_queue_pairs}) is below max_documents ({self.max_documents}): an allowed "
                "request could never be queued; raise the first or lower the second"
            )
        if not isinstance(self.host, str) or not self.host:
            raise InvalidInputError(f"host must be an address such as 127.0.0.1; got {self.host!r}")

    @property
    def model_name(self) -> str:
        """The name clients see and may send as ``model``: ``served_model_name`` or the folder's name."""
        return self.served_model_name or Path(self.model_dir).resolve().name

    def load_reranker(self) -> Any:
        """The :class:`crossrank.Reranker` these settings describe (its errors as ``Reranker.load``'s)."""
        from ..reranker import Reranker  # noqa: PLC0415

        return Reranker.load(
            self.model_dir,
            variant=self.variant,
            provider=self.provider,
            threads=self.threads,
            max_length=self.max_length,
            batch_tokens=self.batch_tokens,
            max_batch_size=self.max_batch_size,
            spinning=self.spinning,
            **({} if self.cache_dir is None else {"cache_dir": self.cache_dir}),
        )

    def with_(self, **changes: Any) -> "ServeConfig":
        return replace(self, **changes)

    def to_env(self) -> str:
        """JSON for :data:`CONFIG_ENV` (the API key travels too: the environment of our own workers)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, environ: Any = None) -> "ServeConfig":
        env = os.environ if environ is None else environ
        raw = env.get(CONFIG_ENV)
        if not raw:
            raise InvalidInputError(f"${CONFIG_ENV} is not set; start the service with `crossrank serve`")
        data = json.loads(raw)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InvalidInputError(f"${CONFIG_ENV} has unknown settings {sorted(unknown)}")
        return cls(**data)


def _positive_int(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise InvalidInputError(f"{name} must be an int >= 1; got {v!r}")
