"""The two generation endpoints, `/v1/completions` and `/v1/chat/completions`, and what they share.

Each endpoint turns its body into `Prompts`, then `answer` checks and queues the job and builds the
response (whole, or as server-sent events); `final_choice` is the one place a choice's text and
finish reason are made, for both endpoints and both response kinds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..errors import DGAlignError, RewardError
from ..types import LM, Prompts
from .batcher import Batcher, QueueFull
from .engine import Answer, Engine, Work
from .metrics import Metrics
from .schemas import UNSUPPORTED, APIError, ChatRequest, CompletionRequest
from .streaming import TextStream, cut_at_stop

log = logging.getLogger("dgalign.server")

MAX_STOPS = 4  # OpenAI's limit on stop strings
RETRY_AFTER_S = 1  # what a 429 tells the client to wait


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


class Generation:
    """The state the generation endpoints share: the model, its engine, the batcher and the metrics."""

    def __init__(self, lm: LM, engine: Engine, batcher: Batcher, metrics: Metrics, max_queue: int):
        self.lm, self.engine, self.batcher, self.metrics, self.max_queue = lm, engine, batcher, metrics, max_queue

    def register(self, app: FastAPI) -> None:
        app.post("/v1/completions")(self.completions)
        app.post("/v1/chat/completions")(self.chat_completions)

    # -- the endpoints -----------------------------------------------------------------------------
    async def completions(self, body: CompletionRequest):
        self.check_request(body)
        texts = body.prompt
        if not texts or not all(t.strip() for t in texts):
            raise APIError(400, "prompt must be non-empty text (or a non-empty list of them)", "prompt")
        if len(texts) > self.max_queue:
            raise APIError(
                400, f"prompt: {len(texts)} prompts; this server takes at most {self.max_queue} per request", "prompt"
            )
        self.engine.check_chars(max(len(t) for t in texts), "prompt")
        ids = await self.encode("prompt", self.lm.encode, texts, raw=True)
        return await self.answer(body, Prompts(texts, ids), chat=False, max_tokens=body.max_tokens,
                                 prompt_param="prompt")

    async def chat_completions(self, body: ChatRequest):
        self.check_request(body)
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
        return await self.answer(body, prompts, chat=True, max_tokens=max_tokens, prompt_param="messages")

    # -- shared steps ------------------------------------------------------------------------------
    def check_request(self, body) -> None:
        """The checks that need neither the prompt's tokens nor the method's config."""
        if body.model != self.lm.name:
            raise APIError(
                404,
                f"model {body.model!r} is not served here; this server serves {self.lm.name!r}",
                "model",
                "model_not_found",
            )
        extra = body.model_extra or {}
        for name, neutral in UNSUPPORTED.items():
            if name in extra and extra[name] not in neutral:
                raise APIError(400, f"{name} is not supported by dgalign", name, "unsupported_parameter")
        if len(body.stop) > MAX_STOPS or not all(body.stop):
            raise APIError(400, f"stop must be at most {MAX_STOPS} non-empty strings", "stop")

    async def encode(self, param: str, fn, *args, **kwargs):
        """Tokenise in a worker thread: a long prompt must not hold up the event loop."""
        try:
            return await run_in_threadpool(fn, *args, **kwargs)
        except Exception as err:  # client text meets the tokenizer and chat template (roles out of order...)
            log.warning("tokenising %s failed", param, exc_info=True)
            first = (str(err).strip().splitlines() or [""])[0]
            raise APIError(400, f"{param}: the model's tokenizer refused it: {type(err).__name__}: {first}",
                           param) from None

    def final_choice(self, work: Work, text: str, tokens: list[int], stops: list[str]) -> tuple[str, str]:
        """A finished choice's text, cut at the first stop string, and its finish reason."""
        text, stopped = cut_at_stop(text, stops)
        return text, "stop" if stopped else self.engine.finish_reason(tokens, work.cfg.max_new_tokens)

    async def answer(self, body, prompts: Prompts, *, chat: bool, max_tokens: int, prompt_param: str):
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
        )
        self.metrics.prompt_tokens.inc(sum(len(ids) for ids in prompts.ids))
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", "created": int(time.time()),
                "model": self.lm.name}
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return await self.stream(head, key, work, chat=chat, include_usage=include_usage, body=body)
        result = await self.submit(key, work)
        choices, usage = [], usage_of(prompts, result)
        for i, (text, tokens, reward_value) in enumerate(
            zip(result.texts, result.token_ids, result.rewards, strict=True)
        ):
            text, finish = self.final_choice(work, text, tokens, body.stop)
            choice = {"index": i, "logprobs": None, "finish_reason": finish, "reward": reward_value}
            choice |= {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
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

    async def stream(self, head: dict, key, work: Work, *, chat: bool, include_usage: bool, body) -> StreamingResponse:
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
        first = await events.get()  # a token, or None: the job has ended
        if first is None:
            task.result()  # raises the job's APIError: an error status, not a 200 stream
        return StreamingResponse(self.events(first, events, task, head, work, chat, include_usage, body),
                                 media_type="text/event-stream")

    async def events(self, first, events: asyncio.Queue, task: asyncio.Task, head: dict, work: Work, chat: bool,
                     include_usage: bool, body) -> AsyncIterator[str]:
        """The chunks, ending with `data: [DONE]` whatever happens (a failure is an error event first)."""
        texts = [TextStream(self.lm.decode, body.stop) for _ in range(work.choices)]
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
                text, finish = self.final_choice(work, text, tokens, body.stop)
                if delta := texts[i].finish(text):
                    yield event([choice(i, delta)])
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
