"""Hostile input to every command: one `error: ...` line on stderr naming what was wrong, exit code 2,
no traceback, and nothing left behind — every case runs in its own copy of a workspace of bad files,
and the workspace must hold exactly what it held before."""

import gzip
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dgalign.cli import main
from dgalign.errors import DGAlignError

TOY_REWARD = "dgalign.eval.exact:toy_reward"
GEN = ["generate", "ab", "--model", "toy", "--reward", TOY_REWARD, "--max-new-tokens", "3"]
TRAIN = ["train", "--model", "toy", "--reward", TOY_REWARD, "--prompts", "{d}/p.txt", "--tiny"]
BENCH = ["bench", "--suite", "{d}/p.txt", "--model", "toy", "--reward", TOY_REWARD, "--methods", "base",
         "--n-prompts", "1", "--max-new-tokens", "2", "--no-ppl"]
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # root writes through any permission bits
RM_EVAL = ["rm-eval", "--reward", TOY_REWARD, "--pairs", "{d}/x.jsonl"]
TRAIN_RM = ["train-rm", "--pairs", "{d}/x.jsonl", "--out", "{d}/rm"]
TRAIN_DPO = ["train-dpo", "--model", "smollm2-135m-instruct", "--pairs", "{d}/x.jsonl", "--out", "{d}/dpo"]


PAIR = b'{"prompt": "q", "chosen": "a", "rejected": "b"}\n'  # a good first line of a pairs file


def _write(path: str, data: bytes | str):
    """A case set-up: write `data` to `path` (relative to the case's workspace)."""
    def setup(d: Path) -> None:
        (d / path).write_bytes(data.encode() if isinstance(data, str) else data)
    return setup


def _read_only(path: str):
    def setup(d: Path) -> None:
        (d / path).mkdir()
        (d / path).chmod(0o500)
    return setup


