"""Do the objective rewards rank answers the right way? Judge and truthfulness on TruthfulQA, harmless on HH.

- judge, truthfulness: on N TruthfulQA items (every k-th question with at least two correct and
  two incorrect references), the rate at which the question's best answer scores above its
  first incorrect answer. Truthfulness is scored leave-one-out: both candidate answers are
  removed from the references it compares against (else each would match itself exactly).
- harmless: pairwise accuracy on the HH-RLHF harmless pairs held out from its training (the
  model is trained first, a few minutes, if not cached yet).

    python benchmarks/reward_checks.py [--n 20] [--judge-model NAME] [--skip-harmless] [--json]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

from dgalign.data import data_path
from dgalign.rewards import get_reward
from dgalign.rewards.truthfulness import COLUMNS, read_references


def truthfulqa_items(n: int) -> list[tuple[str, list[str], list[str]]]:
    """n spread-out (question, correct answers with the best first, incorrect answers) with ≥ 2 of each besides the candidates."""
    refs = [
        (q, correct, incorrect)
        for q, (correct, incorrect) in read_references(data_path("truthfulqa.csv")).items()
        if len([a for a in correct if a != correct[0]]) >= 2 and len(incorrect) >= 3
    ]
    return refs[:: max(1, len(refs) // n)][:n]


def leave_one_out_csv(items, path: Path) -> Path:
    """The items' references without the two candidate answers, as a TruthfulQA CSV."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for q, correct, incorrect in items:
            rest = [a for a in correct if a != correct[0]]
            writer.writerow([q, rest[0], "; ".join(rest[1:]), "; ".join(incorrect[1:])])
    return path


def rank_rate(reward, items) -> dict:
    """How often the best answer outscores the first incorrect one."""
    questions = [q for q, _, _ in items]
    good = reward(questions, [correct[0] for _, correct, _ in items])
    bad = reward(questions, [incorrect[0] for _, _, incorrect in items])
    margin = good - bad
    return {"correct_over_incorrect": (margin > 0).float().mean().item(), "wins": int((margin > 0).sum()),
            "n": len(items), "mean_margin": margin.mean().item()}


def harmless_check() -> dict:
    from dgalign.lm.embedded import cache_dir
    from dgalign.rewards.learned import CONFIG, Harmless
    from dgalign.train.reward_model import HARMLESS, held_out, pair_accuracy, read_pairs, train_and_save

    model_dir = cache_dir() / "rewards" / Harmless.name
    if not (model_dir / CONFIG).is_file():  # a reward never trains itself; this script may, once
        print("training the harmless reward model (a few minutes, once) ...", file=sys.stderr)
        train_and_save(Harmless.pairs, HARMLESS, model_dir)
    reward = get_reward("harmless")
    term = reward.terms[0][2]
    pairs = read_pairs(Harmless.pairs).subset(held_out(term, Harmless.pairs))
    meta = term.model[2]
    return {"split": "val", **pair_accuracy(reward, pairs, progress=False), "features": meta["features"],
            "n_train": meta["split"]["n_train"], "train_seconds": meta["train_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="TruthfulQA items")
    parser.add_argument("--judge-model", default=None, help="judge LM (default: the judge reward's default)")
    parser.add_argument("--skip-harmless", action="store_true", help="leave out the harmless check")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    start = time.perf_counter()
    items = truthfulqa_items(args.n)
    judge = get_reward("judge" if args.judge_model is None else f"judge(model={args.judge_model})")
    out = {"truthfulqa_items": len(items), "judge": {"model": judge.terms[0][2].model, **rank_rate(judge, items)}}
    with tempfile.TemporaryDirectory() as tmp:
        refs = leave_one_out_csv(items, Path(tmp) / "tqa.csv")
        out["truthfulness"] = {"references": "leave-one-out", **rank_rate(get_reward(f"truthfulness(data={refs})"), items)}
    if not args.skip_harmless:
        out["harmless"] = harmless_check()
    out["seconds"] = round(time.perf_counter() - start, 1)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    for name in ("judge", "truthfulness"):
        r = out[name]
        print(f"{name:13s} best answer above an incorrect one on {r['wins']}/{r['n']} TruthfulQA items "
              f"({r['correct_over_incorrect']:.0%}), mean margin {r['mean_margin']:+.3f}")
    if "harmless" in out:
        h = out["harmless"]
        print(f"harmless      chosen above rejected on {h['accuracy']:.1%} of {h['n']} held-out HH pairs "
              f"({h['features']}, trained on {h['n_train']} pairs in {h['train_seconds']:.0f} s)")
    print(f"({out['seconds']} s)")


if __name__ == "__main__":
    main()
