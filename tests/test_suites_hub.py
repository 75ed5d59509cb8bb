"""Prompts from datasets and files with every field: `hf:NAME[:CONFIG][@SPLIT]` through `datasets.load_dataset`
(a local directory laid out as a hub dataset repo), the field map, .jsonl / .csv references, and the bench
rows that score against them."""

import dataclasses
import json
import sys

import pytest

from dgalign.bench import load_prompts
from dgalign.cli import main
from dgalign.errors import DGAlignError
from dgalign.eval import metrics
from dgalign.eval.harness import BenchConfig, read_rows, run_bench, suite_label

TOY_REWARD = "dgalign.eval.exact:toy_reward"
QA = {"prompt": "question", "reference": "answer", "id": "qid"}  # the field map of the QA data below
TRAIN = [{"question": "ab", "answer": "a b", "qid": "q1", "level": 1},
         {"question": "ba", "answer": "b a c", "qid": "q2", "level": 2},
         {"question": "c", "answer": None, "qid": "q3", "level": 1}]  # no reference: no BLEU for this row
TEST = [{"question": "abc", "answer": "c b a", "qid": "q4", "level": 3}]


@pytest.fixture(autouse=True)
def offline_cache(tmp_path, monkeypatch):
    """datasets' cache in the test's directory, and the hub unreachable: every load is local."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def hub_dir(tmp_path):
    """A dataset repo as the hub holds one: data/<split>.jsonl, the splits named by the files."""
    d = tmp_path / "toy-qa"
    _jsonl(d / "data" / "train.jsonl", TRAIN)
    _jsonl(d / "data" / "test.jsonl", TEST)
    return d


def _message(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# -- hf: datasets ---------------------------------------------------------------------------------
def test_hub_dir_field_map_keeps_every_column(hub_dir):
    rows, raw = load_prompts(f"hf:{hub_dir}@train", fields=QA)
    assert raw is None  # not a suite: chat template, no suite rewards
    assert rows == [{**r, "prompt": r["question"], "reference": r["answer"], "id": r["qid"]} for r in TRAIN]
    # unmapped: the dataset's columns as they are
    with pytest.raises(DGAlignError) as err:
        load_prompts(f"hf:{hub_dir}@train")
    assert all(w in _message(err) for w in ("row 0", 'missing field "prompt"', "question, answer, qid, level"))


def test_hub_splits_and_slices(hub_dir):
    assert [r["prompt"] for r in load_prompts(f"hf:{hub_dir}@test", fields=QA)[0]] == ["abc"]
    assert [r["prompt"] for r in load_prompts(f"hf:{hub_dir}@train[1:]", fields=QA)[0]] == ["ba", "c"]
    with pytest.raises(DGAlignError) as err:  # two splits and none chosen
        load_prompts(f"hf:{hub_dir}", fields=QA)
    assert all(w in _message(err) for w in ("train, test", f"hf:{hub_dir}@train"))
    with pytest.raises(DGAlignError) as err:
        load_prompts(f"hf:{hub_dir}@validation", fields=QA)
    assert all(w in _message(err) for w in (str(hub_dir), "validation", "train"))


def test_hub_readme_configs_over_parquet(tmp_path):
    """Named configs from the dataset card's YAML, each over its own parquet files; one split needs no @."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "two-configs"
    for config, prompts in {"short": ["a", "b"], "long": ["abc", "cab", "bca"]}.items():
        (d / config).mkdir(parents=True)
        pq.write_table(pa.table({"text": prompts, "gold": [p[::-1] for p in prompts]}), d / config / "eval.parquet")
    (d / "README.md").write_text("---\nconfigs:\n"
                                 "- config_name: short\n  data_files:\n  - split: eval\n    path: short/*.parquet\n"
                                 "- config_name: long\n  data_files:\n  - split: eval\n    path: long/*.parquet\n"
                                 "---\n# two configs\n")
    fields = {"prompt": "text", "reference": "gold"}
    assert load_prompts(f"hf:{d}:short@eval", fields=fields)[0] == [
        {"text": "a", "gold": "a", "prompt": "a", "reference": "a"},
        {"text": "b", "gold": "b", "prompt": "b", "reference": "b"}]
    assert [r["reference"] for r in load_prompts(f"hf:{d}:long", fields=fields)[0]] == ["cba", "bac", "acb"]
    with pytest.raises(DGAlignError) as err:
        load_prompts(f"hf:{d}:medium@eval", fields=fields)
    assert all(w in _message(err) for w in ("medium", "short", "long"))
    assert suite_label(f"hf:{d}:long@eval[:2]") == "two-configs-long-eval_2_"


def test_hub_id_that_cannot_load_offline():
    with pytest.raises(DGAlignError) as err:
        load_prompts("hf:dgalign-test/no-such-dataset@train")
    msg = _message(err)
    assert "dgalign-test/no-such-dataset" in msg and "Offline" in msg  # the id, and why


@pytest.mark.parametrize("spec", ["hf:", "hf::main", "hf:@train", "hf:org/name:a:b"])
def test_hf_spec_syntax(spec):
    with pytest.raises(DGAlignError) as err:
        load_prompts(spec)
    assert "hf:NAME[:CONFIG][@SPLIT]" in _message(err)


def test_hub_values_must_be_text(hub_dir):
    with pytest.raises(DGAlignError) as err:
        load_prompts(f"hf:{hub_dir}@train", fields={"prompt": "level"})
    assert all(w in _message(err) for w in ("row 0", '"level" must be a string', "int"))
    with pytest.raises(DGAlignError) as err:
        load_prompts(f"hf:{hub_dir}@train", fields={"prompt": "question", "reference": "level"})
    assert all(w in _message(err) for w in ("row 0", '"level" must be a string', "reference"))


