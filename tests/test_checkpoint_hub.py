"""DGA checkpoints on the Hugging Face Hub: `checkpoint=hf:REPO_ID[@REVISION]` and `dgalign train --push-to-hub`.

The Hub is never reached. Loading goes through `huggingface_hub.snapshot_download`'s real code path
against an offline cache in tmp_path laid out as the Hub writes it (`models--ORG--NAME/snapshots/<commit>/`,
`refs/<branch>`); pushing goes to a recording stand-in for `HfApi`, whose uploads are then laid out as
such a cache and loaded back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
import torch
from huggingface_hub import constants
from huggingface_hub.utils import filter_repo_objects

from dgalign.cli import main
from dgalign.errors import DGAlignError
from dgalign.samplers.dga.checkpoint import HUB_FILES, DGANets, resolve_checkpoint
from dgalign.server.engine import Engine, Limits
from dgalign.server.schemas import APIError
from dgalign.train import hub

TOY_REWARD = "dgalign.eval.exact:toy_reward"
C1, C2 = "1" * 40, "2" * 40  # commit hashes


def _toy_nets(tag: str, seed: int = 0) -> DGANets:
    """Untrained nets for the toy LM (8-dim embeddings and hidden states, 4 tokens), `tag` in their meta."""
    torch.manual_seed(seed)
    return DGANets.fresh(8, 8, 4, width=8, meta={"model": "toy", "reward": "toy", "beta": 4.0, "tag": tag})


def _cache_repo(cache: Path, repo_id: str, commit: str, refs: tuple[str, ...] = ("main",),
                nets: DGANets | None = None, files: dict[str, str] | None = None) -> Path:
    """Put one commit of `repo_id` into the HF cache at `cache`, as snapshot_download leaves it; `refs`
    name the branches (or tags) that point at it. Returns the snapshot directory."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    if nets is not None:
        nets.save(snapshot)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {}).items():
        (snapshot / name).write_text(text)
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline HF cache in tmp_path: HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE=1 in the environment, and in
    huggingface_hub's constants too (it reads them once, at import)."""
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _same_weights(a: DGANets, b: DGANets) -> bool:
    return all(torch.equal(x, y) for name in a.modules()
               for x, y in zip(a.modules()[name].state_dict().values(), b.modules()[name].state_dict().values(),
                               strict=True))


def _load_error(spec: str) -> str:
    with pytest.raises(DGAlignError) as err:
        DGANets.load(spec)
    assert "\n" not in str(err.value)
    return str(err.value)


# -- checkpoint=hf:REPO_ID[@REVISION] ---------------------------------------------------------------------
def test_a_hub_checkpoint_loads_from_the_cache_through_snapshot_download(hub_cache):
    nets = _toy_nets("main")
    snapshot = _cache_repo(hub_cache, "org/dga-toy", C1, nets=nets)
    assert resolve_checkpoint("hf:org/dga-toy") == snapshot
    loaded = DGANets.load("hf:org/dga-toy")
    assert loaded.meta["tag"] == "main" and loaded.meta["model"] == "toy"
    assert _same_weights(nets, loaded)


def test_a_revision_resolves_by_branch_tag_or_commit_hash(hub_cache):
    old, new = _toy_nets("v1", seed=1), _toy_nets("v2", seed=2)
    _cache_repo(hub_cache, "org/dga-toy", C1, refs=("v1",), nets=old)
    _cache_repo(hub_cache, "org/dga-toy", C2, refs=("main", "exp"), nets=new)
    for spec, tag in [("hf:org/dga-toy", "v2"), ("hf:org/dga-toy@main", "v2"), ("hf:org/dga-toy@exp", "v2"),
                      ("hf:org/dga-toy@v1", "v1"), (f"hf:org/dga-toy@{C1}", "v1"), (f"hf:org/dga-toy@{C2}", "v2")]:
        loaded = DGANets.load(spec)
        assert loaded.meta["tag"] == tag, spec
        assert _same_weights(old if tag == "v1" else new, loaded), spec


def test_a_repo_or_revision_not_in_the_cache_is_one_line_naming_it(hub_cache):
    _cache_repo(hub_cache, "org/dga-toy", C1, nets=_toy_nets("main"))
    message = _load_error("hf:org/missing")
    assert "'org/missing'" in message and "HF_HUB_OFFLINE" in message and "not in the local cache" in message
    message = _load_error("hf:org/dga-toy@v9")
    assert "'org/dga-toy'" in message and "'v9'" in message and "not in the local cache" in message
    message = _load_error(f"hf:org/dga-toy@{C2}")  # a commit that was never fetched
    assert "'org/dga-toy'" in message and C2 in message


