"""The OpenAI-compatible HTTP API: `create_app(lm, ...)` returns the FastAPI app.

    GET  /v1/models · POST /v1/completions · POST /v1/chat/completions · POST /v1/score
    GET  /health · GET /metrics · GET /tokenizer_info · POST /tokenize · POST /detokenize

Requests and responses have OpenAI's shapes; alignment is the extra request field
`"alignment": {"method", "reward", "beta", "params"}` (absent: plain sampling). Each choice
carries its `reward`; a top-level `dgalign` object carries the method, reward spec, β, params and
the cost of the sampler call that served the request (`batch_prompts` prompts shared it).
`/v1/completions` continues the prompt as raw text or token ids; `/v1/chat/completions` applies
the model's chat template to the whole conversation, and the reward sees the last user message as
the prompt. With `stream: true` plain sampling is sent token by token; an aligned method's answer
is sent when it has been chosen (it is picked among candidates at the end). Clients send `model`
as the served name (`served_model_name`, default the LM's name); `/v1/models` lists it with its
`max_model_len`.

For eval tools: `temperature: 0` is greedy; `logprobs` (completions: an int, the top alternatives;
chat: `logprobs: true` and `top_logprobs`) and `echo` (completions; `max_tokens: 0` then scores
the prompt alone) give the base model's per-token log-probs for plain sampling, and a 400 for an
aligned method, whose answers are not drawn token by token from them; vLLM's `top_k` and
`stop_token_ids` are honoured, its other sampling fields refused unless neutral (`schemas.UNSUPPORTED`);
`/tokenize`, `/detokenize` and `/tokenizer_info` are vLLM's, so lm-evaluation-harness counts tokens
with the served model's own tokenizer (`tokenizer_backend=remote`). A client that disconnects
abandons its job (see `generation`).

Every error has OpenAI's body `{"error": {"message", "type", "param", "code"}}`. A request is
checked whole before it is queued, cheapest checks first: the body's size (413), its fields, the
prompt's length in characters, then (off the event loop) its tokens, the method's config, the
checkpoint and the reward. A full queue answers 429 with `Retry-After`. A stream starts (200)
only once its first token is drawn, so a request that fails before then gets an error status; a
failure after that is sent as an error event, and every stream ends with `data: [DONE]`.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from ..types import LM
from .batcher import Batcher
from .engine import Engine, Limits
from .generation import Generation
from .metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from .middleware import BearerAuth, BodyLimit, error_response
from .schemas import APIError
from .utility import Utility

log = logging.getLogger("dgalign.server")


def create_app(
    lm: LM,
    *,
    limits: Limits = Limits(),
    max_batch: int = 16,  # prompts per sampler call; 1 turns micro-batching off
    batch_wait_ms: float = 5.0,  # how long the oldest request waits for others to share its call
    max_queue: int = 256,  # most prompts waiting for a sampler call; more get 429
    api_key: str | None = None,  # required as `Authorization: Bearer KEY` when set (not on OPEN_PATHS)
    served_model_name: str | None = None,  # the `model` clients send; None: the LM's own name
) -> FastAPI:
    name = served_model_name or lm.name
    engine = Engine(lm, limits)
    metrics = Metrics()
    batcher = Batcher(engine.run, max_batch=max_batch, wait_s=batch_wait_ms / 1000, max_queue=max_queue,
                      on_batch=metrics.batch_prompts.observe)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="dgalign", description=__doc__, lifespan=lifespan)
    add_error_handlers(app)
    add_info_endpoints(app, lm, name, batcher, metrics)
    generation = Generation(lm, engine, batcher, metrics, max_queue, name)
    generation.register(app)
    Utility(generation).register(app)
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    app.add_middleware(BearerAuth, api_key=api_key)  # before the body is read
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts 401s and 413s too
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's body; a malformed request is a 400 naming its first wrong field."""

    @app.exception_handler(APIError)
    async def api_error(request, err: APIError):
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, err: RequestValidationError):
        first = err.errors()[0]
        if first["type"] == "json_invalid":
            detail = first.get("ctx", {}).get("error", "")
            return error_response(APIError(400, f"the request body is not valid JSON: {detail}"))
        loc = [str(p) for p in first["loc"] if p != "body"]
        param = ".".join(loc) or None
        return error_response(APIError(400, f"{param or 'request body'}: {first['msg']}", param))

    @app.exception_handler(HTTPException)
    async def http_error(request, err: HTTPException):
        return error_response(APIError(err.status_code, str(err.detail)))

    @app.exception_handler(Exception)
    async def crash(request, err: Exception):
        log.exception("unhandled error")
        return error_response(APIError(500, f"internal error ({type(err).__name__}); see the server log"))


def add_info_endpoints(app: FastAPI, lm: LM, name: str, batcher: Batcher, metrics: Metrics) -> None:
    """/health, /metrics (Prometheus) and /v1/models (`name` is the served model name)."""
    started = int(time.time())

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, "waiting": len(batcher.waiting)}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "created": started, "owned_by": "dgalign", "root": lm.name,
                      "max_model_len": lm.max_context}],
        }
