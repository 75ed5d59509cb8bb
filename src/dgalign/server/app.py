"""The OpenAI-compatible HTTP API: `create_app(lm, ...)` returns the FastAPI app.

    GET  /v1/models · POST /v1/completions · POST /v1/chat/completions · GET /health · GET /metrics

Requests and responses have OpenAI's shapes; alignment is the extra request field
`"alignment": {"method", "reward", "beta", "params"}` (absent: plain sampling). Each choice
carries its `reward`; a top-level `dgalign` object carries the method, reward spec, β, params and
the cost of the sampler call that served the request (`batch_prompts` prompts shared it).
`/v1/completions` continues the prompt as raw text; `/v1/chat/completions` applies the model's
chat template to the whole conversation, and the reward sees the last user message as the prompt.
With `stream: true` plain sampling is sent token by token; an aligned method's answer is sent
when it has been chosen (it is picked among candidates at the end).

Every error has OpenAI's body `{"error": {"message", "type", "param", "code"}}`. A request is
checked whole before it is queued, cheapest checks first: the body's size (413), its fields, the
prompt's length in characters, then (off the event loop) its tokens, the method's config, the
checkpoint and the reward. A full queue answers 429 with `Retry-After`. A stream starts (200)
only once its first token is drawn, so a request that fails before then gets an error status; a
failure after that is sent as an error event, and every stream ends with `data: [DONE]`.
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
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..errors import DGAlignError, RewardError
from ..types import LM, Prompts
from .batcher import Batcher, QueueFull
from .engine import Answer, Engine, Limits, Work
from .metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from .schemas import UNSUPPORTED, APIError, ChatRequest, CompletionRequest
from .streaming import TextStream, cut_at_stop

log = logging.getLogger("dgalign.server")

MAX_STOPS = 4  # OpenAI's limit on stop strings
OPEN_PATHS = ("/health", "/metrics")  # answered without the API key
RETRY_AFTER_S = 1  # what a 429 tells the client to wait


def create_app(
    lm: LM,
    *,
    limits: Limits = Limits(),
    max_batch: int = 16,  # prompts per sampler call; 1 turns micro-batching off
    batch_wait_ms: float = 5.0,  # how long the oldest request waits for others to share its call
    max_queue: int = 256,  # most prompts waiting for a sampler call; more get 429
    api_key: str | None = None,  # required as `Authorization: Bearer KEY` when set (not on OPEN_PATHS)
) -> FastAPI:
    engine = Engine(lm, limits)
    metrics = Metrics()
    batcher = Batcher(
        engine.run,
        max_batch=max_batch,
        wait_s=batch_wait_ms / 1000,
        max_queue=max_queue,
        on_batch=metrics.batch_prompts.observe,
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
        check_request(body)
        texts = body.prompt
        if not texts or not all(t.strip() for t in texts):
            raise APIError(400, "prompt must be non-empty text (or a non-empty list of them)", "prompt")
        if len(texts) > max_queue:
            raise APIError(
                400,
                f"prompt: {len(texts)} prompts; this server takes at most {max_queue} per request",
                "prompt",
            )
        engine.check_chars(max(len(t) for t in texts), "prompt")
        ids = await encode("prompt", lm.encode, texts, raw=True)
        return await answer(
            body, Prompts(texts, ids), chat=False, max_tokens=body.max_tokens, prompt_param="prompt"
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest):
        check_request(body)
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in body.messages
        ]
        users = [m["content"] for m in messages if m["role"] == "user"]
        if not users or not users[-1].strip():
            raise APIError(
                400, "messages must end their user turns with a non-empty user message", "messages"
            )
        if len(messages) > engine.prompt_tokens:  # each message takes at least one token
            raise APIError(
                400,
                f"messages: {len(messages)} messages; this server accepts at most {engine.prompt_tokens}",
                "messages",
                "context_length_exceeded",
            )
        engine.check_chars(sum(len(m["content"]) for m in messages), "messages")
        prompts = Prompts([users[-1]], [await encode("messages", lm.encode_chat, messages)])
        max_tokens = body.max_completion_tokens or body.max_tokens
        if max_tokens is None:  # as long as the limit and the context allow
            max_tokens = max(min(limits.max_tokens, lm.max_context - len(prompts.ids[0])), 1)
        return await answer(body, prompts, chat=True, max_tokens=max_tokens, prompt_param="messages")

    def check_request(body) -> None:
        """The checks that need neither the prompt's tokens nor the method's config."""
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
        if len(body.stop) > MAX_STOPS or not all(body.stop):
            raise APIError(400, f"stop must be at most {MAX_STOPS} non-empty strings", "stop")

    async def encode(param: str, fn, *args, **kwargs):
        """Tokenise in a worker thread: a long prompt must not hold up the event loop."""
        try:
            return await run_in_threadpool(fn, *args, **kwargs)
        except Exception as err:  # client text meets the tokenizer and chat template (roles out of order...)
            log.warning("tokenising %s failed", param, exc_info=True)
            first = (str(err).strip().splitlines() or [""])[0]
            message = f"{param}: the model's tokenizer refused it: {type(err).__name__}: {first}"
            raise APIError(400, message, param) from None

    async def answer(body, prompts: Prompts, *, chat: bool, max_tokens: int, prompt_param: str):
        stops = body.stop
        key, work = await run_in_threadpool(
            engine.prepare,
            body.alignment,
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
            return await stream(
                head, key, work, chat=chat, stops=stops, include_usage=include_usage, body=body
            )
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
        except QueueFull as err:
            raise APIError(
                429,
                f"the server is busy: {err}; retry in {RETRY_AFTER_S} s",
                None,
                "rate_limit_exceeded",
                {"Retry-After": str(RETRY_AFTER_S)},
            ) from None
        except RewardError as err:  # the reward failed on the answers: not the request's fault
            log.error("reward failed: %s", err)
            raise APIError(500, f"the sampler failed: {err}") from err
        except DGAlignError as err:  # settings each valid but not together, found by the sampler
            message = str(err).replace("--set ", "alignment.params.")
            raise APIError(400, f"alignment.params: {message}", "alignment.params") from None
        except Exception as err:
            log.exception("sampler failed")
            raise APIError(500, f"the sampler failed: {type(err).__name__}: {err}") from err

    async def stream(
        head: dict, key, work: Work, *, chat: bool, stops: list[str], include_usage: bool, body
    ) -> StreamingResponse:
        """Queue the job and wait for its first token (or its end): a job that fails before then is answered
        with its error status; after that, server-sent events in OpenAI's chunk format."""
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
        first = await events.get()  # a token, or None: the job has ended
        if first is None:
            task.result()  # raises the job's APIError: an error status, not a 200 stream
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

        async def events_of() -> AsyncIterator[str]:
            """The chunks, ending with `data: [DONE]` whatever happens (a failure is an error event first)."""
            try:
                if chat:
                    for i in range(work.choices):
                        yield event([choice(i, "", role=True)])
                item = first
                while item is not None:
                    index, token = item
                    if delta := texts[index].push(token):
                        yield event([choice(index, delta)])
                    item = await events.get()
                result = task.result()
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
            except APIError as err:
                yield sse(err.body())
            except Exception as err:
                log.exception("stream failed")
                yield sse(APIError(500, f"the stream failed: {type(err).__name__}: {err}").body())
            yield "data: [DONE]\n\n"

        return StreamingResponse(events_of(), media_type="text/event-stream")

    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    app.add_middleware(BearerAuth, api_key=api_key)  # before the body is read
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts 401s and 413s too
    return app