def test_a_repo_without_the_checkpoint_files_is_not_a_checkpoint(hub_cache):
    _cache_repo(hub_cache, "org/just-a-card", C1, files={"README.md": "# hello\n"})
    message = _load_error("hf:org/just-a-card")
    assert "'org/just-a-card'" in message and "not a DGA checkpoint" in message
    assert "dga.json" in message and "dga.safetensors" in message
    _cache_repo(hub_cache, "org/no-weights", C1, files={"dga.json": "{}"})
    message = _load_error("hf:org/no-weights")
    assert "'org/no-weights'" in message and "dga.safetensors" in message and "no dga.json" not in message


@pytest.mark.parametrize("spec, words", [
    ("hf:", ["give a Hub repo"]),
    ("hf:org/dga@", ["give a Hub repo", "@REVISION"]),
    ("hf:not a repo!", ["'not a repo!'", "HFValidationError"]),
    ("hf:a/b/c", ["'a/b/c'", "HFValidationError"]),
])
def test_a_malformed_hub_spec_is_one_line(hub_cache, spec, words):
    message = _load_error(spec)
    assert all(w in message for w in words), message


def test_the_hub_cache_is_found_from_the_environment_alone(tmp_path):
    """A fresh interpreter given only HF_HOME and HF_HUB_OFFLINE=1, as a user would run it."""
    _cache_repo(tmp_path / "hf" / "hub", "org/dga-toy", C1, refs=("main", "v1"), nets=_toy_nets("fresh"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    code = "from dgalign.samplers.dga.checkpoint import DGANets; print(DGANets.load('hf:org/dga-toy@v1').meta['tag'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "fresh"


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["dgalign", *args])
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def test_dga_samples_with_a_hub_checkpoint(hub_cache, monkeypatch, capsys):
    _cache_repo(hub_cache, "org/dga-toy", C1, nets=_toy_nets("main"))
    code, out, err = _cli(monkeypatch, capsys, "generate", "ab", "--model", "toy", "--reward", TOY_REWARD,
                          "--method", "dga", "--set", "checkpoint=hf:org/dga-toy", "--max-new-tokens", "3", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["method"] == "dga" and 0 < res["results"][0]["num_tokens"] <= 3


# -- the server: hf: only when the operator allows checkpoint paths ----------------------------------------
def test_the_server_refuses_hub_checkpoints_unless_checkpoint_paths_are_allowed(toy, hub_cache):
    _cache_repo(hub_cache, "org/dga-toy", C1, nets=_toy_nets("main"))
    for spec in ["hf:org/dga-toy", "hf:org/dga-toy@main", "hf:org/missing"]:
        with pytest.raises(APIError, match="must name a shipped checkpoint") as err:
            Engine(toy, Limits()).checkpoint(spec)
        assert err.value.status == 400 and err.value.param == "alignment.params.checkpoint"
    opened = Engine(toy, Limits(checkpoint_paths=True))  # --allow-checkpoint-paths
    opened.checkpoint("hf:org/dga-toy")  # trained for the toy: accepted
    with pytest.raises(APIError, match="'org/missing'") as err:
        opened.checkpoint("hf:org/missing")
    assert err.value.status == 400


# -- dgalign train --push-to-hub -----------------------------------------------------------------------------
class FakeHfApi:
    """Records what `HfApi` is asked to do; `fail` makes upload_folder raise it."""

    calls: list[tuple[str, dict]] = []
    uploads: list[dict] = []
    fail: Exception | None = None

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        if self.fail is not None:
            raise self.fail
        folder = Path(kwargs["folder_path"])
        names = [p.name for p in folder.iterdir() if p.is_file()]
        chosen = filter_repo_objects(names, allow_patterns=kwargs.get("allow_patterns"),
                                     ignore_patterns=kwargs.get("ignore_patterns"))
        self.uploads.append({name: (folder / name).read_bytes() for name in chosen})
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/{C2}"})()


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """FakeHfApi in place of HfApi, a token, the Hub not switched off; prompts for a toy training run."""
    FakeHfApi.calls, FakeHfApi.uploads, FakeHfApi.fail = [], [], None
    monkeypatch.setattr(hub, "HfApi", FakeHfApi)
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    (tmp_path / "p.txt").write_text("ab\nba\nabc\n")
    return FakeHfApi


def _train(tmp_path, *push: str) -> list[str]:
    return ["train", "--model", "toy", "--reward", TOY_REWARD, "--prompts", str(tmp_path / "p.txt"), "--tiny",
            "--out", str(tmp_path / "ck"), *push]


def test_train_pushes_the_checkpoint_files_and_a_model_card(fake_hub, tmp_path, monkeypatch, capsys):
    code, out, err = _cli(monkeypatch, capsys, *_train(tmp_path, "--push-to-hub", "me/dga-toy", "--private",
                                                       "--hub-revision", "exp"))
    assert code == 0, err
    ck = tmp_path / "ck"
    assert [name for name, _ in fake_hub.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert fake_hub.calls[0][1] == {"repo_id": "me/dga-toy", "exist_ok": True, "private": True}
    assert fake_hub.calls[1][1] == {"repo_id": "me/dga-toy", "branch": "exp", "exist_ok": True}
    upload = fake_hub.calls[2][1]
    assert upload["repo_id"] == "me/dga-toy" and Path(upload["folder_path"]) == ck and upload["revision"] == "exp"
    files = fake_hub.uploads[0]
    assert sorted(files) == sorted(HUB_FILES)  # the checkpoint, its command and card; not losses.png/.json
    assert (ck / "losses.png").exists() and (ck / "losses.json").exists()
    card = files["README.md"].decode()
    meta = json.loads(files["dga.json"])
    assert "library_name: dgalign" in card and "# me/dga-toy" in card
    assert "**Base model**: `toy`" in card and f"**Reward**: `{TOY_REWARD}`" in card
    assert f"**β**: {meta['beta']}" in card and "--set checkpoint=hf:me/dga-toy@exp" in card
    command = files["TRAIN_COMMAND"].decode()
    assert "dgalign train --model toy" in command and "--push-to-hub me/dga-toy" in command
    assert command.strip() in card
    assert "hf:me/dga-toy@exp" in out and f"commit/{C2}" in out
    # what was pushed loads back through the Hub path, the same nets as the local checkpoint
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    snapshot = _cache_repo(cache, "me/dga-toy", C2, refs=("exp",))
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    assert _same_weights(DGANets.load(ck), DGANets.load("hf:me/dga-toy@exp"))


def test_a_failed_push_is_one_line_and_keeps_the_checkpoint(fake_hub, tmp_path, monkeypatch, capsys):
    fake_hub.fail = httpx2.ConnectError("[Errno -3] Temporary failure in name resolution")
    code, out, err = _cli(monkeypatch, capsys, *_train(tmp_path, "--push-to-hub", "me/dga-toy"))
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: the checkpoint is saved in") and "'me/dga-toy'" in line
    assert "ConnectError" in line and "hf upload me/dga-toy" in line
    assert fake_hub.calls[0][1]["private"] is None  # neither --private nor --public: the Hub's default
    assert "wrote" in out  # training finished first
    loaded = DGANets.load(tmp_path / "ck")  # and its checkpoint stays
    assert loaded.meta["model"] == "toy"


@pytest.mark.parametrize("push, env, words", [
    (["--push-to-hub", "not a repo!"], {}, ["'not a repo!'", "not a Hub repo id"]),
    (["--push-to-hub", "me/dga-toy"], {"HF_TOKEN": None}, ["token", "hf auth login"]),
    (["--push-to-hub", "me/dga-toy"], {"HF_HUB_OFFLINE": True}, ["HF_HUB_OFFLINE"]),
    (["--private"], {}, ["need --push-to-hub"]),
    (["--hub-revision", "exp"], {}, ["need --push-to-hub"]),
])
def test_push_settings_are_checked_before_training(fake_hub, tmp_path, monkeypatch, capsys, push, env, words):
    if "HF_TOKEN" in env:
        monkeypatch.delenv("HF_TOKEN")
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    if "HF_HUB_OFFLINE" in env:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, out, err = _cli(monkeypatch, capsys, *_train(tmp_path, *push))
    assert code == 2 and all(w in err for w in words), err
    assert not (tmp_path / "ck").exists() and not fake_hub.calls
