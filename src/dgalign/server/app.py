"""The OpenAI-compatible HTTP API: `create_app(lm, ...)` returns the FastAPI app.

    GET  /v1/models · POST /v1/completions · POST /v1/chat/completions · GET /health · GET /metrics

Requests and responses have OpenAI's shapes; alignment is the extra request field
`"alignment": {"method", "reward", "beta", "params"}` (absent: plain sampling). Each choice
carries its `reward`; a top-level `dgalign` object carries the method, reward spec, β, params and
the cost of the sampler call that served the request (`batch_prompts` prompts shared it).
`/v1/completions` continues the prompt as raw text; `/v1/chat/completions` applies the model's
chat template to the whole conversation, and the reward sees the last user message as the prompt.
With `stream: true` plain sampling is sent token by token; an aligned method's answer is sent
when it has been chosen (it is picked among candidates at the end). Every error has OpenAI's
body `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..types import LM, Prompts
from .batcher import Batcher
from .engine import Answer, Engine, Limits, Work
from .metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from .schemas import UNSUPPORTED, APIError, ChatRequest, CompletionRequest
from .streaming import TextStream, cut_at_stop

log = logging.getLogger("dgalign.server")

MAX_STOPS = 4  # OpenAI's limit on stop strings


def create_app(
    lm: LM,
    *,
    limits: Limits = Limits(),
    max_batch: int = 16,  # prompts per sampler call; 1 turns micro-batching off
    batch_wait_ms: float = 5.0,  # how long the oldest request waits for others to share its call
    api_key: str | None = None,  # required as `Authorization: Bearer KEY` on /v1/* when set
) -> FastAPI:
    engine = Engine(lm, limits)
    metrics = Metrics()
    batcher = Batcher(
        engine.run, max_batch=max_batch, wait_s=batch_wait_ms / 1000, on_batch=metrics.batch_prompts.observe
    )
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="dgalign", description=__doc__, lifespan=lifespan)

    # -- errors ----------------------------------------------------------------------------------
    @app.exception_handler(APIError)
    async def api_error(request, err: APIError):
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, err: RequestValidationError):
        first = err.errors()[0]
        if first["type"] == "json_invalid":
            detail = first.get("ctx", {}).get("error", "")
            return await api_error(request, APIError(400, f"the request body is not valid JSON: {detail}"))
        loc = [str(p) for p in first["loc"] if p != "body"]
        param = ".".join(loc) or None
        return await api_error(request, APIError(400, f"{param or 'request body'}: {first['msg']}", param))

    @app.exception_handler(HTTPException)
    async def http_error(request, err: HTTPException):
        return await api_error(request, APIError(err.status_code, str(err.detail)))

    @app.exception_handler(Exception)
    async def crash(request, err: Exception):
        log.exception("unhandled error")
        return await api_error(request, APIError(500, f"internal error: {type(err).__name__}: {err}"))

    # -- plain endpoints ---------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": lm.name, "waiting": len(batcher.waiting)}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [{"id": lm.name, "object": "model", "created": started, "owned_by": "dgalign"}],
        }

    # -- generation --------------------------------------------------------------------------------
    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not texts or not all(t.strip() for t in texts):
            raise APIError(400, "prompt must be non-empty text (or a non-empty list of them)", "prompt")
        prompts = Prompts(texts, lm.encode(texts, raw=True))
        return await answer(body, prompts, chat=False, max_tokens=body.max_tokens, prompt_param="prompt")

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest):
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in body.messages
        ]
        users = [m["content"] for m in messages if m["role"] == "user"]
        if not users or not users[-1].strip():
            raise APIError(
                400, "messages must end their user turns with a non-empty user message", "messages"
            )
        prompts = Prompts([users[-1]], [lm.encode_chat(messages)])
        max_tokens = body.max_completion_tokens or body.max_tokens
        if max_tokens is None:  # as long as the limit and the context allow
            max_tokens = max(min(limits.max_tokens, lm.max_context - len(prompts.ids[0])), 1)
        return await answer(body, prompts, chat=True, max_tokens=max_tokens, prompt_param="messages")

    async def answer(body, prompts: Prompts, *, chat: bool, max_tokens: int, prompt_param: str):
        if body.model != lm.name:
            raise APIError(
                404,
                f"model {body.model!r} is not served here; this server serves {lm.name!r}",
                "model",
                "model_not_found",
            )
        extra = body.model_extra or {}
        for name, neutral in UNSUPPORTED.items():
            if name in extra and extra[name] not in neutral:
                raise APIError(400, f"{name} is not supported by dgalign", name, "unsupported_parameter")
        stops = body.stops()
        if len(stops) > MAX_STOPS or not all(stops):
            raise APIError(400, f"stop must be at most {MAX_STOPS} non-empty strings", "stop")
        spec = body.alignment.reward if body.alignment else None
        reward = None if spec is None else await run_in_threadpool(engine.reward, spec)
        key, work = engine.prepare(
            body.alignment,
            reward,
            prompts,
            max_tokens=max_tokens,
            n=body.n,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            stream=body.stream,
            prompt_param=prompt_param,
        )
        metrics.prompt_tokens.inc(sum(len(ids) for ids in prompts.ids))
        head = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": lm.name,
        }
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            events = stream(head, key, work, chat=chat, stops=stops, include_usage=include_usage, body=body)
            return StreamingResponse(events, media_type="text/event-stream")
        result = await submit(key, work)
        choices, usage = [], usage_of(prompts, result)
        for i, (text, tokens, reward_value) in enumerate(
            zip(result.texts, result.token_ids, result.rewards, strict=True)
        ):
            text, stopped = cut_at_stop(text, stops)
            finish = "stop" if stopped else engine.finish_reason(tokens, work.cfg.max_new_tokens)
            choice = {"index": i, "logprobs": None, "finish_reason": finish, "reward": reward_value}
            choice |= {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
            choices.append(choice)
        metrics.generated_tokens.labels(work.method).inc(usage["completion_tokens"])
        return {
            **head,
            "object": "chat.completion" if chat else "text_completion",
            "choices": choices,
            "usage": usage,
            "dgalign": dgalign_info(body, work, result),
        }

    async def submit(key, work: Work) -> Answer:
        try:
            return await batcher.submit(key, len(work.prompts), work)
        except Exception as err:
            log.exception("sampler failed")
            raise APIError(500, f"the sampler failed: {type(err).__name__}: {err}") from err

    async def stream(
        head: dict, key, work: Work, *, chat: bool, stops: list[str], include_usage: bool, body
    ) -> AsyncIterator[str]:
        """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        if work.stream_tokens:
            work.on_token = lambda choice, token: loop.call_soon_threadsafe(
                events.put_nowait, (choice, token)
            )
        task = asyncio.ensure_future(submit(key, work))

        def finished(done: asyncio.Task) -> None:
            # queued after every token: the loop runs callbacks in the order they were scheduled
            events.put_nowait(None)
            if not done.cancelled():
                done.exception()  # retrieved here too, in case the client left before the end

        task.add_done_callback(finished)
        texts = [TextStream(lm.decode, stops) for _ in range(work.choices)]
        kind = "chat.completion.chunk" if chat else "text_completion"

        def event(choices: list[dict], **top) -> str:
            return sse({**head, "object": kind, "choices": choices, **top})

        def choice(
            index: int, text: str | None = None, *, role: bool = False, finish: str | None = None, **extra
        ) -> dict:
            out = {"index": index, "logprobs": None, "finish_reason": finish, **extra}
            if chat:
                out["delta"] = ({"role": "assistant"} if role else {}) | (
                    {} if text is None else {"content": text}
                )
            else:
                out["text"] = text or ""
            return out

        if chat:
            for i in range(work.choices):
                yield event([choice(i, "", role=True)])
        while (item := await events.get()) is not None:
            index, token = item
            if delta := texts[index].push(token):
                yield event([choice(index, delta)])
        try:
            result = task.result()
        except APIError as err:
            yield sse(err.body())
            return
        usage = usage_of(work.prompts, result)
        metrics.generated_tokens.labels(work.method).inc(usage["completion_tokens"])
        info = dgalign_info(body, work, result)
        for i, (text, tokens, reward_value) in enumerate(
            zip(result.texts, result.token_ids, result.rewards, strict=True)
        ):
            text, stopped = cut_at_stop(text, stops)
            if delta := texts[i].finish(text):
                yield event([choice(i, delta)])
            finish = "stop" if stopped else engine.finish_reason(tokens, work.cfg.max_new_tokens)
            last = {"dgalign": info} if i == work.choices - 1 else {}
            yield event([choice(i, finish=finish, reward=reward_value)], **last)
        if include_usage:
            yield event([], usage=usage, dgalign=info)
        yield "data: [DONE]\n\n"

    app.add_middleware(BearerAuth, api_key=api_key)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts 401s too
    return app


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def usage_of(prompts: Prompts, result: Answer) -> dict:
    prompt_tokens = sum(len(ids) for ids in prompts.ids)
    completion_tokens = sum(len(t) for t in result.token_ids)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def dgalign_info(body, work: Work, result: Answer) -> dict:
    """The alignment that answered and what its sampler call cost."""
    alignment = body.alignment
    return {
        "method": work.method,
        "reward": alignment.reward if alignment else None,
        "beta": work.cfg.beta,
        "params": dict(alignment.params) if alignment else {},
        "cost": result.cost,
        "batch_prompts": result.batch_prompts,
    }


class BearerAuth:
    """ASGI middleware: /v1/* needs `Authorization: Bearer KEY` when a key is set (401 otherwise)."""

    def __init__(self, app, api_key: str | None):
        self.app = app
        self.expected = None if api_key is None else f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if self.expected is not None and scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                err = APIError(
                    401, "missing or wrong API key: send Authorization: Bearer KEY", None, "invalid_api_key"
                )
                await JSONResponse(err.body(), status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)
