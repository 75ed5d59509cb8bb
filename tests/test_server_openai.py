"""`dgalign serve` driven as eval tools drive it (issue #14 item 5): greedy decoding, token-id prompts,
per-token log-probs and echo, vLLM's sampling fields, /v1/models, --served-model-name, client
disconnects, /v1/score and vLLM's tokenizer endpoints, and lm-evaluation-harness end to end.

The toy LM is enumerable, so every number is checked against the model itself: greedy answers against
an argmax decode, log-probs against a log-softmax recomputed step by step, scores against the reward
called in process, lm-eval's accuracy against the choices' log-likelihoods.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from importlib.util import find_spec
from pathlib import Path

import httpx
import openai
import pytest
import torch

from dgalign.eval.exact import toy_reward
from dgalign.rewards import get_reward
from dgalign.samplers import SAMPLERS
from dgalign.server.engine import Abandoned, Engine, Limits
from dgalign.server.launch import stop_server
from dgalign.server.schemas import Alignment, APIError
from dgalign.server.streaming import TextStream
from dgalign.types import Prompts
from test_server import start_server

MARKER = "DGALIGN_TEST_MARKER"  # the file `marker_reward` appends to, in the server process


def marker_reward(prompts: list[str], completions: list[str]) -> torch.Tensor:
    """Zero, and a line in the $DGALIGN_TEST_MARKER file: proof that a job ran."""
    with open(os.environ[MARKER], "a") as f:
        f.write(f"{len(completions)}\n")
    return torch.zeros(len(completions))


@pytest.fixture(scope="module")
def marker(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("marker") / "ran.txt"


@pytest.fixture(scope="module")
def server(tmp_path_factory, marker):
    # `start_server` puts this directory on the server's PYTHONPATH; the marker path goes in its environment
    os.environ[MARKER] = str(marker)
    try:
        proc, url = start_server(tmp_path_factory.mktemp("server-openai"), "--model", "toy", "--allow-custom-rewards",
                                 "--max-batch", "8", "--batch-wait-ms", "5")
    finally:
        del os.environ[MARKER]
    yield url
    stop_server(proc)


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=30)


def call(url: str, path: str, body: dict, timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=timeout)


def refused(r: httpx.Response, param: str, fragment: str, status: int = 400) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and fragment in error["message"], error


def greedy(toy, prompt: list[int], max_tokens: int) -> list[int]:
    """The argmax decode of the toy, to EOS or the limit."""
    state, out = toy.start([prompt]), []
    for _ in range(max_tokens):
        token = int(state.logits[0].argmax())
        out.append(token)
        if token in toy.eos_token_ids:
            break
        state = toy.step(state, torch.tensor([[token]]))
    return out


def step_logprobs(toy, prompt: list[int], answer: list[int]) -> list[torch.Tensor]:
    """log p(· | prefix) before each answer token, (V,) each, one decode step at a time."""
    state, out = toy.start([prompt]), []
    for token in answer:
        out.append(state.logits[0].log_softmax(-1))
        state = toy.step(state, torch.tensor([[token]]))
    return out


def prepare(engine: Engine, method: str = "base", **kw):
    alignment = Alignment(method=method, reward=None if method == "base" else "length")
    args = dict(max_tokens=3, n=1, temperature=1.0, top_p=1.0, seed=None, stream=False, prompt_param="prompt")
    return engine.prepare(alignment, Prompts(["ab"], [[0, 1]]), **(args | kw))


# -- 1. temperature 0 is greedy -----------------------------------------------------------------------
@pytest.mark.parametrize("method", list(SAMPLERS))
def test_temperature_zero_is_top_k_one_at_temperature_one_for_every_method(toy, method):
    _, work = prepare(Engine(toy, Limits()), method, temperature=0.0, top_k=5)
    assert (work.cfg.top_k, work.cfg.temperature) == (1, 1.0)


def test_temperature_zero_answers_are_the_argmax_decode(toy, client):
    expected = toy.decode(greedy(toy, [0, 1], 6))
    out = client.completions.create(model="toy", prompt="ab", max_tokens=6, n=3, temperature=0)
    assert [c.text for c in out.choices] == [expected] * 3
    bon = client.completions.create(model="toy", prompt="ab", max_tokens=6, temperature=0,
                                    extra_body={"alignment": {"method": "bon", "reward": "length", "params": {"n": 4}}})
    assert bon.choices[0].text == expected  # greedy proposals: every candidate is the greedy answer
    chat = client.chat.completions.create(model="toy", messages=[{"role": "user", "content": "ab"}], max_tokens=6,
                                          temperature=0)
    assert chat.choices[0].message.content == expected


# -- 2. prompts as token ids --------------------------------------------------------------------------
def test_token_id_prompts_equal_their_text(client):
    body = dict(model="toy", max_tokens=5, n=2, seed=4)
    text = client.completions.create(prompt=["ab", "cab"], **body)
    ids = client.completions.create(prompt=[[0, 1], [2, 0, 1]], **body)
    assert [c.text for c in ids.choices] == [c.text for c in text.choices]
    one, one_text = client.completions.create(prompt=[0, 1], **body), client.completions.create(prompt="ab", **body)
    assert [c.text for c in one.choices] == [c.text for c in one_text.choices]
    assert ids.usage.prompt_tokens == 5


@pytest.mark.parametrize(
    ("prompt", "param", "fragment"),
    [
        ([0, 4], "prompt", "token id 4 is not in toy's vocabulary [0, 4)"),
        ([[0], [1, -1]], "prompt", "token id -1"),
        (["ab", [0, 1]], "prompt", "not a mix"),
        ([[]], "prompt.0", "non-empty list of integer token ids"),
        ([[0, 1.5]], "prompt.0", "integer token ids"),
        ([True], "prompt.0", "integer token ids"),
        ([0] * 65, "prompt", "at most 64"),
    ],
)
def test_bad_token_id_prompts_are_refused(server, prompt, param, fragment):
    refused(call(server, "/v1/completions", {"model": "toy", "prompt": prompt}), param, fragment)


# -- 3. logprobs and echo -----------------------------------------------------------------------------
def test_completion_logprobs_are_the_base_models_with_echo(toy, client):
    out = client.completions.create(model="toy", prompt=[0, 1, 2], max_tokens=5, n=3, seed=2, temperature=0.7,
                                    logprobs=2, echo=True)
    for c in out.choices:
        lp = c.logprobs
        answer = toy.encode([c.text[3:]])[0]
        ended = c.finish_reason == "stop"  # the EOS that ended the answer is scored too
        ids = [0, 1, 2] + answer + toy.eos_token_ids * ended
        assert c.text.startswith("abc") and lp.tokens == list(c.text) + [""] * ended
        assert lp.text_offset == list(range(len(c.text))) + [len(c.text)] * ended
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing predicts the first token
        steps = step_logprobs(toy, ids[:1], ids[1:])
        for j, (token, logp) in enumerate(zip(ids[1:], steps, strict=True), start=1):
            assert lp.token_logprobs[j] == pytest.approx(float(logp[token]), abs=1e-5)
            best = logp.topk(2)
            top = {toy.decode([i]): v for i, v in zip(best.indices.tolist(), best.values.tolist(), strict=True)}
            top.setdefault(lp.tokens[j], float(logp[token]))  # the chosen token is always listed
            assert lp.top_logprobs[j] == pytest.approx(top, abs=1e-5)
        total = sum(lp.token_logprobs[3:])
        assert total == pytest.approx(float(toy.sequence_logprobs([[0, 1, 2]], [ids[3:]])[0]), abs=1e-4)


def test_max_tokens_zero_with_echo_scores_the_prompt_only(toy, client):
    out = client.completions.create(model="toy", prompt=[[2, 0, 1]], max_tokens=0, echo=True, logprobs=0)
    (choice,) = out.choices
    assert choice.text == "cab" and choice.finish_reason == "length" and out.usage.completion_tokens == 0
    steps = step_logprobs(toy, [2], [0, 1])
    assert choice.logprobs.token_logprobs[1:] == pytest.approx([float(steps[0][0]), float(steps[1][1])], abs=1e-5)
    assert choice.logprobs.top_logprobs[1:] == [{"a": choice.logprobs.token_logprobs[1]},
                                                {"b": choice.logprobs.token_logprobs[2]}]
    text_echo = client.completions.create(model="toy", prompt="cab", max_tokens=2, echo=True, seed=0)
    assert text_echo.choices[0].text.startswith("cab") and text_echo.choices[0].logprobs is None


def test_chat_logprobs(toy, client):
    out = client.chat.completions.create(model="toy", messages=[{"role": "user", "content": "ab"}], max_tokens=4,
                                         seed=1, logprobs=True, top_logprobs=3)
    (choice,) = out.choices
    content = choice.logprobs.content
    answer = toy.encode([choice.message.content])[0] + toy.eos_token_ids * (choice.finish_reason == "stop")
    assert "".join(t.token for t in content) == choice.message.content and len(content) == len(answer)
    for entry, token, logp in zip(content, answer, step_logprobs(toy, [0, 1], answer), strict=True):
        assert entry.logprob == pytest.approx(float(logp[token]), abs=1e-5)
        assert entry.bytes == list(entry.token.encode())
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(logp.topk(3).values.tolist(), abs=1e-5)
    plain = client.chat.completions.create(model="toy", messages=[{"role": "user", "content": "ab"}], max_tokens=2,
                                           logprobs=True)
    assert all(t.top_logprobs == [] for t in plain.choices[0].logprobs.content)


def test_logprobs_cover_the_text_a_stop_string_leaves(client):
    body = dict(model="toy", prompt="ab", max_tokens=8, n=8, seed=11, logprobs=1)
    full, cut = client.completions.create(**body), client.completions.create(**body, stop=["b"])
    assert any(len(c.text) < len(f.text) for f, c in zip(full.choices, cut.choices, strict=True))  # some were cut
    for c in cut.choices:
        assert "".join(c.logprobs.tokens) == c.text  # the stop string's tokens are not reported
        assert len(c.logprobs.tokens) == len(c.logprobs.token_logprobs) == len(c.logprobs.text_offset)


C, CH = "/v1/completions", "/v1/chat/completions"
ALIGNED = {"alignment": {"method": "bon", "reward": "length"}}


@pytest.mark.parametrize(
    ("path", "change", "param", "fragment"),
    [
        (C, {"logprobs": 1, **ALIGNED}, "logprobs", "plain sampling only"),
        (C, {"logprobs": 0, **ALIGNED}, "logprobs", "'bon''s answers are not drawn from per-token probabilities"),
        (C, {"echo": True, **ALIGNED}, "echo", "plain sampling only"),
        (CH, {"logprobs": True, **ALIGNED}, "logprobs", "plain sampling only"),
        (C, {"logprobs": 6}, "logprobs", "less than or equal to 5"),
        (C, {"logprobs": True}, "logprobs", "valid integer"),
        (C, {"max_tokens": 0}, "max_tokens", "only with echo"),
        (C, {"logprobs": 0, "stream": True}, "logprobs", "not sent in streams"),
        (C, {"echo": True, "stream": True}, "echo", "not sent in streams"),
        (C, {"top_logprobs": 2}, "top_logprobs", "not supported"),
        (CH, {"top_logprobs": 2}, "top_logprobs", "needs logprobs: true"),
        (CH, {"top_logprobs": 21, "logprobs": True}, "top_logprobs", "less than or equal to 20"),
        (CH, {"echo": True}, "echo", "not supported"),
        (CH, {"logprobs": True, "stream": True}, "logprobs", "not sent in streams"),
        (C, {"stop_token_ids": [1, 4]}, "stop_token_ids", "token id 4 is not in toy's vocabulary"),
        (C, {"stop_token_ids": [True]}, "stop_token_ids.0", "valid integer"),
    ],
)
def test_refusals_name_the_field(server, path, change, param, fragment):
    good = {"model": "toy", "max_tokens": 3} | ({"prompt": "ab"} if path == C else
                                                {"messages": [{"role": "user", "content": "ab"}]})
    refused(call(server, path, good | change), param, fragment)


# -- 4. vLLM's sampling fields ------------------------------------------------------------------------
def test_top_k_sets_the_methods_config(toy):
    engine = Engine(toy, Limits())
    assert prepare(engine, top_k=2)[1].cfg.top_k == 2
    assert prepare(engine, top_k=-1)[1].cfg.top_k == 0  # vLLM's "off"
    assert prepare(engine)[1].cfg.top_k == 0 and prepare(engine, "args")[1].cfg.top_k == 10  # absent: the method's
    assert prepare(engine, "args", top_k=3)[1].cfg.top_k == 3
    with pytest.raises(APIError, match="top_k must be >= 1") as err:
        prepare(engine, "args", top_k=0)
    assert err.value.param == "top_k"


def test_top_k_one_is_greedy_and_conflicts_with_params(toy, server, client):
    out = client.completions.create(model="toy", prompt="ab", max_tokens=6, n=2, extra_body={"top_k": 1})
    assert [c.text for c in out.choices] == [toy.decode(greedy(toy, [0, 1], 6))] * 2
    body = {"model": "toy", "prompt": "ab", "top_k": 2,
            "alignment": {"method": "args", "reward": "length", "params": {"top_k": 3}}}
    refused(call(server, C, body), "alignment.params.top_k", "top_k sets it too")


def test_stop_token_ids_end_the_answer_after_the_first(toy, client):
    body = dict(model="toy", prompt="ab", max_tokens=10, n=8, seed=5)
    full = client.completions.create(**body)
    cut = client.completions.create(**body, extra_body={"stop_token_ids": [1]}, logprobs=0)
    assert any("b" in f.text for f in full.choices)  # the test exercises a cut
    for f, c in zip(full.choices, cut.choices, strict=True):
        if "b" in f.text:
            assert c.text == f.text[: f.text.index("b") + 1] and c.finish_reason == "stop"
        else:
            assert c.text == f.text and c.finish_reason == f.finish_reason
        assert "".join(c.logprobs.tokens) == c.text
    chunks = client.completions.create(**body, extra_body={"stop_token_ids": [1]}, stream=True)
    texts = [""] * 8
    for chunk in chunks:
        for c in chunk.choices:
            texts[c.index] += c.text
    assert texts == [c.text for c in cut.choices]


def test_text_stream_ends_after_a_stop_token():
    stream = TextStream(lambda ids: "".join("abc"[i] for i in ids), [], frozenset({1}))
    assert [stream.push(t) for t in [0, 1, 2]] == ["a", "", ""] and stream.stopped
    assert stream.finish("ab") == "b"


@pytest.mark.parametrize(
    ("field", "value"),
    [("min_p", 0.1), ("repetition_penalty", 1.2), ("ignore_eos", True), ("presence_penalty", 0.5),
     ("frequency_penalty", 1), ("use_beam_search", True), ("min_tokens", 2), ("length_penalty", 0.5),
     ("allowed_token_ids", [0]), ("bad_words", ["a"]), ("guided_choice", ["a"]), ("best_of", True),
     ("skip_special_tokens", False), ("include_stop_str_in_output", True)],
)
def test_vllm_fields_dgalign_cannot_honour_are_refused_by_name(server, field, value):
    for path, good in [(C, {"prompt": "ab"}), (CH, {"messages": [{"role": "user", "content": "ab"}]})]:
        refused(call(server, path, {"model": "toy", **good, field: value}), field, f"{field} is not supported")


def test_neutral_values_and_unknown_fields_are_accepted(server):
    body = {"model": "toy", "prompt": "ab", "max_tokens": 2, "min_p": 0.0, "repetition_penalty": 1, "ignore_eos": False,
            "stop_token_ids": None, "top_k": None, "skip_special_tokens": True, "some_other_field": {"x": 1}}
    assert call(server, C, body).status_code == 200


# -- 5. /v1/models, --served-model-name, disconnects --------------------------------------------------
def test_models_report_max_model_len(client):
    (model,) = client.models.list().data
    assert model.id == "toy" and model.model_extra["max_model_len"] == 64


def test_served_model_name(tmp_path):
    proc, url = start_server(tmp_path, "--model", "toy", "--served-model-name", "my-toy")
    try:
        models = httpx.get(f"{url}/v1/models").json()["data"]
        assert [(m["id"], m["root"], m["max_model_len"]) for m in models] == [("my-toy", "toy", 64)]
        out = call(url, C, {"model": "my-toy", "prompt": "ab", "max_tokens": 2})
        assert out.status_code == 200 and out.json()["model"] == "my-toy"
        refused(call(url, C, {"model": "toy", "prompt": "ab"}), "model", "serves 'my-toy'", status=404)
        assert httpx.get(f"{url}/health").json()["model"] == "my-toy"
    finally:
        stop_server(proc)


def _occupy(server: str) -> threading.Thread:
    """A request that holds the inference thread for SLOW_S seconds (a slow reward)."""
    body = {"model": "toy", "prompt": "a", "max_tokens": 2,
            "alignment": {"method": "bon", "reward": "test_server:slow_reward", "params": {"n": 2}}}
    slow = threading.Thread(target=call, args=(server, C, body))
    slow.start()
    time.sleep(0.3)
    return slow


def test_a_client_that_leaves_while_queued_is_dropped(server, marker):
    marker.unlink(missing_ok=True)
    slow = _occupy(server)
    for body in [
        {"model": "toy", "prompt": "ab", "max_tokens": 2, "alignment": {"reward": "test_server_openai:marker_reward"}},
        {"model": "toy", "prompt": "ab", "max_tokens": 2, "stream": True,
         "alignment": {"method": "bon", "reward": "test_server_openai:marker_reward"}},
    ]:
        with pytest.raises(httpx.ReadTimeout):
            call(server, C, body, timeout=0.3)  # the client gives up while the job waits, and closes
    slow.join(30)
    time.sleep(0.5)  # the batcher has moved past the abandoned jobs
    assert not marker.exists()  # neither ran
    metrics = httpx.get(f"{server}/metrics").text
    assert 'dgalign_requests_total{endpoint="/v1/completions",status="499"} 2.0' in metrics
    body = {"model": "toy", "prompt": "ab", "max_tokens": 2, "alignment": {"reward": "test_server_openai:marker_reward"}}
    assert call(server, C, body).status_code == 200 and marker.read_text() == "1\n"  # the marker works


def test_a_running_call_stops_once_all_its_clients_left(toy):
    engine = Engine(toy, Limits())
    fed: list[int] = []
    _, work = prepare(engine, max_tokens=50, stream=True, n=4)

    def on_token(choice: int, token: int) -> None:
        fed.append(token)
        work.abandoned = True  # the client leaves after its first token

    work.on_token = on_token
    with pytest.raises(Abandoned):
        engine.run([work])
    assert len(fed) == 1  # stopped feeding, then stopped the call at its next step
    _, left = prepare(engine, max_tokens=3)
    _, stays = prepare(engine, max_tokens=3)
    left.abandoned = True
    answers = engine.run([left, stays])  # another client still waits: the call finishes
    assert len(answers) == 2 and all(answers[1].token_ids)


# -- 6. /v1/score and vLLM's tokenizer endpoints ------------------------------------------------------
def test_score_matches_the_reward(server):
    completions = ["a", "abc", "", "cc"]
    r = call(server, "/v1/score", {"model": "toy", "reward": "length(target=2)", "prompt": "ab",
                                   "completion": completions})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = get_reward("length(target=2)")(["ab"] * 4, completions).tolist()
    assert body["object"] == "list" and [d["index"] for d in body["data"]] == [0, 1, 2, 3]
    assert [d["reward"] for d in body["data"]] == pytest.approx(expected)
    pairs = call(server, "/v1/score", {"model": "toy", "reward": "dgalign.eval.exact:toy_reward",
                                       "prompt": ["a", "b"], "completion": ["aa", "cc"]}).json()
    assert [d["reward"] for d in pairs["data"]] == pytest.approx(toy_reward(["a", "b"], ["aa", "cc"]).tolist())


@pytest.mark.parametrize(
    ("change", "param", "fragment", "status"),
    [
        ({"prompt": ["a", "b"], "completion": ["a", "b", "c"]}, "completion", "3 completions for 2 prompts", 400),
        ({"completion": []}, "completion", "non-empty", 400),
        ({"reward": "nope"}, "reward", "unknown reward 'nope'", 400),
        ({"reward": "length(target=0)"}, "reward", "length target", 400),
        ({"completion": ["a"] * 300}, "completion", "at most 256", 400),
        ({"completion": 5}, "completion", "a string or a list of strings", 400),
        ({"reward": None}, "reward", "valid string", 400),
        ({"model": "gpt-4"}, "model", "not served here", 404),
    ],
)
def test_score_refusals(server, change, param, fragment, status):
    body = {"model": "toy", "reward": "length", "prompt": "ab", "completion": "a"} | change
    refused(call(server, "/v1/score", body), param, fragment, status)


def test_score_reward_checks_are_alignment_rewards(toy):
    with pytest.raises(APIError, match="built-in rewards only") as err:
        Engine(toy, Limits()).reward("dgalign.eval.exact:toy_reward", "reward")
    assert err.value.param == "reward"


def test_tokenizer_endpoints(toy, server):
    tokens = call(server, "/tokenize", {"prompt": "cab ba", "add_special_tokens": False}).json()
    assert tokens == {"count": 5, "max_model_len": 64, "tokens": toy.encode(["cab ba"], raw=True)[0]}
    assert call(server, "/detokenize", {"tokens": [2, 0, 3]}).json() == {"prompt": "ca"}
    refused(call(server, "/detokenize", {"tokens": [9]}), "tokens", "vocabulary")
    info = httpx.get(f"{server}/tokenizer_info").json()
    assert info["eos_token_ids"] == [3] and "eos_token" in info and info["max_model_len"] == 64


# -- 7. lm-evaluation-harness end to end --------------------------------------------------------------
TASKS = {
    "toy_mc.yaml": """task: toy_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: choices
