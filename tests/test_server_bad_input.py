"""Hostile and mistaken clients against `dgalign serve` as an operator starts it: default security
(built-in rewards only, shipped checkpoints by name only), small limits, an API key.

Every bad request must get a 4xx with OpenAI's error body whose message names the field, and the
server must answer the next good request. The catalogue is grouped by kind: what used to be a 500,
names of files or code, oversized requests, and streams (checked before they start).
"""

from __future__ import annotations

import json

import httpx
import pytest

from dgalign.server.engine import Engine, Limits
from dgalign.server.launch import stop_server
from dgalign.server.schemas import Alignment, APIError
from dgalign.types import Prompts
from test_server import KEY, start_server

MAX_PROMPT_TOKENS = 32  # toy context is 64: prompts of at most 32 * 16 = 512 characters
MAX_CHARS = MAX_PROMPT_TOKENS * 16
MAX_QUEUE = 4
MAX_BODY = 200_000
GOOD = {"model": "toy", "prompt": "ab", "max_tokens": 3}
CHAT = {"model": "toy", "messages": [{"role": "user", "content": "ab"}], "max_tokens": 3}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, url = start_server(
        tmp_path_factory.mktemp("server-bad-input"),
        "--model",
        "toy",
        "--api-key",
        KEY,
        "--max-prompt-tokens",
        str(MAX_PROMPT_TOKENS),
        "--max-queue",
        str(MAX_QUEUE),
        "--max-body-bytes",
        str(MAX_BODY),
        "--max-n",
        "4",
    )
    yield url
    stop_server(proc)


def send(url: str, path: str, body: dict | str | bytes, headers: dict | None = None) -> httpx.Response:
    content = body if isinstance(body, str | bytes) else json.dumps(body)  # json.dumps keeps lone surrogates
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}", **(headers or {})}
    return httpx.post(f"{url}{path}", content=content, headers=headers, timeout=30)


