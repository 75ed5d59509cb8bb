"""Request bodies of the OpenAI-compatible API, plus dgalign's `alignment` field.

Field names, defaults and ranges follow OpenAI's API reference, plus the vLLM sampling fields
dgalign honours (`top_k`, `stop_token_ids`); limits that depend on the served model or the
operator (max_tokens, n, prompt length, token ids) are checked by the app. Fields OpenAI or vLLM
define but dgalign cannot honour are refused by name unless they hold their neutral value
(`UNSUPPORTED`); any other extra field is ignored, as OpenAI-compatible servers do. Every string a
request carries must be text that UTF-8 can encode: JSON can spell a lone surrogate ("\\ud800"),
which no tokenizer takes.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
)
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


def _prompts(value):
    """A completion prompt in any of OpenAI's four forms (text, a list of texts, token ids, a list of
    token-id lists) as a list of prompts; null is an empty list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise PydanticCustomError(
            "prompt", "must be a string or a list of strings, or token ids (a list of integers, or a list of such lists)"
        )
    if value and all(_is_int(v) for v in value):  # one prompt as token ids
        return [value]
    return value


def _prompt(value: Any) -> str | list[int]:
    """One prompt: text, or a non-empty list of integer token ids (their range is checked by the app)."""
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, list) and value and all(_is_int(v) for v in value):
        return value
    raise PydanticCustomError("prompt", "must be a string or a non-empty list of integer token ids")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
Prompt = Annotated[list[Annotated[Any, AfterValidator(_prompt)]], BeforeValidator(_prompts)]


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
    temperature: float = Field(1.0, ge=0, le=2)  # 0: greedy (the engine keeps the top token only)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)  # vLLM's: keep the k most likely tokens; -1 or 0: off; null: the method's
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)  # reproducible answers; never batched with others
    stop: Texts = []  # cut the text at the first of these (at most 4); a string is one stop
    stop_token_ids: list[StrictInt] | None = None  # vLLM's: end the answer after the first of these token ids
    stream: bool = False
    stream_options: StreamOptions | None = None
    alignment: Alignment | None = None


class CompletionRequest(_Common):
    prompt: Prompt  # raw text continued as is (no chat template), or token ids; a list is several prompts
    max_tokens: int = Field(16, ge=0)  # OpenAI's default for completions; 0 only with echo (score the prompt)
    logprobs: StrictInt | None = Field(None, ge=0, le=5)  # per-token log-probs, with this many top alternatives
    echo: bool = False  # the prompt precedes the answer in `text` (and in `logprobs`, its first token null)


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
    logprobs: bool | None = None  # true: per-token log-probs of the answer's content
    top_logprobs: int | None = Field(None, ge=0, le=20)  # with this many top alternatives (needs logprobs)


class TokenizeRequest(BaseModel):
    """vLLM's /tokenize, as eval tools call it (text only)."""

    model_config = ConfigDict(extra="allow")

    model: Name | None = None
    prompt: Text
    add_special_tokens: bool = True  # accepted; the ids are those /v1/completions uses for this text


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Name | None = None
    tokens: list[StrictInt]


class ScoreRequest(BaseModel):
    """dgalign's /v1/score: a reward of (prompt, completion) pairs, no generation."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: Name
    reward: Name  # a reward spec, checked as alignment.reward is
    prompt: Texts  # one prompt for every completion, or one per completion
    completion: Texts


# OpenAI and vLLM fields dgalign does not implement, with the values that mean "not used" (a value
# matches only in its own JSON type: `true` is not 1). A field an endpoint declares never gets here:
# `echo` is refused on chat only, `top_logprobs` on completions only.
UNSUPPORTED: dict[str, tuple] = {
    # OpenAI
    "echo": (None, False),
    "top_logprobs": (None, 0),
    "suffix": (None, ""),
    "best_of": (None, 1),
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "functions": (None, []),
    "response_format": (None, {"type": "text"}),
    # vLLM's sampling and decoding fields
    "min_p": (None, 0, 0.0),
    "repetition_penalty": (None, 1, 1.0),
    "length_penalty": (None, 1, 1.0),
    "use_beam_search": (None, False),
    "ignore_eos": (None, False),
    "min_tokens": (None, 0),
    "include_stop_str_in_output": (None, False),
    "skip_special_tokens": (None, True),
    "spaces_between_special_tokens": (None, True),
    "allowed_token_ids": (None,),
    "bad_words": (None, []),
    "prompt_logprobs": (None,),
    "truncate_prompt_tokens": (None,),
    "logits_processors": (None, []),
    "return_tokens_as_token_ids": (None, False),
    "structured_outputs": (None,),
    "guided_json": (None,),
    "guided_regex": (None,),
    "guided_choice": (None,),
    "guided_grammar": (None,),
    "add_generation_prompt": (None, True),
    "continue_final_message": (None, False),
}


def neutral(value: Any, values: tuple) -> bool:
    """Whether `value` is one of `values` in the same JSON type (so `true` is not 1, nor 1.5 a 1)."""
    return any(type(value) is type(v) and value == v for v in values)


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
