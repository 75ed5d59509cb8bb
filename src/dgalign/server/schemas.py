"""Request bodies of the OpenAI-compatible API, plus dgalign's `alignment` field.

Field names, defaults and ranges follow OpenAI's API reference; limits that depend on the
served model or the operator (max_tokens, n, prompt length) are checked by the app. Fields
OpenAI defines but dgalign cannot honour are refused by name (`UNSUPPORTED`), any other extra
field is ignored, as OpenAI-compatible servers do.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Alignment(BaseModel):
    """Which sampler answers: absent means plain sampling (`base`) with no reward."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    method: str = "base"  # a `dgalign methods` name
    reward: str | None = None  # reward spec, e.g. "toxicity:1,sentiment:0.5"; required by guided methods
    beta: float = 1.0  # target strength in p·exp(β r)
    params: dict[str, int | float | bool | str | None] = {}  # the method's config fields, e.g. {"n": 4}


class StreamOptions(BaseModel):
    include_usage: bool = False  # one last chunk with `usage` and no choices


class _Common(BaseModel):
    """Fields shared by both endpoints."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str
    n: int = Field(1, ge=1)  # choices per prompt (upper limit: the server's --max-n)
    temperature: float = Field(1.0, gt=0, le=2)  # 0 (greedy) is not a sampler: use a small value
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)  # reproducible answers; never batched with others
    stop: str | list[str] | None = None  # cut the text at the first of these (at most 4)
    stream: bool = False
    stream_options: StreamOptions | None = None
    alignment: Alignment | None = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(_Common):
    prompt: str | list[str]  # raw text continued as is (no chat template)
    max_tokens: int = Field(16, ge=1)  # OpenAI's default for completions


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict]  # text, or OpenAI content parts [{"type": "text", "text": ...}]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part["text"] for part in self.content if part.get("type") == "text")


class ChatRequest(_Common):
    messages: list[Message]  # the whole conversation goes through the chat template
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name; wins over max_tokens


# OpenAI fields dgalign does not implement, with the values that mean "not used"
UNSUPPORTED: dict[str, tuple] = {
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "functions": (None, []),
    "response_format": (None, {"type": "text"}),
}


class APIError(Exception):
    """An error answered with OpenAI's body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    @property
    def type(self) -> str:
        return "server_error" if self.status >= 500 else "invalid_request_error"

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
