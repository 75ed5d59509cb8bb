"""`dgalign judge`: a pairwise LM judge (MT-Bench style, Zheng et al. 2023), asked in both orders.

A judge is a callable `asks -> (n, 3) array`: for each `(question, first answer, second answer, dimension)`,
the probabilities of the verdicts "A" (first better), "B", "tie". `lm_judge` makes one from a local LM: the
MT-Bench pairwise prompt and **one forward pass** per ask, reading the next-token probabilities of the three
verdict tokens (renormalised over them) — more robust than parsing a small model's generated text.

Position bias. Each pair is asked with x first and with y first (one batched pass). Two readings:
- the **debiased preference** P(x preferred) = ½·[P(A | x first) / (P(A) + P(B)) + P(B | y first) / (P(A) + P(B))]:
  a judge that always says "A" gets exactly ½, one that reads the answers moves away from it;
- the MT-Bench verdict: each order's most probable verdict, and one that flips with the order counts as a tie.
Verdicts go into ratings.sqlite as the rater `judge:<model>`, one rating per item.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import torch

from ..errors import DGAlignError
from ..types import LM
from .store import Store

Ask = tuple[str, str, str, str]  # (question, answer shown first, answer shown second, dimension)
Judge = Callable[[list[Ask]], np.ndarray]  # -> (n, 3): P("A"), P("B"), P("tie") per ask
VERDICTS = ("A", "B", "tie")
BATCH = 8  # asks per forward pass (4 pairs, both orders)

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


def verdict_tokens(lm: LM) -> list[int]:
    """The first token of each verdict as the reply's first word; they must differ to be read apart."""
    ids = [lm.encode([v], raw=True)[0][0] for v in VERDICTS]
    if len(set(ids)) != len(ids):
        raise DGAlignError(f"judge {lm.name}: the verdicts {', '.join(VERDICTS)} start with the same token "
                           f"({ids}), so one next-token distribution cannot tell them apart; use another judge model")
    return ids


def lm_judge(lm: LM) -> Judge:
    """A judge from an LM: P(verdict) from the next-token logits after the MT-Bench prompt, one pass per batch."""
    ids = torch.tensor(verdict_tokens(lm), device=lm.device)

    @torch.no_grad()
    def judge(asks: list[Ask]) -> np.ndarray:
        out = []
        for k in range(0, len(asks), BATCH):
            prompts = [lm.encode_chat([{"role": "system", "content": SYSTEM.format(dimension=d)},
                                       {"role": "user", "content": USER.format(question=q, a=a, b=b)}])
                       for q, a, b, d in asks[k : k + BATCH]]
            logits = lm.start(prompts).logits.float()  # (b, V), next token after the prompt
            out.append(logits[:, ids].softmax(-1).cpu().numpy())  # renormalised over the three verdicts
        return np.concatenate(out) if out else np.zeros((0, 3))

    return judge


def preference(x_first: np.ndarray, y_first: np.ndarray) -> float:
    """Debiased P(x preferred) from the verdict probabilities with x shown first and with y shown first."""
    one = x_first[0] / max(x_first[0] + x_first[1], 1e-12)
    two = y_first[1] / max(y_first[0] + y_first[1], 1e-12)
    return float(0.5 * (one + two))


def combine(x_first: str, y_first: str) -> tuple[str, bool]:
    """(winner x | tie | y, whether the two orders agreed) from the verdicts with x shown first and y first."""
    one = {"A": "x", "B": "y", "tie": "tie"}[x_first]
    two = {"A": "y", "B": "x", "tie": "tie"}[y_first]
    return (one if one == two else "tie"), one == two