doc_to_target: gold
metric_list:
  - metric: acc
""",
    "toy_gen.yaml": """task: toy_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{query}}}}"
doc_to_target: answer
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 4
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""",
}


def test_lm_eval_harness_scores_the_served_toy(toy, server, tmp_path):
    """lm-eval's local-completions, counting tokens with the server's tokenizer (`tokenizer_backend=remote`, ids
    sent as prompts): a loglikelihood task (echo + logprobs at temperature 0) and a greedy generate_until task."""
    if find_spec("lm_eval") is None:
        pytest.skip("lm-eval is not installed (the dev extra has it)")
    gen = torch.Generator().manual_seed(0)
    docs = []
    for i in range(20):
        query = "".join("abc"[int(t)] for t in torch.randint(3, (2 + i % 5,), generator=gen))
        docs.append({"query": query, "choices": ["a", "b", "c"], "gold": i % 3, "answer": "abc"[i * 7 % 3]})
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    for name, text in TASKS.items():
        (tmp_path / name).write_text(text.format(data=data))
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "NO_PROXY": "127.0.0.1,localhost", "HF_DATASETS_CACHE": str(tmp_path / "hf-cache")}
    model_args = f"base_url={server}/v1/completions,model=toy,tokenizer_backend=remote,max_length=64,max_retries=1"
    run = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args,
         "--tasks", "toy_mc,toy_gen", "--include_path", str(tmp_path), "--output_path", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (path,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(path.read_text())["results"]

    def loglikelihood(query: str, choice: str) -> float:
        return float(toy.sequence_logprobs(toy.encode([query]), toy.encode([choice]))[0])

    picks = [max(range(3), key=lambda c: loglikelihood(d["query"], d["choices"][c])) for d in docs]
    acc = sum(p == d["gold"] for p, d in zip(picks, docs, strict=True)) / len(docs)
    assert results["toy_mc"]["acc,none"] == pytest.approx(acc)
    answers = [toy.decode(greedy(toy, toy.encode([d["query"]])[0], 4)) for d in docs]
    exact = sum(a == d["answer"] for a, d in zip(answers, docs, strict=True)) / len(docs)
    assert results["toy_gen"]["exact_match,none"] == pytest.approx(exact)
    assert 0 < acc < 1 and not math.isnan(exact)  # the accuracy is informative: neither all right nor all wrong


@pytest.mark.integration
def test_scoring_pass_on_the_embedded_model_matches_sequence_logprobs():
    """The `start` + `peek` scoring pass, on a real transformer's KV cache, sums to its `sequence_logprobs`."""
    from dgalign.lm import load_lm
    from dgalign.server.logprobs import completion_logprobs, score_tokens

    lm = load_lm("smollm2-135m-instruct")
    prompt, answer = lm.encode(["The capital of France is", " Paris, a city"], raw=True)
    scored = score_tokens(lm, prompt, answer, echo=True, top=2)
    assert scored.logprobs[0] is None and len(scored.logprobs) == len(prompt) + len(answer)
    assert sum(scored.logprobs[len(prompt):]) == pytest.approx(float(lm.sequence_logprobs([prompt], [answer])[0]),
                                                               abs=1e-3)
    assert sum(scored.logprobs[1:len(prompt)]) == pytest.approx(
        float(lm.sequence_logprobs([prompt[:1]], [prompt[1:]])[0]), abs=1e-3)
    shaped = completion_logprobs(lm.decode, scored, prompt, answer, len("The capital of France is"))
    assert "".join(shaped["tokens"]) == "The capital of France is Paris, a city"