# -- files ----------------------------------------------------------------------------------------
def test_jsonl_keeps_every_field(tmp_path):
    path = _jsonl(tmp_path / "qa.jsonl", [{"prompt": "ab", "reference": "a b", "label": [1, 2]}, {"prompt": "c"}])
    assert load_prompts(str(path))[0] == [{"prompt": "ab", "reference": "a b", "label": [1, 2]}, {"prompt": "c"}]
    path = _jsonl(tmp_path / "renamed.jsonl", TRAIN)  # the same field map as a dataset's
    assert load_prompts(str(path), fields=QA)[0] == [
        {**r, "prompt": r["question"], "reference": r["answer"], "id": r["qid"]} for r in TRAIN]
    with pytest.raises(DGAlignError) as err:
        load_prompts(str(path), fields={"prompt": "question", "reference": "gold"})
    assert all(w in _message(err) for w in (f"{path}:1", 'missing field "gold"', "question, answer, qid, level"))


def test_csv_rows_with_references(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_bytes('\ufeffquestion,answer,note\nab,a b,"two\nlines"\n\nba,,x\n'.encode())  # BOM, blank line
    rows = load_prompts(str(path), fields={"prompt": "question", "reference": "answer"})[0]
    assert rows == [{"question": "ab", "answer": "a b", "note": "two\nlines", "prompt": "ab", "reference": "a b"},
                    {"question": "ba", "answer": "", "note": "x", "prompt": "ba", "reference": ""}]
    with pytest.raises(DGAlignError) as err:
        load_prompts(str(path))
    assert all(w in _message(err) for w in (f"{path}:3", 'missing field "prompt"', "question, answer, note"))
    path.write_text("prompt,reference\nab,a b\nba\n")
    with pytest.raises(DGAlignError) as err:
        load_prompts(str(path))
    assert all(w in _message(err) for w in (f"{path}:3", "2 columns", "prompt, reference"))
    path.write_text("prompt,reference\n   ,a b\n")
    with pytest.raises(DGAlignError) as err:
        load_prompts(str(path))
    assert all(w in _message(err) for w in (f"{path}:2", "empty prompt"))
    path.write_bytes(b"prompt\nab\ncaf\xe9\n")
    with pytest.raises(DGAlignError) as err:
        load_prompts(str(path))
    assert all(w in _message(err) for w in (f"{path}:3", "UTF-8"))


def test_field_map_only_where_there_are_columns(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("ab\nba\n")
    assert load_prompts(str(path), fields={"prompt": "prompt"})[0] == [{"prompt": "ab"}, {"prompt": "ba"}]
    for spec in (str(path), "truthfulqa"):
        with pytest.raises(DGAlignError) as err:
            load_prompts(spec, fields={"prompt": "question"})
        assert all(w in _message(err) for w in (spec, "prompt=question", "fixed fields"))
    with pytest.raises(DGAlignError) as err:
        load_prompts(str(tmp_path))
    assert all(w in _message(err) for w in ("is a directory", f"hf:{tmp_path}"))


# -- the bench over a dataset ---------------------------------------------------------------------
def test_bench_over_a_hub_dir_scores_references(hub_dir, tmp_path, monkeypatch):
    # BERTScore's MiniLM is exercised by test_bench's truthfulqa test; here a stand-in keeps this fast
    monkeypatch.setattr(metrics, "bertscore_f1", lambda hyps, refs: [0.5] * len(hyps))
    cfg = BenchConfig(suite=f"hf:{hub_dir}@train", out=str(tmp_path / "run"), methods=["base"], n_prompts=3,
                      max_new_tokens=3, model="toy", reward=TOY_REWARD, ppl_model="", prompt_field="question",
                      reference_field="answer", id_field="qid")
    path = run_bench(cfg, progress=False)
    assert path.name == "toy-qa-train.jsonl"
    rows = {r["prompt_id"]: r for r in read_rows(path)}
    assert sorted(rows) == ["q1", "q2", "q3"] and not any(r["error"] for r in rows.values())
    for source in TRAIN[:2]:
        row = rows[source["qid"]]
        assert row["prompt"] == source["question"]
        assert row["reference"] == {"bleu": metrics.bleu(row["completion"], source["answer"]),
                                    "rouge_l": metrics.rouge_l(row["completion"], source["answer"]),
                                    "bertscore": 0.5}
    assert rows["q3"]["reference"] is None
    manifest = json.loads((tmp_path / "run" / "toy-qa-train.manifest.json").read_text())
    assert {k: manifest["identity"][k] for k in ("prompt_field", "reference_field", "id_field")} == {
        "prompt_field": "question", "reference_field": "answer", "id_field": "qid"}
    # the field map gives rows their meaning: resuming with another one is refused before anything loads
    with pytest.raises(DGAlignError) as err:
        run_bench(dataclasses.replace(cfg, id_field=""), progress=False)
    assert all(w in _message(err) for w in ("id_field", "other settings"))


def test_cli_bench_missing_field_is_one_line(hub_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["dgalign", "bench", "--suite", f"hf:{hub_dir}@train", "--model", "toy",
                                      "--reward", TOY_REWARD, "--methods", "base", "--no-ppl", "--out",
                                      str(tmp_path / "run"), "--prompt-field", "query"])
    with pytest.raises(SystemExit) as exit_:
        main()
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # datasets' bars aside
    assert exit_.value.code == 2 and len(errors) == 1 and errors[0].startswith("error: ")
    assert all(w in errors[0] for w in ("row 0", 'missing field "query"', "question, answer, qid, level"))
    assert not (tmp_path / "run").exists()