def error_response(err: APIError) -> Response:
    """OpenAI's error body; ASCII JSON, so no text a client sent can break its encoding."""
    return Response(json.dumps(err.body()), err.status, err.headers, media_type="application/json")


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
    """ASGI middleware: with a key set, every path but OPEN_PATHS needs `Authorization: Bearer KEY` (401
    otherwise). The scheme is matched in any case (RFC 9110 §11.1), the key in constant time."""

    def __init__(self, app, api_key: str | None):
        self.app = app
        self.expected = None if api_key is None else api_key.encode()

    async def __call__(self, scope, receive, send):
        if self.expected is not None and scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").strip().partition(b" ")
            key_ok = hmac.compare_digest(given.strip(), self.expected)  # compared whatever the scheme
            if not (key_ok and scheme.lower() == b"bearer"):
                err = APIError(
                    401, "missing or wrong API key: send Authorization: Bearer KEY", None, "invalid_api_key"
                )
                await error_response(err)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413 before any of it is parsed.

    The body is read here (the endpoints read it whole anyway) and replayed to the app; one whose
    Content-Length is over the limit is refused without reading it.
    """

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        too_large = declared.isdigit() and int(declared) > self.limit
        chunks, size, more = [], 0, not too_large
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            too_large = size > self.limit
            more = message.get("more_body", False) and not too_large
        if too_large:
            err = APIError(
                413,
                f"the request body is larger than this server's limit of {self.limit} bytes",
                None,
                "request_too_large",
            )
            await error_response(err)(scope, receive, send)
            return
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: the disconnect a streaming response waits for
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