def judge_pairs(judge: Judge, pairs: list[tuple[str, str, str, str]]) -> list[dict]:
    """Each (question, x, y, dimension) asked in both orders: the MT-Bench winner (x | tie | y), each order's
    verdict and probabilities, and the debiased P(x preferred) `pref_x`."""
    asks = [ask for q, x, y, d in pairs for ask in ((q, x, y, d), (q, y, x, d))]
    probs = judge(asks).reshape(len(pairs), 2, 3)
    out = []
    for p in probs:
        x_first, y_first = VERDICTS[int(p[0].argmax())], VERDICTS[int(p[1].argmax())]
        out.append({"winner": combine(x_first, y_first)[0], "x_first": x_first, "y_first": y_first,
                    "probs_x_first": [round(float(v), 5) for v in p[0]],
                    "probs_y_first": [round(float(v), 5) for v in p[1]], "pref_x": round(preference(p[0], p[1]), 5)})
    return out


def bootstrap_mean(values: list[float], *, resamples: int = 2000, seed: int = 0) -> dict:
    """Mean with a 95% percentile-bootstrap interval."""
    v = np.asarray(values, dtype=float)
    draws = v[np.random.default_rng(seed).integers(0, len(v), (resamples, len(v)))].mean(1)
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return {"mean": float(v.mean()), "lo": float(lo), "hi": float(hi), "n": len(v)}


def check(judge: Judge, labelled: list[tuple[str, str, str]], dimension: str) -> dict:
    """How well the judge agrees with labels: (question, better, worse) triples judged in both orders.

    `preferred`: P(better preferred) with a 95% bootstrap interval over pairs; `accuracy`: the fraction with
    P > ½; `mt_bench`: the order-consistent verdicts' fractions. If `preferred`'s interval holds ½, the judge is
    no better than chance on this dimension and its verdicts are not evidence."""
    if not labelled:
        raise DGAlignError("judge check: no labelled pairs")
    res = judge_pairs(judge, [(q, good, bad, dimension) for q, good, bad in labelled])
    prefs = [r["pref_x"] for r in res]
    preferred = bootstrap_mean(prefs)
    return {"dimension": dimension, "pairs": len(res), "preferred": preferred,
            "accuracy": bootstrap_mean([float(p > 0.5) for p in prefs]),
            "mt_bench": {w: sum(r["winner"] == w for r in res) / len(res) for w in ("x", "tie", "y")},
            "chance": preferred["lo"] <= 0.5 <= preferred["hi"]}


def judge_run(store: Store, items: list[int], judge: Judge, rater: str, dimensions: list[str],
              progress: bool = True) -> list[dict]:
    """Judge every item the rater has not judged yet (resumable), then the verdict table over all of `items`:
    per (pair, dimension), x wins / ties / y wins, how many verdicts flipped with the order, and the mean
    debiased P(x preferred)."""
    from tqdm import tqdm

    done = {i for i, _ in store.judged(rater, items)}
    for item_id in tqdm([i for i in items if i not in done], desc=f"judging ({rater})", unit="pair",
                        disable=not progress or None):
        item = store.item(item_id)
        res = judge_pairs(judge, [(item["prompt"], item["completion_x"], item["completion_y"], d) for d in dimensions])
        store.add_judged(rater, item_id, {d: r["winner"] for d, r in zip(dimensions, res, strict=True)},
                         json.dumps({d: {k: v for k, v in r.items() if k != "winner"}
                                     for d, r in zip(dimensions, res, strict=True)}))
    table: dict[tuple[str, str, str], dict] = {}
    for item_id, note in store.judged(rater, items):
        item = store.item(item_id)
        for d, o in json.loads(note).items():
            winner, agreed = combine(o["x_first"], o["y_first"])
            row = table.setdefault((item["method_x"], item["method_y"], d),
                                   {"x": item["method_x"], "y": item["method_y"], "dimension": d, "items": 0,
                                    "x_wins": 0, "ties": 0, "y_wins": 0, "inconsistent": 0, "prefs": []})
            row["items"] += 1
            row[{"x": "x_wins", "tie": "ties", "y": "y_wins"}[winner]] += 1
            row["inconsistent"] += not agreed
            if "pref_x" in o:
                row["prefs"].append(o["pref_x"])
    for row in table.values():
        prefs = row.pop("prefs")
        row["pref_x"] = round(float(np.mean(prefs)), 4) if prefs else None
    return list(table.values())
