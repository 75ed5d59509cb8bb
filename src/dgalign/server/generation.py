"""The two generation endpoints, `/v1/completions` and `/v1/chat/completions`, and what they share.

Each endpoint turns its body into `Prompts`, then `answer` checks and queues the job and builds the
response (whole, or as server-sent events); `final_choice` is the one place a choice's text, tokens
and finish reason are made, for both endpoints and both response kinds.

A client that disconnects abandons its job. Still queued, the job is dropped and never runs. Running,
its sampler call goes on for the other requests that share it and stops at its next step (token)
once all of them have left; the reward scoring of a step is not interrupted. A stream stops sending
and the job stops feeding it as soon as the client leaves; a non-streaming request is watched for
the disconnect while it waits, and is logged as 499 (client closed request) in the metrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..errors import DGAlignError, RewardError
from ..types import LM, Prompts
from .batcher import Batcher, QueueFull
from .engine import Answer, Engine, Work
from .logprobs import before_cut, chat_logprobs, completion_logprobs
from .metrics import Metrics
from .schemas import UNSUPPORTED, APIError, ChatRequest, CompletionRequest, neutral
from .streaming import TextStream, cut_at_stop

log = logging.getLogger("dgalign.server")

MAX_STOPS = 4  # OpenAI's limit on stop strings
RETRY_AFTER_S = 1  # what a 429 tells the client to wait


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


@dataclass
class Final:
    """A finished choice as the client sees it."""

    text: str  # cut after the first stop token id, then at the first stop string
    finish: str  # "stop" or "length"
    tokens: list[int]  # the answer's tokens behind `text`, with the EOS that ended it


async def disconnected(request: Request) -> None:
    """Return once the client has closed the connection (ASGI's http.disconnect; the body was read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def client_left(request: Request, waiting: asyncio.Future) -> bool:
    """Wait for `waiting` or the client's disconnect; True when the client left first."""
    gone = asyncio.ensure_future(disconnected(request))
    try:
        await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    return not waiting.done()


def busy(err: QueueFull) -> APIError:
    return APIError(
        429,
        f"the server is busy: {err}; retry in {RETRY_AFTER_S} s",
        None,
        "rate_limit_exceeded",
        {"Retry-After": str(RETRY_AFTER_S)},
    )


def abandon(work, task: asyncio.Future) -> APIError:
    """Give up a job whose client left: a queued job is dropped; a running call stops once all its clients left."""
    work.abandoned = True
    task.cancel()
    return APIError(499, "the client closed the connection before the answer was ready", None,
                    "client_closed_request")


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


class Generation:
    """The state the generation endpoints share: the model, its engine, the batcher and the metrics."""

    def __init__(self, lm: LM, engine: Engine, batcher: Batcher, metrics: Metrics, max_queue: int, name: str):
        self.lm, self.engine, self.batcher, self.metrics, self.max_queue = lm, engine, batcher, metrics, max_queue
        self.name = name  # the model name clients send (--served-model-name)

    def register(self, app: FastAPI) -> None:
        app.post("/v1/completions")(self.completions)
        app.post("/v1/chat/completions")(self.chat_completions)

    # -- the endpoints -----------------------------------------------------------------------------
    async def completions(self, body: CompletionRequest, request: Request):
        self.check_request(body)
        prompts = body.prompt
        if body.max_tokens == 0 and not body.echo:
            raise APIError(400, "max_tokens must be greater than or equal to 1; 0 is allowed only with echo "
                           "(the prompt's log-probs, nothing drawn)", "max_tokens")
        if len(prompts) > self.max_queue:
            raise APIError(
                400, f"prompt: {len(prompts)} prompts; this server takes at most {self.max_queue} per request",
                "prompt",
            )
        if prompts and all(isinstance(p, list) for p in prompts):  # token ids: OpenAI's other two forms
            for ids in prompts:
                self.engine.check_prompt_tokens(len(ids), "prompt")
                self.engine.check_token_ids(ids, "prompt")
            ids = prompts
            texts = await self.encode("prompt", lambda batch: [self.lm.decode(p) for p in batch], ids)
        else:
            if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
                raise APIError(400, "prompt must be non-empty text (or a non-empty list of them), or token ids "
                               "(a list of integers, or a list of such lists), not a mix", "prompt")
            texts = prompts
            self.engine.check_chars(max(len(t) for t in texts), "prompt")
            ids = await self.encode("prompt", self.lm.encode, texts, raw=True)
        return await self.answer(body, Prompts(texts, ids), request, chat=False, max_tokens=body.max_tokens,
                                 prompt_param="prompt", logprobs=body.logprobs, echo=body.echo)

    async def chat_completions(self, body: ChatRequest, request: Request):
        self.check_request(body)
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages
        ]
        users = [m["content"] for m in messages if m["role"] == "user"]
        if not users or not users[-1].strip():
            raise APIError(400, "messages must end their user turns with a non-empty user message", "messages")
        if len(messages) > self.engine.prompt_tokens:  # each message takes at least one token
            raise APIError(
                400,
                f"messages: {len(messages)} messages; this server accepts at most {self.engine.prompt_tokens}",
                "messages",
                "context_length_exceeded",
            )
        self.engine.check_chars(sum(len(m["content"]) for m in messages), "messages")
        prompts = Prompts([users[-1]], [await self.encode("messages", self.lm.encode_chat, messages)])
        max_tokens = body.max_completion_tokens or body.max_tokens
        if max_tokens is None:  # as long as the limit and the context allow
            max_tokens = max(min(self.engine.limits.max_tokens, self.lm.max_context - len(prompts.ids[0])), 1)
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        return await self.answer(body, prompts, request, chat=True, max_tokens=max_tokens, prompt_param="messages",
                                 logprobs=logprobs)

    # -- shared steps ------------------------------------------------------------------------------
    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.name:
            raise APIError(
                404,
                f"model {model!r} is not served here; this server serves {self.name!r}",
                "model",
                "model_not_found",
            )

    def check_request(self, body) -> None:
        """The checks that need neither the prompt's tokens nor the method's config."""
        self.check_model(body.model)
        extra = body.model_extra or {}
        for name, values in UNSUPPORTED.items():
            if name in extra and not neutral(extra[name], values):
                raise APIError(400, f"{name} is not supported by dgalign", name, "unsupported_parameter")
        if len(body.stop) > MAX_STOPS or not all(body.stop):
            raise APIError(400, f"stop must be at most {MAX_STOPS} non-empty strings", "stop")
        self.engine.check_token_ids(body.stop_token_ids or [], "stop_token_ids")
        if body.stream:
            for param in ("logprobs", "echo"):
                value = getattr(body, param, None)
                if value is not None and value is not False:  # logprobs 0 asks for them too
                    raise APIError(400, f"{param} is not sent in streams; ask without stream", param)

    async def encode(self, param: str, fn, *args, **kwargs):
        """Tokenise in a worker thread: a long prompt must not hold up the event loop."""
        try:
            return await run_in_threadpool(fn, *args, **kwargs)
        except Exception as err:  # client text meets the tokenizer and chat template (roles out of order...)
            log.warning("tokenising %s failed", param, exc_info=True)
            first = (str(err).strip().splitlines() or [""])[0]
            raise APIError(400, f"{param}: the model's tokenizer refused it: {type(err).__name__}: {first}",
                           param) from None

    def final_choice(self, work: Work, text: str, tokens: list[int], body) -> Final:
        """A finished choice: cut after its first stop token id (kept, as vLLM keeps it; a special token has no
        text), then its text at the first stop string (its tokens, when logprobs were asked for, to those that
        begin before the cut)."""
        stop_ids = set(body.stop_token_ids or ())
        at = next((i for i, t in enumerate(tokens) if t in stop_ids), None)
        if at is not None:
            tokens = tokens[: at + 1]
            text = self.lm.decode(tokens)
        text, stopped = cut_at_stop(text, body.stop)
        if stopped and work.logprobs is not None:
            tokens = before_cut(self.lm.decode, tokens, len(text))
        if stopped or at is not None:
            finish = "stop"
        elif work.max_tokens == 0:
            finish = "length"
        else:
            finish = self.engine.finish_reason(tokens, work.max_tokens)
        return Final(text, finish, tokens)

    def logprobs_of(self, work: Work, result: Answer, i: int, final: Final, chat: bool, echoed: str) -> dict | None:
        """The choice's `logprobs` in its endpoint's shape, or None when not asked for."""
        if result.scored is None:
            return None
        if chat:
            return chat_logprobs(self.lm.decode, result.scored[i], final.tokens)
        prompt = work.prompts.ids[i // work.cfg.num_samples]
        return completion_logprobs(self.lm.decode, result.scored[i], prompt, final.tokens, len(echoed))

    async def answer(self, body, prompts: Prompts, request: Request, *, chat: bool, max_tokens: int,
                     prompt_param: str, logprobs: int | None = None, echo: bool = False):
        key, work = await run_in_threadpool(
            self.engine.prepare,
            body.alignment,
            prompts,
            max_tokens=max_tokens,
            n=body.n,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            stream=body.stream,
            prompt_param=prompt_param,
            top_k=body.top_k,
            logprobs=logprobs,
            echo=echo,
        )
        self.metrics.prompt_tokens.inc(sum(len(ids) for ids in prompts.ids))
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", "created": int(time.time()),
                "model": self.name}
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return await self.stream(head, key, work, request, chat=chat, include_usage=include_usage, body=body)
        task = asyncio.ensure_future(self.submit(key, work))
        if await client_left(request, task):
            raise abandon(work, task)
        result = task.result()
        choices, usage = [], usage_of(prompts, result)
        for i, (text, tokens, reward_value) in enumerate(
            zip(result.texts, result.token_ids, result.rewards, strict=True)
        ):
            final = self.final_choice(work, text, tokens, body)
            echoed = prompts.texts[i // work.cfg.num_samples] if echo else ""
            choice = {"index": i, "logprobs": self.logprobs_of(work, result, i, final, chat, echoed),
                      "finish_reason": final.finish, "reward": reward_value}
            choice |= {"message": {"role": "assistant", "content": final.text}} if chat else {"text": echoed + final.text}
            choices.append(choice)
        self.metrics.generated_tokens.labels(work.method).inc(usage["completion_tokens"])
        return {
            **head,
            "object": "chat.completion" if chat else "text_completion",
            "choices": choices,
            "usage": usage,
            "dgalign": dgalign_info(body, work, result),
        }

    async def submit(self, key, work: Work) -> Answer:
        try:
            return await self.batcher.submit(key, len(work.prompts), work)
        except QueueFull as err:
            raise busy(err) from None
        except RewardError as err:  # the reward failed on the answers: not the request's fault
            log.error("reward failed: %s", err)
            raise APIError(500, f"the sampler failed: {err}") from err
        except DGAlignError as err:  # settings each valid but not together, found by the sampler
            message = str(err).replace("--set ", "alignment.params.")
            raise APIError(400, f"alignment.params: {message}", "alignment.params") from None
        except Exception as err:
            log.exception("sampler failed")
            raise APIError(500, f"the sampler failed: {type(err).__name__}: {err}") from err

    async def stream(self, head: dict, key, work: Work, request: Request, *, chat: bool, include_usage: bool,
                     body) -> StreamingResponse:
        """Queue the job and wait for its first token (or its end): a job that fails before then is answered
        with its error status; after that, server-sent events in OpenAI's chunk format."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        if work.stream_tokens:
            work.on_token = lambda choice, token: loop.call_soon_threadsafe(events.put_nowait, (choice, token))
        task = asyncio.ensure_future(self.submit(key, work))

        def finished(done: asyncio.Task) -> None:
            # queued after every token: the loop runs callbacks in the order they were scheduled
            events.put_nowait(None)
            if not done.cancelled():
                done.exception()  # retrieved here too, in case the client left before the end

        task.add_done_callback(finished)
        getting = asyncio.ensure_future(events.get())  # a token, or None: the job has ended
        if await client_left(request, getting):
            getting.cancel()
            raise abandon(work, task)
        first = getting.result()
        if first is None:
            task.result()  # raises the job's APIError: an error status, not a 200 stream
        return StreamingResponse(self.events(first, events, task, head, work, chat, include_usage, body),
                                 media_type="text/event-stream")

    async def events(self, first, events: asyncio.Queue, task: asyncio.Task, head: dict, work: Work, chat: bool,
                     include_usage: bool, body) -> AsyncIterator[str]:
        """The chunks, ending with `data: [DONE]` whatever happens (a failure is an error event first). A client
        that leaves closes this generator: its job is abandoned."""
        stop_ids = frozenset(body.stop_token_ids or ())
        texts = [TextStream(self.lm.decode, body.stop, stop_ids) for _ in range(work.choices)]
        kind = "chat.completion.chunk" if chat else "text_completion"

        def event(choices: list[dict], **top) -> str:
            return sse({**head, "object": kind, "choices": choices, **top})

        def choice(index: int, text: str | None = None, *, role: bool = False, finish: str | None = None,
                   **extra) -> dict:
            out = {"index": index, "logprobs": None, "finish_reason": finish, **extra}
            if chat:
                out["delta"] = ({"role": "assistant"} if role else {}) | ({} if text is None else {"content": text})
            else:
                out["text"] = text or ""
            return out

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
            self.metrics.generated_tokens.labels(work.method).inc(usage["completion_tokens"])
            info = dgalign_info(body, work, result)
            for i, (text, tokens, reward_value) in enumerate(
                zip(result.texts, result.token_ids, result.rewards, strict=True)
            ):
                final = self.final_choice(work, text, tokens, body)
                if delta := texts[i].finish(final.text):
                    yield event([choice(i, delta)])
                last = {"dgalign": info} if i == work.choices - 1 else {}
                yield event([choice(i, finish=final.finish, reward=reward_value)], **last)
            if include_usage:
                yield event([], usage=usage, dgalign=info)
        except APIError as err:
            yield sse(err.body())
        except Exception as err:
            log.exception("stream failed")
            yield sse(APIError(500, f"the stream failed: {type(err).__name__}: {err}").body())
        finally:
            if not task.done():  # the client left mid-stream (the response cancelled or closed this generator)
                abandon(work, task)
        yield "data: [DONE]\n\n"