# (id, arguments with {d} = the workspace, words the error line must contain, set-up of the workspace[, mark])
CASES = [
    # -- generate: models that are not models
    ("model-file-not-gguf", [*GEN[:2], "--model", "{d}/notgguf.gguf"], ["notgguf.gguf", "GGUF", "a model is"], None),
    ("model-text-file", [*GEN[:2], "--model", "{d}/notes.txt"], ["notes.txt", "GGUF"], None),
    ("model-empty-dir", [*GEN[:2], "--model", "{d}/emptydir"], ["emptydir", "config.json", "built-in name",
                                                                 "Hugging Face id", ".gguf file"], None),
    ("model-dir-without-weights", [*GEN[:2], "--model", "{d}/cfgonly"], ["cfgonly", "no weights"], None),
    ("model-dir-holding-a-gguf", [*GEN[:2], "--model", "{d}/ggufdir"], ["pass the file itself"], None),
    ("model-dir-corrupt-config", [*GEN[:2], "--model", "{d}/badcfg"], ["could not load model", "badcfg"], None),
    ("model-missing-path", [*GEN[:2], "--model", "./no-such-model-dir"], ["no-such-model-dir", "a model is"], None),
    ("model-unknown-name", [*GEN[:2], "--model", "nosuch-model"], ["unknown model 'nosuch-model'"], None),
    ("model-toy-with-adapter", [*GEN[:2], "--model", "toy+adapter:{d}/emptydir"], ["adapter"], None),
    # -- generate: prompts
    ("prompt-undecodable-bytes", [*GEN[:1], "caf\udce9", *GEN[2:]], ["prompt 1", "UTF-8"], None),
    # -- enum-like knobs of every sampler config, listing the valid values
    ("dga-schedule", [*GEN, "--method", "dga", "--set", "schedule=bogus"], ["schedule", "cosine, linear"], None),
    ("dga-init", [*GEN, "--method", "dga", "--set", "init=bogus"], ["init", "noise, draft"], None),
    ("dga-grad", [*GEN, "--method", "dga", "--set", "grad=bogus"], ["grad", "analytic"], None),
    ("dga-value", [*GEN, "--method", "dga", "--set", "value=bogus"], ["value", "learned, exact"], None),
    ("args-mode", [*GEN, "--method", "args", "--set", "mode=bogus"], ["mode", "greedy, sample"], None),
    ("refine-accept", [*GEN, "--method", "refine", "--set", "accept=bogus"], ["accept", "greedy, mh"], None),
    ("smc-twist", [*GEN, "--method", "smc", "--set", "twist=bogus"], ["twist", "reward, none"], None),
    ("smc-resampling", [*GEN, "--method", "smc", "--set", "resampling=bogus"], ["systematic, multinomial"], None),
    ("smc-proposal", [*GEN, "--method", "smc", "--set", "proposal=bogus"], ["proposal", "base, twisted"], None),
    ("vgd-value", [*GEN, "--method", "vgd", "--set", "value=bogus"], ["value", "learned, exact"], None),
    ("vgd-tail", [*GEN, "--method", "vgd", "--set", "tail=bogus"], ["tail", "base, drop"], None),
    ("cd-block-value", [*GEN, "--method", "cd-block", "--set", "value=none"], ["value", "learned, exact"], None),
    ("cd-block-select", [*GEN, "--method", "cd-block", "--set", "select=bogus"], ["select", "sample, best"], None),
    # -- value twists: what they need
    ("vgd-no-checkpoint", [*GEN, "--method", "vgd"], ["learned twist", "checkpoint=DIR", "dgalign train"], None),
    ("cd-block-no-checkpoint", [*GEN, "--method", "cd-block"], ["learned twist", "checkpoint=DIR"], None),
    ("vgd-checkpoint-missing", [*GEN, "--method", "vgd", "--set", "checkpoint={d}/emptydir"], ["not a DGA checkpoint"],
     None),
    ("smc-learned-no-checkpoint", [*GEN, "--method", "smc", "--set", "twist=learned"], ["twist=learned",
                                                                                       "checkpoint=DIR"], None),
    ("smc-twisted-without-a-value", [*GEN, "--method", "smc", "--set", "proposal=twisted"],
     ["proposal=twisted", "twist=learned or exact", "twist=reward"], None),
    # -- numbers: NaN, infinities, out-of-range values
    ("beta-nan", [*GEN, "--beta", "nan"], ["--beta", "finite"], None),
    ("beta-inf", [*GEN, "--beta", "inf"], ["--beta", "finite"], None),
    ("beta-minus-inf", [*GEN, "--beta", "-inf"], ["--beta", "finite"], None),
    ("beta-not-a-number", [*GEN, "--beta", "abc"], ["--beta"], None),
    ("set-beta-nan", [*GEN, "--set", "beta=nan"], ["beta", "finite"], None),
    ("temperature-inf", [*GEN, "--set", "temperature=inf"], ["temperature", "finite"], None),
    ("temperature-nan", [*GEN, "--set", "temperature=nan"], ["temperature", "finite"], None),
    ("top-k-negative", [*GEN, "--set", "top_k=-1"], ["top_k"], None),
    ("dga-top-m-negative", [*GEN, "--method", "dga", "--set", "top_m=-1"], ["top_m", ">= 0"], None),
    ("dga-t0", [*GEN, "--method", "dga", "--set", "t0=2"], ["t0", "[0, 1]"], None),
    ("dga-ess-threshold-nan", [*GEN, "--method", "dga", "--set", "ess_threshold=nan"], ["ess_threshold"], None),
    ("dga-round-mix", [*GEN, "--method", "dga", "--set", "round_mix=2"], ["round_mix", "-1"], None),
    ("dga-round-tau", [*GEN, "--method", "dga", "--set", "round_tau=-1"], ["round_tau"], None),
    ("dga-adaptive-lambda", [*GEN, "--method", "dga", "--set", "adaptive_lambda=-1"], ["adaptive_lambda"], None),
    ("dga-adaptive-clip", [*GEN, "--method", "dga", "--set", "adaptive_clip=0"], ["adaptive_clip", "> 0"], None),
    ("smc-ess-threshold", [*GEN, "--method", "smc", "--set", "ess_threshold=1.5"], ["ess_threshold"], None),
    ("smc-top-m-negative", [*GEN, "--method", "smc", "--set", "top_m=-1"], ["top_m", ">= 0"], None),
    ("vgd-top-m-negative", [*GEN, "--method", "vgd", "--set", "top_m=-1"], ["top_m", ">= 0"], None),
    ("cd-block-drafts-zero", [*GEN, "--method", "cd-block", "--set", "drafts=0"], ["drafts", "at least 1"], None),
    ("cd-block-block-zero", [*GEN, "--method", "cd-block", "--set", "block=0"], ["block", "at least 1"], None),
    ("langevin-top-m", [*GEN, "--method", "langevin", "--set", "top_m=0"], ["top_m", ">= 1"], None),
    ("langevin-step-size", [*GEN, "--method", "langevin", "--set", "step_size=0"], ["step_size"], None),
    ("langevin-noise-start", [*GEN, "--method", "langevin", "--set", "noise_start=0"], ["noise_start"], None),
    ("langevin-round-k", [*GEN, "--method", "langevin", "--set", "round_k=0"], ["round_k"], None),
    ("refine-span", [*GEN, "--method", "refine", "--set", "span=0"], ["span"], None),
    ("args-top-k", [*GEN, "--method", "args", "--set", "top_k=0"], ["top_k"], None),
    ("seed-too-large", [*GEN, "--seed", str(2**70)], ["--seed"], None),
    # -- reward weights: a number after a reward's name, never read as MODULE:ATTR
    ("reward-weight-nan", [*GEN[:4], "--reward", "toxicity:nan", *GEN[6:]],
     ["reward weight for 'toxicity'", "finite number", "'nan'"], None),
    ("reward-weight-inf", [*GEN[:4], "--reward", "toxicity:inf", *GEN[6:]], ["'toxicity'", "finite", "'inf'"], None),
    ("reward-weight-minus-inf", [*GEN[:4], "--reward", "toxicity:-inf", *GEN[6:]], ["'toxicity'", "'-inf'"], None),
    ("reward-weight-word", [*GEN[:4], "--reward", "sentiment:0.5,toxicity:abc", *GEN[6:]],
     ["reward weight for 'toxicity'", "'abc'"], None),
    ("reward-weight-overflows", [*GEN[:4], "--reward", "toxicity:1e999", *GEN[6:]], ["'toxicity'", "finite"], None),
    ("reward-weight-after-params", [*GEN[:4], "--reward", "length(target=5):nan", *GEN[6:]],
     ["'length(target=5)'", "finite"], None),
    ("reward-weight-of-a-module-term", [*GEN[:4], "--reward", f"{TOY_REWARD}@inf", *GEN[6:]],
     [f"'{TOY_REWARD}'", "finite"], None),
    ("seed-negative", [*GEN, "--seed", "-1"], ["--seed"], None),
    ("device-unknown", [*GEN, "--device", "nope"], ["device 'nope'", "cpu, cuda"], None),
    ("device-unavailable", [*GEN, "--device", "cuda"], ["not available"], None,
     pytest.mark.skipif(torch.cuda.is_available(), reason="cuda is available here")),
    ("option-unknown", [*GEN, "--bogus"], ["--bogus", "--help"], None),
    ("argument-missing", ["generate"], ["Missing argument"], None),
    # -- damaged DGA checkpoints
    ("checkpoint-missing", [*GEN, "--method", "dga", "--set", "checkpoint={d}/emptydir"], ["not a DGA checkpoint"],
     None),
    ("checkpoint-json-corrupt", [*GEN, "--method", "dga", "--set", "checkpoint={d}/ckpt"], ["dga.json", "damaged"],
     _write("ckpt/dga.json", '{"emb_dim": 8')),
    ("checkpoint-json-not-utf8", [*GEN, "--method", "dga", "--set", "checkpoint={d}/ckpt"], ["dga.json"],
     _write("ckpt/dga.json", b"\xff\xfe{}")),
    ("checkpoint-json-a-list", [*GEN, "--method", "dga", "--set", "checkpoint={d}/ckpt"], ["dga.json", "emb_dim"],
     _write("ckpt/dga.json", "[1, 2]")),
    ("checkpoint-weights-truncated", [*GEN, "--method", "dga", "--set", "checkpoint={d}/ckpt"],
     ["dga.safetensors", "damaged"], lambda d: _truncate(d / "ckpt" / "dga.safetensors")),
    ("checkpoint-weights-mismatch", [*GEN, "--method", "dga", "--set", "checkpoint={d}/ckpt"],
     ["dga.safetensors", "damaged"], _write("ckpt/dga.json", json.dumps({"emb_dim": 16, "hidden_dim": 8,
                                                                         "vocab_size": 4, "width": 16}))),
    # -- exact
    ("exact-beta-nan", ["exact", "--beta", "nan"], ["--beta", "finite"], None),
    ("exact-enum", ["exact", "--method", "dga", "--set", "schedule=bogus"], ["schedule"], None),
    ("exact-seed", ["exact", "--seed", "-5"], ["--seed"], None),
    # -- train
    ("train-out-under-a-file", [*TRAIN, "--out", "{d}/afile/sub"], ["afile", "is a file"], None),
    ("train-out-is-a-file", [*TRAIN, "--out", "{d}/afile"], ["afile", "is a file"], None),
    ("train-out-foreign-dir", [*TRAIN, "--out", "{d}/cfgonly"], ["cfgonly", "not a DGA checkpoint"], None),
    ("train-prompts-bad-json", [*TRAIN, "--out", "{d}/t", "--prompts", "{d}/bad.jsonl"], ["bad.jsonl:2", "JSON"], None),
    ("train-prompts-no-field", [*TRAIN, "--out", "{d}/t", "--prompts", "{d}/noprompt.jsonl"], ["noprompt.jsonl:2", '"prompt"'], None),
    ("train-prompts-not-utf8", [*TRAIN, "--out", "{d}/t", "--prompts", "{d}/latin1.txt"], ["latin1.txt:1", "UTF-8"], None),
    ("train-skip-negative", [*TRAIN, "--out", "{d}/t", "--skip", "-1"], ["--skip"], None),
    ("train-skip-past-the-end", [*TRAIN, "--out", "{d}/t", "--skip", "100"], ["no prompts left"], None),
    ("train-beta-nan", [*TRAIN, "--out", "{d}/t", "--beta", "nan"], ["--beta", "finite"], None),
    ("train-beta-zero", [*TRAIN, "--out", "{d}/t", "--beta", "0"], ["beta", "> 0"], None),
    ("train-top-m-negative", [*TRAIN, "--out", "{d}/t", "--set", "top_m=-1"], ["top_m", ">= 0"], None),
    ("train-schedule", [*TRAIN, "--out", "{d}/t", "--set", "schedule=bogus"], ["schedule", "cosine, linear"], None),
    ("train-rollouts-zero", [*TRAIN, "--out", "{d}/t", "--set", "rollouts=0"], ["rollouts", ">= 1"], None),
    ("train-epochs-psi-zero", [*TRAIN, "--out", "{d}/t", "--set", "epochs_psi=0"], ["epochs_psi", ">= 1"], None),
    ("train-score-k-zero", [*TRAIN, "--out", "{d}/t", "--set", "score_k=0"], ["score_k", ">= 1"], None),
    ("train-steps-zero", [*TRAIN, "--out", "{d}/t", "--set", "steps=0"], ["steps", ">= 1"], None),
    ("train-lr-zero", [*TRAIN, "--out", "{d}/t", "--set", "lr=0"], ["lr", "> 0"], None),
    ("train-lr-nan", [*TRAIN, "--out", "{d}/t", "--set", "lr=nan"], ["lr", "finite"], None),
    ("train-alpha-negative", [*TRAIN, "--out", "{d}/t", "--set", "alpha=-1"], ["alpha", ">= 0"], None),
    ("train-set-seed-too-large", [*TRAIN, "--out", "{d}/t", "--set", f"seed={2**40}"], ["seed", "0..4294967295"],
     None),
    ("train-set-unknown", [*TRAIN, "--out", "{d}/t", "--set", "bogus=1"], ["bogus", "top_m"], None),
    # -- bench
    ("bench-out-is-a-file", [*BENCH, "--out", "{d}/afile"], ["afile", "is a file"], None),
    ("bench-out-under-a-file", [*BENCH, "--out", "{d}/afile/run"], ["afile", "is a file"], None),
    ("bench-out-unwritable", [*BENCH, "--out", "{d}/ro/run"], ["ro", "cannot be written"], _read_only("ro"),
     pytest.mark.skipif(ROOT, reason="root writes through permission bits")),
    ("bench-out-read-only-mount", [*BENCH, "--out", "/sys/dgalign-test-run"], ["/sys"], None,
     pytest.mark.skipif(not Path("/sys").is_dir(), reason="no /sys")),
    ("bench-model-unknown", [*BENCH, "--out", "{d}/b", "--model", "nosuch-model"], ["nosuch-model"], None),
    ("bench-ppl-model-unknown", [*BENCH[:-1], "--out", "{d}/b", "--ppl-model", "nosuch-model"], ["nosuch-model"],
     None),
    ("bench-device-unknown", [*BENCH, "--out", "{d}/b", "--device", "nope"], ["device 'nope'"], None),
    ("bench-enum", [*BENCH, "--out", "{d}/b", "--methods", "dga:schedule=bogus"], ["schedule"], None),
    ("bench-beta-inf", [*BENCH, "--out", "{d}/b", "--beta", "inf"], ["--beta", "finite"], None),
    ("bench-budget-nan", [*BENCH, "--out", "{d}/b", "--budget-matched", "nan"], ["--budget-matched"], None),
    ("bench-seeds-too-large", [*BENCH, "--out", "{d}/b", "--seeds", str(2**40)], ["--seeds"], None),
    ("bench-suite-bad-json", [*BENCH, "--out", "{d}/b", "--suite", "{d}/bad.jsonl"], ["bad.jsonl:2", "JSON"], None),
    ("bench-suite-no-field", [*BENCH, "--out", "{d}/b", "--suite", "{d}/noprompt.jsonl"],
     ["noprompt.jsonl:2", 'missing field "prompt"'], None),
    ("bench-suite-a-json-list", [*BENCH, "--out", "{d}/b", "--suite", "{d}/x.jsonl"], ["x.jsonl:1", '"prompt"'],
     _write("x.jsonl", '["a list"]\n')),
    ("bench-suite-prompt-not-text", [*BENCH, "--out", "{d}/b", "--suite", "{d}/x.jsonl"], ["x.jsonl:2", "string"],
     _write("x.jsonl", '{"prompt": "fine"}\n{"prompt": 3}\n')),
    ("bench-suite-lone-surrogate", [*BENCH, "--out", "{d}/b", "--suite", "{d}/x.jsonl"], ["x.jsonl:1", "UTF-8"],
     _write("x.jsonl", '{"prompt": "a\\ud800b"}\n')),
    ("bench-suite-jsonl-not-utf8", [*BENCH, "--out", "{d}/b", "--suite", "{d}/x.jsonl"], ["x.jsonl:1", "UTF-8"],
     _write("x.jsonl", b'{"prompt": "caf\xe9"}\n')),
    ("bench-suite-txt-not-utf8", [*BENCH, "--out", "{d}/b", "--suite", "{d}/latin1.txt"], ["latin1.txt:1", "UTF-8"],
     None),
    ("bench-suite-empty", [*BENCH, "--out", "{d}/b", "--suite", "{d}/empty.txt"], ["empty.txt", "no prompts"], None),
    ("bench-suite-a-directory", [*BENCH, "--out", "{d}/b", "--suite", "{d}/emptydir"], ["is a directory"], None),
    ("bench-resume-manifest-corrupt", [*BENCH, "--out", "{d}/run"], ["p.manifest.json", "damaged"],
     _write("run/p.manifest.json", '{"started": ')),
    ("bench-resume-rows-corrupt", [*BENCH, "--out", "{d}/run"], ["p.jsonl:2", "damaged"],
     lambda d: _corrupt_line(_moved_run(d), b'{"prompt_index": 1,')),
    # -- report
    ("report-manifest-corrupt", ["report", "{d}/run"], ["p.manifest.json", "damaged"],
     _write("run/p.manifest.json", "{not json")),
    ("report-manifest-not-a-manifest", ["report", "{d}/run"], ["p.manifest.json", "identity"],
     _write("run/p.manifest.json", "{}")),
    ("report-rows-corrupt", ["report", "{d}/run"], ["p.jsonl:2", "damaged"], lambda d: _corrupt_line(d, b"{oops")),
    ("report-rows-not-utf8", ["report", "{d}/run"], ["p.jsonl:2", "UTF-8"], lambda d: _corrupt_line(d, b'"\xff"')),
    ("report-row-a-list", ["report", "{d}/run"], ["p.jsonl:2", "list"], lambda d: _corrupt_line(d, b"[1]")),
    ("report-row-missing-fields", ["report", "{d}/run"], ["p.jsonl:2", "missing", "completion"],
     lambda d: _corrupt_line(d, b'{"prompt_index": 1, "method": "base", "sampler": "base", "seed": 0, "beta": 4}')),
    ("report-on-a-file", ["report", "{d}/afile"], ["afile", "is a file"], None),
    ("report-no-run", ["report", "{d}/emptydir"], ["no bench run"], None),
    # -- experiment: names and YAML fields
    ("experiment-unknown-name", ["experiment", "nosuch"], ["unknown experiment 'nosuch'", "quality", ".yaml"], None),
    ("experiment-unknown-field", ["experiment", "{d}/x.yaml", "--out", "{d}/res", "--work", "{d}/w"],
     ["x.yaml", "unknown field 'bogus'", "runs"], _write("x.yaml", "suites: [hh-harmless]\nbogus: 1\n")),
    ("experiment-field-type", ["experiment", "{d}/x.yaml", "--out", "{d}/res", "--work", "{d}/w"],
     ["x.yaml", "max_new_tokens must be integer", "'long'"],
     _write("x.yaml", "suites: [hh-harmless]\ndefaults: {max_new_tokens: long}\n")),
    ("experiment-unknown-suite", ["experiment", "{d}/x.yaml", "--out", "{d}/res", "--work", "{d}/w"],
     ["run 'a'", "unknown suite 'nosuch'"], _write("x.yaml", "runs: [{id: a, suite: nosuch}]\n")),
    ("experiment-not-yaml", ["experiment", "{d}/x.yaml", "--out", "{d}/res", "--work", "{d}/w"],
     ["x.yaml:", "not valid YAML"], _write("x.yaml", "suites: [a, b\n")),
    # -- train-dpo
    ("train-dpo-toy", ["train-dpo", "--model", "toy", "--pairs", "{d}/p.txt", "--out", "{d}/dpo"], ["toy"], None),
    ("train-dpo-out-under-a-file", ["train-dpo", "--model", "smollm2-135m-instruct", "--pairs", "{d}/p.txt", "--out",
                                    "{d}/afile/sub"], ["afile", "is a file"], None),
    ("train-dpo-pairs-not-utf8", TRAIN_DPO, ["x.jsonl:2", "UTF-8"], _write("x.jsonl", PAIR + b'{"chosen": "caf\xe9", '
                                                                       b'"rejected": "b"}\n')),
    ("train-dpo-pairs-no-field", TRAIN_DPO, ["x.jsonl:1", '"rejected"'], _write("x.jsonl", '{"chosen": "a"}\n')),
    # -- train-rm
    ("train-rm-out-under-a-file", ["train-rm", "--pairs", "{d}/p.txt", "--out", "{d}/afile/sub"], ["afile", "is a file"],
     None),
    ("train-rm-pairs-not-utf8", TRAIN_RM, ["x.jsonl:2", "UTF-8"], _write("x.jsonl", PAIR + b'{"chosen": "caf\xe9", '
                                                                     b'"rejected": "b"}\n')),
    ("train-rm-pairs-bad-json", TRAIN_RM, ["x.jsonl:2", "JSON"], _write("x.jsonl", PAIR + b"{oops\n")),
    ("train-rm-pairs-missing", ["train-rm", "--pairs", "{d}/nope.jsonl", "--out", "{d}/rm"], ["nope.jsonl", "not found"],
     None),
    # -- rm-eval: pairs files that are not pairs files
    ("rm-eval-pairs-not-utf8", RM_EVAL, ["x.jsonl:2", "UTF-8"], _write("x.jsonl", PAIR + b'{"chosen": "caf\xe9", '
                                                                   b'"rejected": "b"}\n')),
    ("rm-eval-pairs-bad-json", RM_EVAL, ["x.jsonl:2", "not JSON"], _write("x.jsonl", PAIR + b'{"chosen": "a",\n')),
    ("rm-eval-pairs-missing-fields", RM_EVAL, ["x.jsonl:2", 'missing field "chosen" and "rejected"'],
     _write("x.jsonl", PAIR + b'{"prompt": "q"}\n')),
    ("rm-eval-pairs-a-list", RM_EVAL, ["x.jsonl:1", "list"], _write("x.jsonl", b'["a", "b"]\n')),
    ("rm-eval-pairs-not-text", RM_EVAL, ["x.jsonl:2", '"rejected" must be a string'],
     _write("x.jsonl", PAIR + b'{"chosen": "a", "rejected": 3}\n')),
    ("rm-eval-pairs-lone-surrogate", RM_EVAL, ["x.jsonl:1", '"chosen"', "UTF-8"],
     _write("x.jsonl", b'{"chosen": "a\\ud800", "rejected": "b"}\n')),
    ("rm-eval-pairs-empty", RM_EVAL, ["x.jsonl", "no pairs"], _write("x.jsonl", b"\n\n")),
    ("rm-eval-pairs-gzip-damaged", [*RM_EVAL[:-1], "{d}/x.jsonl.gz"], ["x.jsonl.gz", "cannot read"],
     _write("x.jsonl.gz", gzip.compress(PAIR * 50)[:40])),
    ("rm-eval-pairs-gzip-not-gzip", [*RM_EVAL[:-1], "{d}/x.jsonl.gz"], ["x.jsonl.gz", "cannot read"],
     _write("x.jsonl.gz", PAIR)),
    ("rm-eval-pairs-a-directory", [*RM_EVAL[:-1], "{d}/emptydir"], ["emptydir", "is a directory"], None),
]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _moved_run(d: Path) -> Path:
    """The run's manifest made to name this workspace's prompts file (so that a resume matches it)."""
    path = d / "run" / "p.manifest.json"
    manifest = json.loads(path.read_text())
    manifest["identity"]["suite"] = str(d / "p.txt")
    path.write_text(json.dumps(manifest))
    return d


