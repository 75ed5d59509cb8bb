"""`dgalign judge`: a pairwise LM judge (MT-Bench style, Zheng et al. 2023), asked in both orders.

A judge is a callable `(question, answer_a, answer_b, dimension) -> "A" | "B" | "tie"`. `lm_judge`
makes one from a local LM: the MT-Bench pairwise prompt, and the verdict read from the log-probability
of each answer "A", "B", "tie" as the reply (more robust than parsing a small model's generated text).
Position bias: each item is judged with x first and with y first; a verdict that flips with the order
counts as a tie. Verdicts go into ratings.sqlite as the rater `judge:<model>`, one rating per item.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import torch

from ..types import LM
from .store import Store

Judge = Callable[[str, str, str, str], str]
VERDICTS = ("A", "B", "tie")

# MT-Bench's pairwise system prompt (Zheng et al. 2023, fig. 5), asked about one dimension, verdict as one word
SYSTEM = ("Please act as an impartial judge and evaluate the {dimension} of the responses provided by two AI "
          "assistants to the user question displayed below. You should choose the assistant that follows the "
          "user's instructions and answers the user's question better in terms of {dimension}. Avoid any position "
          "biases and ensure that the order in which the responses were presented does not influence your "
          "decision. Do not allow the length of the responses to influence your evaluation. Be as objective as "
          'possible. Reply with one word: "A" if assistant A is better, "B" if assistant B is better, and "tie" '
          "for a tie.")
USER = ("[User Question]\n{question}\n\n[The Start of Assistant A's Answer]\n{a}\n[The End of Assistant A's Answer]"
        "\n\n[The Start of Assistant B's Answer]\n{b}\n[The End of Assistant B's Answer]")


def lm_judge(lm: LM) -> Judge:
    """A judge from an LM: argmax over "A", "B", "tie" of log p(verdict | MT-Bench prompt) (one batched pass)."""
    options = lm.encode(list(VERDICTS), raw=True)

    @torch.no_grad()
    def judge(question: str, a: str, b: str, dimension: str) -> str:
        prompt = lm.encode_chat([{"role": "system", "content": SYSTEM.format(dimension=dimension)},
                                 {"role": "user", "content": USER.format(question=question, a=a, b=b)}])
        logp = lm.sequence_logprobs([prompt] * len(VERDICTS), options)  # (3,)
        return VERDICTS[int(logp.argmax())]

    return judge


def combine(x_first: str, y_first: str) -> tuple[str, bool]:
    """(winner x | tie | y, whether the two orders agreed) from the verdicts with x shown first and y first."""
    one = {"A": "x", "B": "y", "tie": "tie"}[x_first]
    two = {"A": "y", "B": "x", "tie": "tie"}[y_first]
    return (one if one == two else "tie"), one == two


def judge_both_orders(judge: Judge, question: str, x: str, y: str, dimension: str) -> tuple[str, str, str]:
    """(winner x | tie | y, verdict with x first, verdict with y first); a verdict that follows the position is a tie."""
    x_first, y_first = judge(question, x, y, dimension), judge(question, y, x, dimension)
    return combine(x_first, y_first)[0], x_first, y_first


def judge_run(store: Store, items: list[int], judge: Judge, rater: str, dimensions: list[str],
              progress: bool = True) -> list[dict]:
    """Judge every item the rater has not judged yet (resumable), then the verdict table over all of `items`:
    per (pair, dimension), x wins / ties / y wins and how many verdicts flipped with the order."""
    from tqdm import tqdm

    done = {i for i, _ in store.judged(rater, items)}
    for item_id in tqdm([i for i in items if i not in done], desc=f"judging ({rater})", unit="pair",
                        disable=not progress or None):
        item = store.item(item_id)
        winners, orders = {}, {}
        for d in dimensions:
            winners[d], x_first, y_first = judge_both_orders(judge, item["prompt"], item["completion_x"],
                                                             item["completion_y"], d)
            orders[d] = {"x_first": x_first, "y_first": y_first}
        store.add_judged(rater, item_id, winners, json.dumps(orders))
    table: dict[tuple[str, str, str], dict] = {}
    for item_id, note in store.judged(rater, items):
        item = store.item(item_id)
        for d, o in json.loads(note).items():
            winner, agreed = combine(o["x_first"], o["y_first"])
            row = table.setdefault((item["method_x"], item["method_y"], d),
                                   {"x": item["method_x"], "y": item["method_y"], "dimension": d, "items": 0,
                                    "x_wins": 0, "ties": 0, "y_wins": 0, "inconsistent": 0})
            row["items"] += 1
            row[{"x": "x_wins", "tie": "ties", "y": "y_wins"}[winner]] += 1
            row["inconsistent"] += not agreed
    return list(table.values())
