"""Request bodies of the OpenAI-compatible API, plus dgalign's `alignment` field.

Field names, defaults and ranges follow OpenAI's API reference; limits that depend on the
served model or the operator (max_tokens, n, prompt length) are checked by the app. Fields
OpenAI defines but dgalign cannot honour are refused by name (`UNSUPPORTED`), any other extra
field is ignored, as OpenAI-compatible servers do. Every string a request carries must be
text that UTF-8 can encode: JSON can spell a lone surrogate ("\\ud800"), which no tokenizer takes.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from pydantic_core import PydanticCustomError

MAX_SPEC_CHARS = 1000  # longest reward spec or method name (specs are parsed with regular expressions)


def _text(value: str) -> str:
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError as err:
            raise PydanticCustomError(
                "invalid_text",
                "must be valid Unicode text; found a lone surrogate at character {at}",
                {"at": err.start},
            ) from None
    return value


def _one_or_list(value):
    """A string is a one-item list, null an empty one."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise PydanticCustomError("text_or_list", "must be a string or a list of strings")
    return value


def _scalar(value: Any) -> Any:
    """An `alignment.params` value: a JSON number, boolean, string or null (it is parsed like `--set`)."""
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise PydanticCustomError("finite_number", "must be a finite number")
    if value is None or isinstance(value, bool | int | float):
        return value
    raise PydanticCustomError("scalar", "must be a number, a boolean, a string or null")


Text = Annotated[str, AfterValidator(_text)]
Name = Annotated[str, StringConstraints(max_length=MAX_SPEC_CHARS), AfterValidator(_text)]
Texts = Annotated[list[Text], BeforeValidator(_one_or_list)]
Param = Annotated[Any, AfterValidator(_scalar)]


class Alignment(BaseModel):
    """Which sampler answers: absent means plain sampling (`base`) with no reward."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    method: Name = "base"  # a `dgalign methods` name
    reward: Name | None = None  # reward spec, e.g. "toxicity:1,sentiment:0.5"; required by guided methods
    beta: float = 1.0  # target strength in p·exp(β r)
    params: dict[Text, Param] = {}  # the method's config fields, e.g. {"n": 4}


class StreamOptions(BaseModel):
    include_usage: bool = False  # one last chunk with `usage` and no choices


class _Common(BaseModel):
    """Fields shared by both endpoints."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: Name
    n: int = Field(1, ge=1)  # choices per prompt (upper limit: the server's --max-n)
    temperature: float = Field(1.0, gt=0, le=2)  # 0 (greedy) is not a sampler: use a small value
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)  # reproducible answers; never batched with others
    stop: Texts = []  # cut the text at the first of these (at most 4); a string is one stop
    stream: bool = False
    stream_options: StreamOptions | None = None
    alignment: Alignment | None = None


class CompletionRequest(_Common):
    prompt: Texts  # raw text continued as is (no chat template); a list is several prompts
    max_tokens: int = Field(16, ge=1)  # OpenAI's default for completions


class TextPart(BaseModel):
    """An OpenAI content part; dgalign serves text only (no image, audio or file parts)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text"]
    text: Text


def _parts(value):
    """Content given as a string is one text part."""
    if isinstance(value, str):
        return [{"type": "text", "text": value}]
    if not isinstance(value, list):
        raise PydanticCustomError("content", 'must be a string or a list of {"type": "text", "text": ...}')
    return value


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[list[TextPart], BeforeValidator(_parts)]  # text, or [{"type": "text", "text": ...}]

    def text(self) -> str:
        return "".join(part.text for part in self.content)


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

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,  # e.g. Retry-After on a 429
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers

    @property
    def type(self) -> str:
        if self.status == 429:
            return "rate_limit_error"
        return "server_error" if self.status >= 500 else "invalid_request_error"

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