def _corrupt_line(d: Path, line: bytes) -> None:
    """Replace the second row of the run's rows file."""
    rows = (d / "run" / "p.jsonl").read_bytes().splitlines(keepends=True)
    rows[1] = line + b"\n"
    (d / "run" / "p.jsonl").write_bytes(b"".join(rows))


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The bad files every case may point at, a real DGA checkpoint, and a finished toy bench run."""
    from dgalign.eval.harness import BenchConfig, run_bench
    from dgalign.samplers.dga.checkpoint import DGANets

    d = tmp_path_factory.mktemp("hostile")
    for name in ("emptydir", "cfgonly", "ggufdir", "badcfg"):
        (d / name).mkdir()
    (d / "notgguf.gguf").write_text("hello, not a GGUF\n")
    (d / "notes.txt").write_text("some notes\n")
    (d / "cfgonly" / "config.json").write_text("{}")
    (d / "ggufdir" / "model.gguf").write_bytes(b"GGUF")
    (d / "badcfg" / "config.json").write_text("{not json")
    (d / "badcfg" / "model.safetensors").write_bytes(b"x")
    (d / "afile").write_text("a file, not a directory\n")
    (d / "p.txt").write_text("ab\nba\nc\n")
    (d / "bad.jsonl").write_text('{"prompt": "ok"}\n{bad json\n')
    (d / "noprompt.jsonl").write_text('{"prompt": "ok"}\n{"text": "no prompt field"}\n')
    (d / "latin1.txt").write_bytes("café\n".encode("latin-1"))
    (d / "empty.txt").write_text("\n\n")
    DGANets.fresh(8, 8, 4, width=16, meta={"model": "toy"}).save(d / "ckpt")
    run_bench(BenchConfig(suite=str(d / "p.txt"), out=str(d / "run"), methods=["base"], n_prompts=3,
                          max_new_tokens=2, model="toy", reward=TOY_REWARD, ppl_model=""), progress=False)
    return d


def _tree(d: Path) -> dict:
    """Every path under `d` with its size and modification time (directories: just the path)."""
    return {str(p.relative_to(d)): None if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(d.rglob("*"))}


def run(monkeypatch, capsys, args):
    monkeypatch.setattr(sys, "argv", ["dgalign", *args])
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def check_one_line(code, out: str, err: str, words: list[str]) -> None:
    assert code == 2, (out, err)
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"


@pytest.mark.parametrize(("args", "words", "setup"), [pytest.param(*c[1:4], id=c[0], marks=c[4:]) for c in CASES])
def test_bad_input(args, words, setup, template, tmp_path, monkeypatch, capsys):
    d = tmp_path / "w"
    shutil.copytree(template, d)
    if setup is not None:
        setup(d)
    before = _tree(d)
    try:
        code, out, err = run(monkeypatch, capsys, [a.replace("{d}", str(d)) for a in args])
    finally:
        if (d / "ro").exists():
            (d / "ro").chmod(0o700)
    check_one_line(code, out, err, words)
    assert _tree(d) == before  # nothing created, nothing changed: no empty --out, no plots/, no partial file


def test_prompt_with_invalid_utf8_bytes_on_the_command_line(tmp_path):
    """The shell passes bytes; Python keeps undecodable ones as surrogate escapes, which must not reach the tokenizer."""
    cmd = [sys.executable, "-m", "dgalign", *GEN[:1], b"caf\xe9 \xff".decode("utf-8", "surrogateescape"), *GEN[2:]]
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run([os.fsencode(c) for c in cmd], capture_output=True, env=env, cwd=tmp_path)
    check_one_line(proc.returncode, proc.stdout.decode(), proc.stderr.decode(), ["prompt 1", "UTF-8"])
    assert list(tmp_path.iterdir()) == []



# -- the library, called directly: the same concise errors as the CLI's

@pytest.mark.parametrize(("kwargs", "message"), [
    ({"beta": math.inf}, "beta must be a finite number, got inf"),
    ({"beta": -math.inf}, "beta must be a finite number, got -inf"),
    ({"beta": math.nan}, "beta must be a finite number, got nan"),
    ({"temperature": math.inf}, "temperature must be a finite number > 0, got inf"),
    ({"temperature": math.nan}, "temperature must be a finite number > 0, got nan"),
    ({"temperature": 0.0}, "temperature must be > 0, got 0"),
    ({"top_p": math.nan}, r"top_p must be in \(0, 1\]"),
])
def test_sampler_configs_refuse_non_finite_knobs(kwargs, message):
    from dgalign.samplers.dga.sampler import DGAConfig
    from dgalign.types import SamplerConfig

    for config in (SamplerConfig, DGAConfig):  # every sampler's config inherits the checks
        with pytest.raises(DGAlignError, match=message):
            config(**kwargs)
    assert SamplerConfig(beta=-2.0).beta == -2.0  # a negative β (pushing the reward down) is allowed


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"top_m": -1}, "top_m must be >= 0, got -1"),
    ({"schedule": "bogus"}, "unknown schedule 'bogus'; valid: cosine, linear"),
    ({"rollouts": 0}, "rollouts must be >= 1, got 0"),
    ({"epochs_phi": 0}, "epochs_phi must be >= 1"),
    ({"batch_size": -4}, "batch_size must be >= 1"),
    ({"rollout_batch": 0}, "rollout_batch must be >= 1"),
    ({"width": 0}, "width must be >= 1"),
    ({"beta": 0.0}, "beta must be > 0, got 0"),
    ({"beta": math.inf}, "beta must be a finite number > 0, got inf"),
    ({"lr": -1e-3}, "lr must be > 0"),
    ({"lr": math.nan}, "lr must be a finite number > 0, got nan"),
    ({"alpha": -1.0}, "alpha must be >= 0"),
    ({"alpha_contrast": math.inf}, "alpha_contrast must be a finite number >= 0"),
    ({"seed": -1}, r"seed must be in 0\.\.4294967295, got -1"),
])
def test_train_config_checks_every_field(kwargs, message):
    from dgalign.config import apply_overrides
    from dgalign.train.dga import TrainConfig

    with pytest.raises(DGAlignError, match=message):
        TrainConfig(**kwargs)
    if all(math.isfinite(v) for v in kwargs.values() if isinstance(v, float)):  # (--set refuses NaN, inf itself)
        with pytest.raises(DGAlignError, match=message):  # `dgalign train --set` builds the config the same way
            apply_overrides(TrainConfig(), {k: str(v) for k, v in kwargs.items()})
    assert TrainConfig(top_m=0).top_m == 0  # 0 = the whole vocabulary


@pytest.mark.parametrize(("method", "kwargs", "message"), [
    ("vgd", {"value": "none"}, "unknown value 'none'; valid: learned, exact"),
    ("vgd", {"tail": "cut"}, "unknown tail 'cut'; valid: base, drop"),
    ("vgd", {"top_m": -1}, "top_m must be >= 0, got -1"),
    ("cd-block", {"drafts": 0}, "drafts must be at least 1, got 0"),
    ("cd-block", {"select": "top"}, "unknown select 'top'; valid: sample, best"),
    ("smc", {"proposal": "value"}, "unknown proposal 'value'; valid: base, twisted"),
    ("smc", {"twist": "learned"}, "twist=learned needs --set checkpoint=DIR"),
    ("smc", {"proposal": "twisted", "twist": "none"}, r"proposal=twisted needs a value twist \(twist=learned or exact\)"),
])
def test_value_twist_configs_check_their_fields(method, kwargs, message):
    from dgalign.samplers import get_sampler

    default = type(get_sampler(method)[1])
    with pytest.raises(DGAlignError, match=message):
        default(**kwargs)


@pytest.mark.parametrize(("data", "words"), [
    (b'{"chosen": "a", "rejected": "b"}\n\xff\xfe\n', ["x.jsonl:2", "not UTF-8"]),
    (b'{"chosen": "a", "rejected": "b"}\n{"chosen": \n', ["x.jsonl:2", "not JSON"]),
    (b'\n{"chosen": "a"}\n', ["x.jsonl:2", 'missing field "rejected"']),
    (b'{"prompt": 1, "chosen": "a", "rejected": "b"}\n', ["x.jsonl:1", '"prompt" must be a string, got int']),
])
def test_pairs_files_fail_at_their_line(tmp_path, data, words):
    from dgalign.data import read_pair_rows
    from dgalign.train.reward_model import read_pairs

    (tmp_path / "x.jsonl").write_bytes(data)
    for read in (read_pairs, read_pair_rows):  # train-rm / rm-eval, and train-dpo
        with pytest.raises(DGAlignError) as info:
            read(tmp_path / "x.jsonl")
        for word in words:
            assert word in str(info.value)
    with gzip.open(tmp_path / "x.jsonl.gz", "wb") as f:
        f.write(data)
    with pytest.raises(DGAlignError, match=words[1]):
        read_pairs(tmp_path / "x.jsonl.gz")


def test_train_dpo_on_the_toy_lm_says_so(tmp_path):
    pytest.importorskip("trl")
    from dgalign.train.dpo import DPOTrainConfig, train_dpo

    (tmp_path / "pairs.jsonl").write_bytes(PAIR * 4)
    with pytest.raises(DGAlignError, match="DPO fine-tunes a Hugging Face model; 'toy' has no weights"):
        train_dpo(DPOTrainConfig(model="toy", pairs=str(tmp_path / "pairs.jsonl"), out=str(tmp_path / "dpo")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl"]