def assert_refused(r: httpx.Response, status: int, param: str | None, fragment: str) -> dict:
    """A 4xx with OpenAI's error body, naming `param` in its one-line message."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert "\n" not in error["message"] and "Traceback" not in error["message"]
    assert fragment in error["message"]
    if param is not None:
        assert param in error["message"]
    return error


def assert_still_serving(url: str) -> None:
    r = send(url, "/v1/completions", GOOD)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")


def dga(**params) -> dict:
    return {"alignment": {"method": "dga", "reward": "length", "params": params}}


def content(value) -> dict:
    return {"messages": [{"role": "user", "content": value}]}


C, CH = "/v1/completions", "/v1/chat/completions"
# (endpoint, change to the good body, status, param, a fragment of the message)
CRASHES = [  # each was a 500 (or a silent misreading) before
    (CH, content([{"type": "text"}]), 400, "messages.0.content.0.text", "Field required"),
    (
        CH,
        content([{"type": "image_url", "image_url": {"url": "x"}}]),
        400,
        "messages.0.content.0.type",
        "'text'",
    ),
    (
        CH,
        content([{"type": "text", "text": "a"}, {"type": "input_audio"}]),
        400,
        "messages.0.content.1.type",
        "'text'",
    ),
    (CH, content([{"text": "ab"}]), 400, "messages.0.content.0.type", "Field required"),
    (CH, content([{"type": "text", "text": 5}]), 400, "messages.0.content.0.text", "valid string"),
    (CH, content(["ab"]), 400, "messages.0.content.0", "valid dictionary"),
    (CH, content(5), 400, "messages.0.content", "must be a string or a list"),
    (CH, content(None), 400, "messages.0.content", "must be a string or a list"),
    (CH, {"messages": [{"role": "tool", "content": "ab"}]}, 400, "messages.0.role", "Input should be"),
    (CH, {"messages": "ab"}, 400, "messages", "valid list"),
    (CH, content("ab\ud800"), 400, "messages.0.content.0.text", "lone surrogate"),
    (
        CH,
        content([{"type": "text", "text": "a"}, {"type": "text", "text": "\udfffb"}]),
        400,
        "messages.0.content.1.text",
        "lone surrogate",
    ),
    (C, {"prompt": "ab\ud800"}, 400, "prompt.0", "lone surrogate"),
    (C, {"prompt": ["ab", "\udc00"]}, 400, "prompt.1", "lone surrogate"),
    (C, {"prompt": 5}, 400, "prompt", "a string or a list of strings"),
    (C, {"prompt": [1, 2, 7]}, 400, "prompt", "vocabulary"),
    (C, {"stop": "\ud800"}, 400, "stop.0", "lone surrogate"),
    (C, {"stop": 7}, 400, "stop", "a string or a list of strings"),
    (C, {"model": "to\ud800y"}, 400, "model", "string"),
    (C, {"alignment": {"method": "bon", "reward": "length\ud800"}}, 400, "alignment.reward", "string"),
    (C, {"alignment": {"params": {"top_k": "\ud800"}}}, 400, "alignment.params.top_k", "lone surrogate"),
    (C, {"alignment": {"params": {"top_k": float("nan")}}}, 400, "alignment.params.top_k", "finite"),
    (C, {"alignment": {"params": {"top_k": [1]}}}, 400, "alignment.params.top_k", "a number, a boolean"),
    (C, {"alignment": {"params": {"top_k": {"a": 1}}}}, 400, "alignment.params.top_k", "a number, a boolean"),
    (C, {"alignment": {"params": {"top_k": -1}}}, 400, "alignment.params.top_k", "top_k must be >= 0"),
    (
        C,
        {"alignment": {"method": "bon", "reward": "length", "params": {"n": 0}}},
        400,
        "alignment.params.n",
        "at least 1",
    ),
    (C, dga(schedule="warp"), 400, "alignment.params.schedule", "valid: cosine, linear"),
    (C, dga(init="bogus"), 400, "alignment.params.init", "valid: noise, draft"),
    (C, dga(grad="magic"), 400, "alignment.params.grad", "valid:"),
    (C, dga(value="oracle"), 400, "alignment.params.value", "valid:"),
    (C, dga(steps="many"), 400, "alignment.params.steps", "expected int"),
    (C, dga(t0=2), 400, "alignment.params.t0", "t0 must be in [0, 1]"),
    (C, dga(schedule="linear", init="nope"), 400, "alignment.params.init", "valid: noise, draft"),
    (
        C,
        {"alignment": {"method": "smc", "reward": "length", "params": {"twist": "x"}}},
        400,
        "alignment.params.twist",
        "valid:",
    ),
    (
        C,
        {"alignment": {"method": "smc", "reward": "length", "params": {"resampling": "x"}}},
        400,
        "alignment.params.resampling",
        "valid:",
    ),
    (
        C,
        {"alignment": {"method": "args", "reward": "length", "params": {"mode": "x"}}},
        400,
        "alignment.params.mode",
        "valid:",
    ),
    (
        C,
        {"alignment": {"method": "refine", "reward": "length", "params": {"accept": "x"}}},
        400,
        "alignment.params.accept",
        "greedy, mh",
    ),
    # each field valid, their combination not (found by the sampler, before any answer is sent)
    (C, dga(value="learned"), 400, "alignment.params", "checkpoint"),
    (C, dga(grad="proposal"), 400, "alignment.params", "checkpoint"),
    (C, dga(particles=2, block=2, top_m=3), 400, "alignment.params", "top_m=0"),
    (
        C,
        {"alignment": {"method": "bon", "reward": "length(target=0)"}},
        400,
        "alignment.reward",
        "length target",
    ),
    (C, {"alignment": {"method": "bon", "reward": "learned"}}, 400, "alignment.reward", "path"),
    (C, "[" * 50_000, 400, None, "error parsing the body"),  # nested too deep for the JSON parser
    (C, "", 400, None, "request body"),
]
NAMED_FILES = [  # a client may name only what the server ships
    (C, dga(checkpoint="/etc"), 400, "alignment.params.checkpoint", "sentiment, toxicity"),
    (C, dga(checkpoint="/no/such/dir"), 400, "alignment.params.checkpoint", "sentiment, toxicity"),
    (C, dga(checkpoint="../../../etc"), 400, "alignment.params.checkpoint", "sentiment, toxicity"),
    (C, dga(checkpoint="toxicity/../../dga"), 400, "alignment.params.checkpoint", "sentiment, toxicity"),
    (C, dga(checkpoint=5), 400, "alignment.params.checkpoint", "sentiment, toxicity"),
    (C, dga(checkpoint=None), 400, "alignment.params.checkpoint", "sentiment, toxicity"),
    (C, dga(checkpoint="toxicity"), 400, "alignment.params.checkpoint", "trained for model"),  # not the toy's
    *[
        (
            C,
            {"alignment": {"method": "bon", "reward": spec}},
            400,
            "alignment.reward",
            "built-in rewards only",
        )
        for spec in [
            "learned(path='/etc')",
            "learned(path=/tmp/rm)",
            "hf:gpt2",
            "hf:/etc",
            "os.path:join",
            "subprocess:Popen(args=1)",
            "test_server:slow_reward",
            "length(standardize=2)",  # any other value than true/false is a calibration file
            "length(standardize='/etc/passwd')",
            "truthfulness(data='/etc/passwd')",
            "judge(model='/tmp/model')",
            "judge(model=1)",
            "persona(description=x)",
            "length:1e999",  # not a file, but not finite either
            "length(target=True)",
            "length,sys:exit",
        ]
    ],
]
OVERSIZED = [
    (C, {"prompt": "a" * (MAX_CHARS + 1)}, 400, "prompt", f"at most {MAX_CHARS}"),
    (C, {"prompt": ["ab", "a" * (MAX_CHARS + 1)]}, 400, "prompt", f"at most {MAX_CHARS}"),
    (
        C,
        {"prompt": "ab" * 20},
        400,
        "prompt",
        f"at most {MAX_PROMPT_TOKENS}",
    ),  # under the characters, over the tokens
    (C, {"prompt": ["ab"] * (MAX_QUEUE + 1)}, 400, "prompt", f"at most {MAX_QUEUE} per request"),
    (CH, content("b" * (MAX_CHARS + 1)), 400, "messages", f"at most {MAX_CHARS}"),
    (CH, {"messages": [{"role": "user", "content": "a" * 300}] * 2}, 400, "messages", f"at most {MAX_CHARS}"),
    (
        CH,
        {"messages": [{"role": "user", "content": ""}] * 40 + [{"role": "user", "content": "a"}]},
        400,
        "messages",
        f"at most {MAX_PROMPT_TOKENS}",
    ),
    (C, {"alignment": {"method": "bon", "reward": "length," * 200}}, 400, "alignment.reward", "at most 1000"),
    (C, {"alignment": {"method": "m" * 2000}}, 400, "alignment.method", "at most 1000"),
    (C, {"n": 5}, 400, "n", "at most 4"),
    (C, {"max_tokens": 10**30}, 400, "max_tokens", "at most 512"),
    (C, {"seed": 2**64}, 400, "seed", "less than"),
    (C, {"temperature": 1e999}, 400, "temperature", "finite"),
]
STREAMS = [  # refused with a status before a stream starts, not a 200 with an error event
    (C, {"stream": True, **dga(schedule="warp")}, 400, "alignment.params.schedule", "valid:"),
    (C, {"stream": True, **dga(value="learned")}, 400, "alignment.params", "checkpoint"),
    (C, {"stream": True, **dga(checkpoint="/etc")}, 400, "alignment.params.checkpoint", "toxicity"),
    (C, {"stream": True, "prompt": "a" * (MAX_CHARS + 1)}, 400, "prompt", "characters"),
    (
        C,
        {"stream": True, "alignment": {"method": "bon", "reward": "hf:gpt2"}},
        400,
        "alignment.reward",
        "built-in",
    ),
    (CH, {"stream": True, **content([{"type": "text"}])}, 400, "messages.0.content.0.text", "Field required"),
    (CH, {"stream": True, **content("a\ud800")}, 400, "messages.0.content.0.text", "lone surrogate"),
]


def _cases(kind: str, rows: list) -> list:
    return [pytest.param(*row, id=f"{kind}-{i}") for i, row in enumerate(rows)]


CATALOGUE = (
    _cases("crash", CRASHES)
    + _cases("file", NAMED_FILES)
    + _cases("size", OVERSIZED)
    + _cases("stream", STREAMS)
)


@pytest.mark.parametrize(("path", "change", "status", "param", "fragment"), CATALOGUE)
def test_bad_input_is_a_clean_4xx_and_the_server_keeps_serving(server, path, change, status, param, fragment):
    body = change if isinstance(change, str) else {**(GOOD if path == C else CHAT), **change}
    r = send(server, path, body)
    assert_refused(r, status, param, fragment)
    assert "text/event-stream" not in r.headers["content-type"]
    assert_still_serving(server)


def test_a_refused_checkpoint_path_tells_nothing_about_the_disk(server):
    messages = {
        send(server, C, {**GOOD, **dga(checkpoint=path)}).json()["error"]["message"]
        for path in ["/etc", "/no/such/dir", "/etc/passwd", "/root"]
    }
    assert len(messages) == 1  # the same answer whether the path exists, is a file, or is unreadable
    (message,) = messages
    assert "/etc" not in message and "exist" not in message and "not found" not in message


def test_oversized_bodies_get_413(server):
    for body, headers in [
        (b'{"model": "toy", "prompt": "' + b"a" * (MAX_BODY + 10) + b'"}', None),  # refused by Content-Length
        ((b"a" * 10_000 for _ in range(MAX_BODY // 10_000 + 2)), None),  # chunked: no Content-Length
    ]:
        r = httpx.post(
            f"{server}{C}",
            content=body,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}", **(headers or {})},
            timeout=30,
        )
        error = r.json()["error"]
        assert (
            r.status_code == 413
            and error["code"] == "request_too_large"
            and str(MAX_BODY) in error["message"]
        )
    assert_still_serving(server)


@pytest.mark.parametrize("header", ["Bearer {k}", "bearer {k}", "BEARER {k}", "bEaReR {k}", "Bearer  {k}"])
def test_auth_scheme_is_case_insensitive(server, header):
    r = httpx.get(f"{server}/v1/models", headers={"Authorization": header.format(k=KEY)})
    assert r.status_code == 200


@pytest.mark.parametrize("header", ["Basic {k}", "Bearer {k}x", "{k}", "Bearer", "bearer x{k}", ""])
def test_auth_refuses_other_schemes_and_keys(server, header):
    r = httpx.get(f"{server}/v1/models", headers={"Authorization": header.format(k=KEY)})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_wrong_method_and_path_are_openai_errors(server):
    r = httpx.get(f"{server}{C}", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 405 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.get(f"{server}/v1/nope", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}


# -- what the operator may allow, in process ----------------------------------------------------------
def _prepare(engine: Engine, checkpoint: str):
    alignment = Alignment(method="dga", reward="length", params={"checkpoint": checkpoint})
    return engine.prepare(
        alignment,
        Prompts(["ab"], [[0, 1]]),
        max_tokens=3,
        n=1,
        temperature=1.0,
        top_p=1.0,
        seed=None,
        stream=False,
        prompt_param="prompt",
    )


def test_checkpoint_paths_only_when_allowed(toy, tmp_path):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "dga.json").write_text("{not json")
    (corrupt / "dga.safetensors").write_bytes(b"\0" * 16)
    closed = Engine(toy, Limits())
    with pytest.raises(APIError, match="does not load checkpoints by path") as err:
        _prepare(closed, str(corrupt))
    assert err.value.status == 400 and err.value.param == "alignment.params.checkpoint"
    opened = Engine(toy, Limits(checkpoint_paths=True))  # --allow-checkpoint-paths: the operator's own files
    for path, message in [(tmp_path / "missing", "is not a DGA checkpoint"), (corrupt, "not valid JSON")]:
        with pytest.raises(APIError, match=message) as err:
            _prepare(opened, str(path))
        assert err.value.status == 400 and err.value.param == "alignment.params.checkpoint"
    key, work = _prepare(opened, "")  # no checkpoint: DGA's exact-Tweedie denoiser
    assert work.cfg.checkpoint == ""


def test_a_reward_this_machine_cannot_build_is_refused_without_its_paths(toy, tmp_path, monkeypatch):
    """`harmless` is valid but untrained here: the client learns that, not where the server keeps its files."""
    monkeypatch.setenv("DGALIGN_CACHE", str(tmp_path / "cache"))
    engine = Engine(toy, Limits())
    with pytest.raises(APIError, match="'harmless' is not available on this server") as err:
        engine.reward("harmless")
    assert err.value.status == 400 and err.value.param == "alignment.reward"
    assert str(tmp_path) not in str(err.value) and "train-rm" not in str(err.value)
