"""The endpoints beside generation: vLLM's tokenizer endpoints and dgalign's reward scoring.

    GET /tokenizer_info · POST /tokenize · POST /detokenize · POST /v1/score

Eval tools that count tokens themselves (lm-evaluation-harness's `tokenizer_backend=remote`) read
the served model's tokenizer through vLLM's three endpoints; `/tokenize` gives exactly the ids
`/v1/completions` uses for the same text (so `add_special_tokens` is accepted and changes nothing;
the backend's raw encoding decides). The LM protocol does not spell special tokens as text, so
`/tokenizer_info` reports their ids (`eos_token_ids`) and null for `eos_token`, `bos_token` and
`pad_token`. `/v1/score` is a reward of (prompt, completion) pairs, no generation:
`{"model", "reward": SPEC, "prompt": str | list, "completion": str | list}` (one prompt for every
completion, or one per completion) -> `{"object": "list", "data": [{"index", "reward"}]}`, the spec
checked as `alignment.reward` is, the call queued with the sampler calls (one model thread).
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

from .batcher import QueueFull
from .engine import ScoreWork
from .generation import Generation, abandon, busy, client_left
from .schemas import APIError, DetokenizeRequest, ScoreRequest, TokenizeRequest

log = logging.getLogger("dgalign.server")


class Utility:
    """The tokenizer and scoring endpoints, sharing the generation endpoints' model, engine and queue."""

    def __init__(self, generation: Generation):
        self.gen = generation
        self.lm = generation.lm
        self.engine = generation.engine

    def register(self, app: FastAPI) -> None:
        app.get("/tokenizer_info")(self.tokenizer_info)
        app.post("/tokenize")(self.tokenize)
        app.post("/detokenize")(self.detokenize)
        app.post("/v1/score")(self.score)

    async def tokenizer_info(self):
        return {
            "model": self.gen.name,
            "vocab_size": self.lm.vocab_size,
            "max_model_len": self.lm.max_context,
            "eos_token_ids": list(self.lm.eos_token_ids),
            "pad_token_id": self.lm.pad_token_id,
            "eos_token": None,
            "bos_token": None,
            "pad_token": None,
            "chat_template": None,
        }

    async def tokenize(self, body: TokenizeRequest):
        self.gen.check_model(body.model)
        self.engine.check_chars(len(body.prompt), "prompt")
        (ids,) = await self.gen.encode("prompt", self.lm.encode, [body.prompt], raw=True)
        return {"count": len(ids), "max_model_len": self.lm.max_context, "tokens": ids}

    async def detokenize(self, body: DetokenizeRequest):
        self.gen.check_model(body.model)
        self.engine.check_token_ids(body.tokens, "tokens")
        return {"prompt": await run_in_threadpool(self.lm.decode, body.tokens)}

    async def score(self, body: ScoreRequest, request: Request):
        self.gen.check_model(body.model)
        prompts, completions = body.prompt, body.completion
        if not prompts or not completions:
            raise APIError(400, "prompt and completion must each be a string or a non-empty list of them",
                           "prompt" if not prompts else "completion")
        if len(prompts) == 1:
            prompts = prompts * len(completions)
        if len(prompts) != len(completions):
            raise APIError(400, f"completion: {len(completions)} completions for {len(prompts)} prompts; give one "
                           "prompt for all of them, or one per completion", "completion")
        if len(completions) > self.gen.max_queue:
            raise APIError(400, f"completion: {len(completions)} completions; this server takes at most "
                           f"{self.gen.max_queue} per request", "completion")
        for param, texts in [("prompt", prompts), ("completion", completions)]:
            self.engine.check_chars(max(len(t) for t in texts), param)
        reward = await run_in_threadpool(self.engine.reward, body.reward, "reward")
        work = ScoreWork(reward, prompts, completions)
        task = asyncio.ensure_future(self.submit(work))
        if await client_left(request, task):
            raise abandon(work, task)
        values, cost = task.result()
        return {
            "object": "list",
            "model": self.gen.name,
            "data": [{"index": i, "reward": value} for i, value in enumerate(values)],
            "dgalign": {"reward": body.reward, "cost": cost},
        }

    async def submit(self, work: ScoreWork) -> tuple[list[float], dict]:
        """Queue the reward call alone (its own key): the model thread runs it between sampler calls."""
        try:
            return await self.gen.batcher.submit(("score", object()), len(work.prompts), work)
        except QueueFull as err:
            raise busy(err) from None
        except Exception as err:  # the reward failed on the texts: not the request's fault
            log.exception("reward failed")
            raise APIError(500, f"the reward failed: {type(err).__name__}: {err}") from err
