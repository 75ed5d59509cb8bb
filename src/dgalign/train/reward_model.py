"""Bradley-Terry reward models on preference pairs (`dgalign train-rm`) and pair accuracy (`dgalign rm-eval`).

Bradley & Terry (1952), as in InstructGPT (Ouyang et al. 2022, eq. 1):

    P(y_w ≻ y_l | c) = σ(r(c, y_w) − r(c, y_l)),      loss = −mean log σ(r(c, y_w) − r(c, y_l))

with r = head(φ(c, y)), φ frozen (`dgalign.rewards.learned`: minilm, lm:<model>, random:<dim>).
Features are computed once and cached under the dgalign cache dir, so a re-run (another head,
learning rate or seed) only trains the head. A random `val_frac` of the pairs is held out: the
head with the lowest validation loss is kept (early stopping) and its validation accuracy is
reported and saved with the model.

Pairs are JSONL, optionally gzipped, one {"chosen": ..., "rejected": ...} per line, with an
optional "prompt"; without one, HH-RLHF transcripts split at their last shared "Assistant:" turn
(`dgalign.rewards.learned.pairs_from_rows`) — or a suite's training split by name, `hh-harmless:train`,
`truthfulqa:train` (`dgalign.train.pairs`).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from dgalign.errors import DGAlignError
from dgalign.rewards.learned import LearnedReward, Pairs, RewardHead, get_features, pairs_from_rows, save_rm
from dgalign.train.pairs import pair_rows, pairs_digest, pairs_name
from dgalign.train.rm_config import HARMLESS, RMConfig  # noqa: F401  (re-exported)
from dgalign.types import Reward


def split_indices(n: int, cfg: RMConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) row indices: a seeded permutation, cut to `max_pairs`, its first `val_frac` for validation."""
    if not 0 < cfg.val_frac < 1:
        raise DGAlignError(f"val_frac must be in (0, 1), got {cfg.val_frac}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    perm = perm[: cfg.max_pairs] if cfg.max_pairs else perm
    n_val = max(1, round(len(perm) * cfg.val_frac))
    if len(perm) - n_val < 1:
        raise DGAlignError(f"{len(perm)} pairs leave none to train on after holding out {n_val}")
    return perm[n_val:], perm[:n_val]


# ------------------------------------------------------------------------------------------ features


def cached_features(features, prompts: list[str], completions: list[str], *, progress: bool = True) -> torch.Tensor:
    """φ(prompts[i], completions[i]), (B, D), read from the feature cache or computed (with a progress bar) and saved."""
    from dgalign.lm.embedded import cache_dir

    digest = hashlib.sha256(features.name.encode())
    for p, c in zip(prompts, completions, strict=True):
        digest.update(p.encode() + b"\x1f" + c.encode() + b"\x1e")
    path = cache_dir() / "features" / f"{digest.hexdigest()[:32]}.safetensors"
    if path.is_file():
        return load_file(path)["features"]
    chunk = 256
    parts = []
    with tqdm(total=len(prompts), desc=f"features {features.name}", unit="text", file=sys.stderr,
              disable=not progress) as bar:
        for i in range(0, len(prompts), chunk):
            parts.append(features(prompts[i : i + chunk], completions[i : i + chunk]).float())
            bar.update(len(parts[-1]))
    x = torch.cat(parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    save_file({"features": x.contiguous()}, tmp)
    os.replace(tmp, path)
    return x


# ------------------------------------------------------------------------------------------ training


def bt_loss(margin: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry negative log-likelihood of r_w − r_l, mean over pairs."""
    return -F.logsigmoid(margin).mean()


def fit_head(
    train_w: torch.Tensor,  # (N, D) features of the chosen answers
    train_l: torch.Tensor,  # (N, D) features of the rejected answers
    val_w: torch.Tensor,  # (M, D)
    val_l: torch.Tensor,  # (M, D)
    cfg: RMConfig,
    *,
    progress: bool = True,
) -> tuple[RewardHead, dict]:
    """Train a head by minibatch AdamW on the BT loss; keep the epoch with the lowest validation loss."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small head on small batches: extra threads only add synchronisation
    try:
        with torch.enable_grad():  # also when the caller is under no_grad
            return _fit_head(train_w, train_l, val_w, val_l, cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _fit_head(train_w, train_l, val_w, val_l, cfg: RMConfig, progress: bool) -> tuple[RewardHead, dict]:
    with torch.random.fork_rng():  # initialisation and dropout draw from the global RNG: seed it, then restore it
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        head = RewardHead(train_w.shape[1], cfg.hidden, cfg.dropout)
        both = torch.cat([train_w, train_l])  # (2N, D)
        head.mean.copy_(both.mean(0))
        head.std.copy_(both.std(0).clamp(min=1e-6))
        opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

        def evaluate(xw: torch.Tensor, xl: torch.Tensor) -> tuple[float, float]:
            head.eval()
            with torch.no_grad():
                margin = head(xw) - head(xl)
            return bt_loss(margin).item(), (margin > 0).float().mean().item()

        untrained = evaluate(val_w, val_l)[0]
        best = {"val_loss": untrained, "epoch": 0, "state": copy.deepcopy(head.state_dict())}
        bar = tqdm(range(1, cfg.epochs + 1), desc="training head", unit="epoch", file=sys.stderr, disable=not progress)
        for epoch in bar:
            head.train()
            order = torch.randperm(len(train_w), generator=gen)
            for i in range(0, len(order), cfg.batch_size):
                b = order[i : i + cfg.batch_size]
                loss = bt_loss(head(train_w[b]) - head(train_l[b]))
                opt.zero_grad()
                loss.backward()
                opt.step()
            val_loss, val_acc = evaluate(val_w, val_l)
            bar.set_postfix(val_loss=f"{val_loss:.4f}", val_acc=f"{val_acc:.3f}")
            if val_loss < best["val_loss"]:
                best = {"val_loss": val_loss, "epoch": epoch, "state": copy.deepcopy(head.state_dict())}
            elif epoch - best["epoch"] >= cfg.patience:
                break
        bar.close()
    head.load_state_dict(best["state"])
    val_loss, val_acc = evaluate(val_w, val_l)
    train_loss, train_acc = evaluate(train_w, train_l)
    return head, {
        "val_accuracy": val_acc,
        "val_loss": val_loss,
        "val_loss_untrained": untrained,
        "train_accuracy": train_acc,
        "train_loss": train_loss,
        "best_epoch": best["epoch"],
        "epochs_run": epoch,
    }


def read_pairs(spec: str | Path) -> Pairs:
    """The pairs of a pairs file or of a suite's named training set (`dgalign.train.pairs`)."""
    return pairs_from_rows(pair_rows(str(spec)))


def train_and_save(pairs_spec: str | Path, cfg: RMConfig, out: Path, *, progress: bool = True) -> dict:
    """Train a reward model on a pairs file or named set and save it to `out` atomically; returns its config."""
    pairs_spec, out = str(pairs_spec), Path(out).expanduser()
    if out.exists():
        raise DGAlignError(f"{out} already exists; choose another --out or delete it")
    start = time.perf_counter()
    pairs = read_pairs(pairs_spec)
    train_idx, val_idx = split_indices(len(pairs), cfg)
    features = get_features(cfg.features)
    used = pairs.subset(torch.cat([train_idx, val_idx]))
    n_train = len(train_idx)
    x = cached_features(features, used.prompts * 2, used.chosen + used.rejected, progress=progress)
    xw, xl = x[: len(used)], x[len(used) :]  # chosen, rejected
    head, fit = fit_head(xw[:n_train], xl[:n_train], xw[n_train:], xl[n_train:], cfg, progress=progress)
    meta = {
        "format": 1,
        "features": features.name,
        "dim": x.shape[1],
        "hidden": cfg.hidden,
        "dropout": cfg.dropout,
        "data": pairs_name(pairs_spec),
        "data_sha256": pairs_digest(pairs_spec),
        "pairs_in_file": len(pairs),
        "split": {
            "seed": cfg.seed,
            "val_frac": cfg.val_frac,
            "max_pairs": cfg.max_pairs,
            "n_train": n_train,
            "n_val": len(val_idx),
            "val_rows": val_idx.tolist(),  # 0-based rows of the pairs file held out
        },
        **fit,
        "config": dataclasses.asdict(cfg),
        "train_seconds": round(time.perf_counter() - start, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        save_rm(head, meta, Path(tmp) / "rm")
        if not out.exists():  # else a concurrent run finished first: keep its model
            os.replace(Path(tmp) / "rm", out)
    return meta


# ------------------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def pair_accuracy(reward: Reward, pairs: Pairs, *, batch_size: int = 256, progress: bool = True) -> dict:
    """{"accuracy", "n"}: the fraction of pairs whose chosen answer the reward scores strictly higher."""
    wins = 0
    with tqdm(total=len(pairs), desc="scoring pairs", unit="pair", file=sys.stderr, disable=not progress) as bar:
        for i in range(0, len(pairs), batch_size):
            part = pairs.subset(torch.arange(i, min(i + batch_size, len(pairs))))
            margin = reward(part.prompts, part.chosen) - reward(part.prompts, part.rejected)
            wins += int((margin > 0).sum())
            bar.update(len(part))
    return {"accuracy": wins / len(pairs), "n": len(pairs)}


def held_out(reward: Reward, pairs_spec: str | Path) -> torch.Tensor:
    """The validation rows of the pairs (file or named set) that the learned reward model `reward` was not trained on."""
    if not isinstance(reward, LearnedReward):
        raise DGAlignError("--split val needs one learned reward model (harmless or learned(path=DIR)); use --split all")
    meta = reward.model[2]
    if meta["data_sha256"] != pairs_digest(str(pairs_spec)):
        raise DGAlignError(f"{pairs_spec} is not the data the reward model was trained on ({meta['data']})")
    return torch.tensor(meta["split"]["val_rows"], dtype=torch.long)

