"""`dgalign serve`: a real server process on a loopback port, driven by the official `openai` client.

The toy LM makes every request take milliseconds; its completions are letters, one token each, so
token counts and rewards are checked exactly. The rewards below are imported by the server
process (this directory is on its PYTHONPATH and it runs with --allow-custom-rewards).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch

from dgalign.eval.exact import toy_reward
from dgalign.server.batcher import Batcher, QueueFull
from dgalign.server.engine import Engine, Limits
from dgalign.server.launch import start_server as launch_server
from dgalign.server.launch import stop_server
from dgalign.server.schemas import APIError
from dgalign.server.streaming import TextStream, cut_at_stop

KEY = "test-key"
SLOW_S = 1.5
MAX_QUEUE = 8


def slow_reward(prompts: list[str], completions: list[str]) -> torch.Tensor:
    time.sleep(SLOW_S)
    return torch.zeros(len(completions))


def failing_reward(prompts: list[str], completions: list[str]) -> torch.Tensor:
    raise RuntimeError("reward exploded")


def prompt_length_reward(prompts: list[str], completions: list[str]) -> torch.Tensor:
    """The length of the prompt text the reward was given."""
    return torch.tensor([float(len(p)) for p in prompts])


# the server process imports the rewards above (`test_server:NAME`) from this directory
SERVER_ENV = {"OMP_NUM_THREADS": "1",
              "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}


def start_server(tmp_path: Path, *args: str, timeout: float = 60.0):
    """`dgalign serve ARGS` (`dgalign.server.launch`), its log in `tmp_path`; (process, url) once /health answers."""
    return launch_server(args, log=tmp_path / "server.log", env=SERVER_ENV, timeout=timeout)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, url = start_server(
        tmp_path_factory.mktemp("server"),
        "--model",
        "toy",
        "--api-key",
        KEY,
        "--allow-custom-rewards",
        "--max-batch",
        "8",
        "--batch-wait-ms",
        "20",
        "--max-n",
        "16",
        "--max-queue",
        str(MAX_QUEUE),
    )
    yield url
    stop_server(proc)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=30)


def post(url: str, path: str, body: dict | str, key: str | None = KEY) -> httpx.Response:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    content = body if isinstance(body, str) else None
    return httpx.post(
        f"{url}{path}", json=None if content else body, content=content, headers=headers, timeout=30
    )


def toy_tokens(text: str, finish: str) -> int:
    """Tokens the toy spent on a completion: one per letter, plus EOS when the model stopped."""
    return len(text) + (finish == "stop")


# -- the OpenAI surface -----------------------------------------------------------------------------
def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["toy"]
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["model"] == "toy"


def test_completion_shape_and_usage(client):
    out = client.completions.create(model="toy", prompt="ab", max_tokens=3, n=5, seed=1)
    assert out.object == "text_completion" and out.model == "toy" and out.id.startswith("cmpl-")
    assert [c.index for c in out.choices] == list(range(5))
    for c in out.choices:
        assert set(c.text) <= set("abc") and len(c.text) <= 3
        assert c.finish_reason == ("length" if len(c.text) == 3 else "stop")
        assert c.model_extra["reward"] is None  # plain sampling, no reward asked for
    assert out.usage.prompt_tokens == 2
    assert out.usage.completion_tokens == sum(toy_tokens(c.text, c.finish_reason) for c in out.choices)
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    info = out.model_extra["dgalign"]
    assert info["method"] == "base" and info["reward"] is None
    assert info["cost"]["lm_forward_tokens"] > 0 and info["cost"]["reward_calls"] == 0


def test_seed_reproduces_and_list_prompts_are_prompt_major(client):
    body = dict(
        model="toy",
        prompt=["ab", "cab"],
        max_tokens=6,
        n=3,
        seed=7,
        extra_body={"alignment": {"reward": "test_server:prompt_length_reward"}},
    )
    first, again = client.completions.create(**body), client.completions.create(**body)
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert [c.model_extra["reward"] for c in first.choices] == [2.0] * 3 + [3.0] * 3
    assert first.usage.prompt_tokens == 5
    other = client.completions.create(**{**body, "seed": 8})
    assert [c.text for c in other.choices] != [c.text for c in first.choices]


def test_chat_uses_whole_conversation_and_reward_sees_last_user_turn(client):
    messages = [
        {"role": "system", "content": "Be kind."},  # no toy letters: no tokens
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": "c"},
        {"role": "user", "content": "bab"},
    ]
    out = client.chat.completions.create(
        model="toy",
        messages=messages,
        max_tokens=4,
        n=2,
        seed=0,
        extra_body={"alignment": {"method": "base", "reward": "test_server:prompt_length_reward"}},
    )
    assert out.object == "chat.completion" and out.id.startswith("chatcmpl-")
    assert out.usage.prompt_tokens == 6  # "ab" + "c" + "bab": every turn, not only the last
    for c in out.choices:
        assert c.message.role == "assistant" and set(c.message.content) <= set("abc")
        assert c.model_extra["reward"] == 3.0  # len("bab")
    assert out.usage.completion_tokens == sum(
        toy_tokens(c.message.content, c.finish_reason) for c in out.choices
    )


def test_alignment_bon_reports_rewards_and_cost(client):
    alignment = {"method": "bon", "reward": "dgalign.eval.exact:toy_reward", "beta": 2, "params": {"n": 8}}
    out = client.completions.create(
        model="toy", prompt="b", max_tokens=3, n=16, seed=3, extra_body={"alignment": alignment}
    )
    rewards = [c.model_extra["reward"] for c in out.choices]
    texts = [c.text for c in out.choices]
    assert rewards == pytest.approx(toy_reward(["b"] * 16, texts).tolist())  # the reward of the text returned
    info = out.model_extra["dgalign"]
    assert (info["method"], info["reward"], info["beta"], info["params"]) == (
        "bon",
        "dgalign.eval.exact:toy_reward",
        2.0,
        {"n": 8},
    )
    assert info["cost"]["reward_calls"] == 16 * 8
    base = client.completions.create(
        model="toy",
        prompt="b",
        max_tokens=3,
        n=16,
        seed=3,
        extra_body={"alignment": {"reward": "dgalign.eval.exact:toy_reward"}},
    )
    base_rewards = [c.model_extra["reward"] for c in base.choices]
    assert sum(rewards) / 16 > sum(base_rewards) / 16 + 0.2  # best of 8 beats plain sampling


def test_builtin_reward_spec(client):
    out = client.completions.create(
        model="toy",
        prompt="ab",
        max_tokens=3,
        extra_body={
            "alignment": {"method": "bon", "reward": "length(target=2):1,format:0.5", "params": {"n": 2}}
        },
    )
    assert isinstance(out.choices[0].model_extra["reward"], float)
    assert out.model_extra["dgalign"]["reward"] == "length(target=2):1,format:0.5"


def test_stop_strings(client):
    body = dict(model="toy", prompt="ab", max_tokens=8, n=6, seed=11)
    full = client.completions.create(**body)
    cut = client.completions.create(**body, stop=["b", "cc"])
    for f, c in zip(full.choices, cut.choices, strict=True):
        expected, hit = cut_at_stop(f.text, ["b", "cc"])
        assert c.text == expected
        assert c.finish_reason == ("stop" if hit else f.finish_reason)
    assert any(cut_at_stop(f.text, ["b", "cc"])[1] for f in full.choices)  # the test exercises a cut


# -- streaming --------------------------------------------------------------------------------------
def test_stream_chat_equals_seeded_answer(client):
    body = dict(model="toy", messages=[{"role": "user", "content": "ab"}], max_tokens=6, n=3, seed=5)
    plain = client.chat.completions.create(**body)
    parts, finish, last = {0: "", 1: "", 2: ""}, {}, None
    stream = client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    for chunk in chunks:
        assert chunk.object == "chat.completion.chunk" and chunk.model == "toy"
        for c in chunk.choices:
            parts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finish[c.index] = c.finish_reason
                last = chunk
    assert [parts[i] for i in range(3)] == [c.message.content for c in plain.choices]
    assert [finish[i] for i in range(3)] == [c.finish_reason for c in plain.choices]
    assert sum(1 for ch in chunks for c in ch.choices if c.delta.content) >= 3  # token by token, not one blob
    assert last.model_extra["dgalign"]["method"] == "base"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_stream_completion_with_stop(client):
    body = dict(model="toy", prompt="ca", max_tokens=8, n=4, seed=2, stop="a")
    plain = client.completions.create(**body)
    texts = ["", "", "", ""]
    for chunk in client.completions.create(**body, stream=True):
        for c in chunk.choices:
            texts[c.index] += c.text
    assert texts == [c.text for c in plain.choices]
    assert all("a" not in t for t in texts)


def test_stream_aligned_method_sends_chosen_answer(client):
    alignment = {"method": "bon", "reward": "dgalign.eval.exact:toy_reward", "params": {"n": 4}}
    chunks = list(
        client.chat.completions.create(
            model="toy",
            messages=[{"role": "user", "content": "b"}],
            max_tokens=3,
            stream=True,
            extra_body={"alignment": alignment},
        )
    )
    text = "".join(c.delta.content or "" for ch in chunks for c in ch.choices)
    final = [c for ch in chunks for c in ch.choices if c.finish_reason]
    assert len(final) == 1 and final[0].model_extra["reward"] == pytest.approx(
        toy_reward(["b"], [text]).item()
    )
    assert chunks[-1].model_extra["dgalign"]["cost"]["reward_calls"] == 4


# -- concurrency ------------------------------------------------------------------------------------
def test_slow_generation_does_not_block_and_waiting_requests_share_a_batch(server):
    slow = threading.Thread(
        target=post,
        args=(
            server,
            "/v1/completions",
            {
                "model": "toy",
                "prompt": "a",
                "max_tokens": 2,
                "alignment": {"method": "bon", "reward": "test_server:slow_reward", "params": {"n": 2}},
            },
        ),
    )
    slow.start()
    time.sleep(0.3)  # the slow request now holds the inference thread
    start = time.perf_counter()
    assert httpx.get(f"{server}/health", timeout=5).status_code == 200
    assert time.perf_counter() - start < 0.5 * SLOW_S
    answers: list[dict] = []

    def ask(prompt):
        answers.append(
            post(server, "/v1/completions", {"model": "toy", "prompt": prompt, "max_tokens": 3}).json()
        )

    waiting = [threading.Thread(target=ask, args=(p,)) for p in ["a", "b", "ab", "ca"]]
    for t in waiting:
        t.start()
    for t in [slow, *waiting]:
        t.join(30)
    assert [a["dgalign"]["batch_prompts"] for a in answers] == [
        4,
        4,
        4,
        4,
    ]  # one sampler call served all four
    metrics = httpx.get(f"{server}/metrics").text
    assert 'dgalign_batch_prompts_bucket{le="2.0"}' in metrics
    count = float(
        next(
            line.split()[-1]
            for line in metrics.splitlines()
            if line.startswith("dgalign_batch_prompts_count")
        )
    )
    total = float(
        next(
            line.split()[-1] for line in metrics.splitlines() if line.startswith("dgalign_batch_prompts_sum")
        )
    )
    assert total > count  # some batch held more than one prompt


def test_health_answers_while_huge_requests_are_refused(server):
    """Oversized requests are refused by cheap checks (body size, characters), never tokenised on the loop."""
    over = json.dumps({"model": "toy", "prompt": "ab" * 5_000_000})  # 10 MB: over the 4 MiB body limit
    under = json.dumps({"model": "toy", "prompt": "ab" * 2_000_000})  # 4 MB: parsed, refused by its length
    statuses: list[int] = []

    def flood(body):
        for _ in range(3):
            statuses.append(post(server, "/v1/completions", body).status_code)

    threads = [threading.Thread(target=flood, args=(b,)) for b in [over, under, over, under]]
    for t in threads:
        t.start()
    slowest, asked = 0.0, 0
    while any(t.is_alive() for t in threads) or asked < 3:
        start = time.perf_counter()
        assert httpx.get(f"{server}/health", timeout=5).status_code == 200
        slowest, asked = max(slowest, time.perf_counter() - start), asked + 1
        time.sleep(0.01)
    for t in threads:
        t.join()
    assert sorted(set(statuses)) == [400, 413]
    assert slowest < 1.0
    assert (
        post(server, "/v1/completions", {"model": "toy", "prompt": "ab", "max_tokens": 2}).status_code == 200
    )


def test_sampler_failure_is_a_500_and_server_keeps_serving(server, client):
    r = post(
        server,
        "/v1/completions",
        {
            "model": "toy",
            "prompt": "ab",
            "max_tokens": 2,
            "alignment": {"method": "bon", "reward": "test_server:failing_reward"},
        },
    )
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "server_error" and "reward exploded" in r.json()["error"]["message"]
    with pytest.raises(openai.APIError, match="reward exploded"):
        list(
            client.completions.create(
                model="toy",
                prompt="ab",
                max_tokens=2,
                stream=True,
                extra_body={"alignment": {"method": "bon", "reward": "test_server:failing_reward"}},
            )
        )
    assert client.completions.create(model="toy", prompt="ab", max_tokens=2).choices[0].text is not None


def test_stream_failing_after_it_started_sends_an_error_event_then_done(server, client):
    """Plain sampling streams its tokens, then the reward fails: the 200 is sent, so the error is an event."""
    body = {
        "model": "toy",
        "messages": [{"role": "user", "content": "ab"}],
        "max_tokens": 4,
        "stream": True,
        "alignment": {"reward": "test_server:failing_reward"},
    }
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, headers=headers, timeout=30) as r:
        assert r.status_code == 200
        data = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    *chunks, error = [json.loads(d) for d in data[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"  # the stream had started
    assert set(error["error"]) == {"message", "type", "param", "code"}
    assert error["error"]["type"] == "server_error" and "reward exploded" in error["error"]["message"]
    assert client.completions.create(model="toy", prompt="ab", max_tokens=2).choices[0].text is not None


def test_full_queue_is_a_429_with_retry_after(server):
    slow = threading.Thread(
        target=post,
        args=(
            server,
            "/v1/completions",
            {
                "model": "toy",
                "prompt": "a",
                "max_tokens": 2,
                "alignment": {"method": "bon", "reward": "test_server:slow_reward", "params": {"n": 2}},
            },
        ),
    )
    slow.start()
    time.sleep(0.3)  # the slow request now holds the inference thread; the queue is empty
    waiting = threading.Thread(
        target=post, args=(server, "/v1/completions", {"model": "toy", "prompt": ["a"] * MAX_QUEUE})
    )
    waiting.start()
    time.sleep(0.3)  # MAX_QUEUE prompts wait: the queue is full
    for body in [
        {"model": "toy", "prompt": "b", "max_tokens": 2},
        {"model": "toy", "prompt": "b", "max_tokens": 2, "stream": True},  # refused before a stream starts
    ]:
        r = post(server, "/v1/completions", body)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
        assert f"at most {MAX_QUEUE}" in error["message"]
    assert httpx.get(f"{server}/health", timeout=5).json()["waiting"] == 1
    for t in [slow, waiting]:
        t.join(30)
    assert (
        post(server, "/v1/completions", {"model": "toy", "prompt": "b", "max_tokens": 2}).status_code == 200
    )


def test_batcher_refuses_past_max_queue():
    async def main():
        batcher = Batcher(lambda payloads: payloads, max_batch=4, wait_s=0.05, max_queue=3)  # not started
        first = asyncio.ensure_future(batcher.submit("x", 2, 0))
        await asyncio.sleep(0)
        assert batcher.pending == 2
        with pytest.raises(QueueFull, match="at most 3"):
            await batcher.submit("x", 2, 1)
        first.cancel()
        await asyncio.sleep(0)
        assert batcher.pending == 0  # a cancelled request no longer holds its place
        await batcher.stop()

    asyncio.run(main())


# -- security and bad input -------------------------------------------------------------------------
def test_auth(server):
    assert httpx.get(f"{server}/v1/models").status_code == 401
    for key in (None, "wrong"):
        r = post(server, "/v1/completions", {"model": "toy", "prompt": "ab"}, key=key)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    bad = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model="toy", prompt="ab")
    assert httpx.get(f"{server}/health").status_code == 200  # health needs no key


GOOD = {"model": "toy", "prompt": "ab", "max_tokens": 3}


@pytest.mark.parametrize(
    ("change", "status", "param", "message"),
    [
        ({"max_tokens": 0}, 400, "max_tokens", "greater than or equal to 1"),
        ({"max_tokens": 50_000}, 400, "max_tokens", "at most 512"),
        ({"max_tokens": 63}, 400, "max_tokens", "context of 64 tokens"),
        ({"temperature": -0.5}, 400, "temperature", "greater than or equal to 0"),
        ({"temperature": 2.5}, 400, "temperature", "less than or equal to 2"),
        ({"top_p": 0}, 400, "top_p", "greater than 0"),
        ({"top_p": 1.5}, 400, "top_p", "less than or equal to 1"),
        ({"n": 0}, 400, "n", "greater than or equal to 1"),
        ({"n": 17}, 400, "n", "at most 16"),
        ({"prompt": "  "}, 400, "prompt", "non-empty"),
        ({"prompt": []}, 400, "prompt", "non-empty"),
        ({"prompt": "ab" * 1100}, 400, "prompt", "at most 1024 (64 tokens"),  # refused before tokenising
        ({"prompt": "ab" * 40}, 400, "prompt", "at most 64"),
        ({"model": "gpt-4"}, 404, "model", "not served here"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "at most 4"),
        ({"min_p": 0.1}, 400, "min_p", "not supported"),
        ({"alignment": {"method": "nope"}}, 400, "alignment.method", "unknown method 'nope'; valid:"),
        ({"alignment": {"method": "bon"}}, 400, "alignment.reward", "needs a reward"),
        (
            {"alignment": {"method": "bon", "reward": "nope"}},
            400,
            "alignment.reward",
            "unknown reward 'nope'",
        ),
        (
            {"alignment": {"method": "bon", "reward": "length(target=0)"}},
            400,
            "alignment.reward",
            "length target",
        ),
        (
            {"alignment": {"reward": "length", "params": {"bogus": 1}}},
            400,
            "alignment.params.bogus",
            "unknown setting 'bogus'",
        ),
        (
            {"alignment": {"method": "bon", "reward": "length", "params": {"n": 1.5}}},
            400,
            "alignment.params.n",
            "expected int",
        ),
        (
            {"alignment": {"reward": "length", "params": {"max_new_tokens": 4}}},
            400,
            "alignment.params.max_new_tokens",
            "max_tokens",
        ),
        (
            {"alignment": {"method": "bon", "reward": "length", "params": {"n": 0}}},
            400,
            "alignment.params.n",
            "n must be at least 1",
        ),
        (
            {"alignment": {"method": "dga", "reward": "length", "params": {"schedule": "x"}}},
            400,
            "alignment.params.schedule",
            "valid: cosine, linear",
        ),
        (
            {"alignment": {"method": "dga", "reward": "length", "params": {"checkpoint": "/etc"}}},
            400,
            "alignment.params.checkpoint",
            "sentiment, toxicity",
        ),
        ({"prompt": ["a"] * (MAX_QUEUE + 1)}, 400, "prompt", f"at most {MAX_QUEUE} per request"),
        ({"alignment": {"methd": "bon"}}, 400, "alignment.methd", "Extra inputs"),
        ({"alignment": {"beta": "strong"}}, 400, "alignment.beta", "valid number"),
    ],
)
def test_bad_input(server, change, status, param, message):
    r = post(server, "/v1/completions", {**GOOD, **change})
    assert r.status_code == status
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and message in error["message"]


@pytest.mark.parametrize(
    "spec",
    [
        "subprocess:Popen(args=1)",
        "hf:org/model",
        "toxicity:join",
        "os.path:join@2",
        "learned(path='/etc')",
        "length(target=x)",
        "length:1,sys:exit",
        "length(standardize=2)",
        "length(standardize='/etc/passwd')",
        "truthfulness(data='/etc/passwd')",
        "judge(model='/tmp/model')",
        "judge(model=1)",
        "length(target=True)",
        "length(target=1.5)",
        "length(target=1e999)",
        "length:1e999",
        "length(nope=1)",
    ],
)
def test_only_builtin_rewards_unless_allowed(toy, spec):
    engine = Engine(toy, Limits())
    with pytest.raises(APIError, match="built-in rewards only") as err:
        engine.reward(spec)
    assert err.value.status == 400 and err.value.param == "alignment.reward"
    assert engine.reward("length(target=3):1, format@0.5").name == "length(target=3):1, format@0.5"


@pytest.mark.parametrize(
    ("path", "body", "param", "message"),
    [
        ("/v1/completions", '{"model": "toy", "prompt": "ab",', None, "not valid JSON"),
        ("/v1/completions", "[1, 2]", None, "request body"),
        ("/v1/completions", '{"prompt": "ab"}', "model", "Field required"),
        ("/v1/chat/completions", '{"model": "toy", "messages": []}', "messages", "non-empty user message"),
        (
            "/v1/chat/completions",
            '{"model": "toy", "messages": [{"role": "user", "content": " "}]}',
            "messages",
            "non-empty user message",
        ),
        (
            "/v1/chat/completions",
            '{"model": "toy", "messages": [{"role": "wizard", "content": "ab"}]}',
            "messages.0.role",
            "Input should be",
        ),
    ],
)
def test_malformed_bodies(server, path, body, param, message):
    r = post(server, path, body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert (
        error["type"] == "invalid_request_error" and error["param"] == param and message in error["message"]
    )


def test_openai_client_raises_on_bad_input(client):
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="toy", prompt="ab", temperature=2.5)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "ab"}])


def test_metrics_text(server, client):
    client.completions.create(model="toy", prompt="ab", max_tokens=3)
    post(server, "/v1/completions", {"model": "toy"}, key=None)
    text = httpx.get(f"{server}/metrics").text
    assert 'dgalign_requests_total{endpoint="/v1/completions",status="200"}' in text
    assert 'dgalign_requests_total{endpoint="/v1/completions",status="401"}' in text
    assert 'dgalign_request_latency_seconds_bucket{endpoint="/v1/completions",le="+Inf"}' in text
    generated = [
        line for line in text.splitlines() if line.startswith('dgalign_generated_tokens_total{method="base"}')
    ]
    assert generated and float(generated[0].split()[-1]) > 0


# -- pieces, in process -----------------------------------------------------------------------------
def test_text_stream_holds_back_possible_stop_strings():
    letters = "abc"
    stream = TextStream(lambda ids: "".join(letters[i] for i in ids), ["bc"])
    sent = [stream.push(t) for t in [0, 0, 1]]  # "aab": the trailing "b" could start "bc"
    assert sent == ["", "a", "a"]
    assert stream.push(2) == "" and stream.stopped  # "aabc" hits the stop: "aa" is the text
    assert stream.push(0) == "" and stream.finish("aa") == ""


@pytest.mark.parametrize("max_batch", [1, 3])
def test_batcher_groups_by_key_up_to_max_batch(max_batch):
    calls: list[list] = []

    def run(payloads):
        calls.append(list(payloads))
        return [p * 10 for p in payloads]

    async def main():
        batcher = Batcher(run, max_batch=max_batch, wait_s=0.05)
        batcher.start()
        keys = ["x", "y", "x", "x", "y", "x"]
        results = await asyncio.gather(*(batcher.submit(k, 1, i) for i, k in enumerate(keys)))
        await batcher.stop()
        return keys, results

    keys, results = asyncio.run(main())
    assert results == [i * 10 for i in range(6)]
    assert sorted(p for call in calls for p in call) == list(range(6))
    for call in calls:
        assert len(call) <= max_batch and len({keys[p] for p in call}) == 1
    assert max(len(c) for c in calls) == max_batch  # with the window, same-key jobs do share a call


# -- the embedded model -----------------------------------------------------------------------------
@pytest.mark.integration
def test_embedded_model_chat(tmp_path):
    proc, url = start_server(tmp_path, "--model", "smollm2-135m-instruct", timeout=120)
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        out = client.chat.completions.create(
            model="smollm2-135m-instruct",
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=8,
            seed=0,
        )
        assert isinstance(out.choices[0].message.content, str) and out.choices[0].message.content.strip()
        assert (
            0 < out.usage.completion_tokens <= 8 and out.usage.prompt_tokens > 5
        )  # the chat template was applied
    finally:
        stop_server(proc)
