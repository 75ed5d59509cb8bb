"""DGA training (§2.6): roll out the base LM, score with the reward, fit φ then ψ.

1. Rollouts: `rollouts` completions per prompt from p_θ, scored by the reward; while decoding we
   record, at every position i, the hidden state h_i at the prefix and the top-m candidates of
   p_θ(· | prefix) — the (h, x_0 block, t, target) tuples of §2.6 — and score `score_k` of the
   candidates v with the reward on the partial text prefix ⊕ v.
2. φ = (g_φ, r_φ): L_φ = ‖μ_φ(x_t) − μ̃(x_t, x_0)‖² + α·L_value, with t uniform,
   x_t = √ᾱ_t e_y + √(1−ᾱ_t) z, μ̃ the true DDPM posterior mean. The value head is a *soft value*
   (`value_target=soft`, the default): β·r_φ(e_y, 0, h_t) ≈ ψ(y_≤t) = log E_{p_θ}[exp(β r) | y_≤t], the
   twist p_θ·e^ψ needs (CD-Q / FUDGE, Mudgal et al. 2024). Each rollout's final reward r is one Monte
   Carlo draw given each of its prefixes, and the LINEX loss e^u − u − 1 with u = β(r − r_φ) is minimised
   exactly at r_φ = (1/β)·log E[e^{βr} | prefix] — the soft value from single draws, no branching needed
   (for small β it is the squared error / 2, i.e. E[r | prefix]). It is applied to the clean taken token
   at t = 0 (what every twist reads) and to the noised x_t (what `grad=value` differentiates).
   `value_target=contrast` is the earlier head: squared error to the standardised reward at x_t plus
   α_c times within-prefix contrasts of r_φ(e_v, 0, h) against the partial-text reward r(prefix ⊕ v)
   (ARGS's myopic signal; it over-tilts). The contrasts may also be kept as an auxiliary (α_c > 0) with
   the soft target; candidates are scored only then.
3. ψ: L_ψ = ‖δ_ψ(x_t, t, h) − ĝ/β‖² (eq. 9), ĝ the analytic guidance from r_φ's candidate values.

With `rollout_shards` = K > 1 the prompts are cut into K contiguous shards, each rolled out with its
own generator seeded from (seed, shard index) (`shard_generator`) and the shards' tuples joined in
shard order (`join_tuples`): the tuples depend on the seed and K only, not on where the shards ran,
so `dgalign train --ray` (`train.ray_collect`, the shards on Ray actors) and a local run with the same
seed and K write the same checkpoint. K = 1 is one stream seeded by `seed`, as before shards existed.

Work is saved to `<out>.work/` after every epoch (atomically) so an interrupted run resumes; the
checkpoint (`DGANets.save`) is written atomically at the end with a loss-curve PNG.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..config import MAX_SEED, check_choice, check_out_dir, check_range
from ..cost import Meter
from ..errors import DGAlignError
from ..ops import randn
from ..samplers.ancestral import BaseConfig
from ..samplers.common import prefill
from ..samplers.dga.checkpoint import CONFIG, DGANets
from ..samplers.dga.denoiser import Candidates, ddpm_mean_var, embedding_scale, posterior_logits, tweedie
from ..samplers.dga.kernel import GuideInputs, analytic
from ..samplers.dga.sampler import SCHEDULES
from ..samplers.dga.schedule import alpha_bars, base_betas
from ..samplers.rollout import rollout
from ..types import LM, Prompts, Reward

VALUE_TARGETS = ("soft", "contrast")
# TrainConfig's counts: each must be at least 1
_COUNTS = ("rollouts", "max_new_tokens", "steps", "width", "epochs_phi", "epochs_psi", "batch_size", "score_k",
           "rollout_batch", "rollout_shards")


@dataclass
class TrainConfig:
    rollouts: int = 8  # base completions per training prompt
    max_new_tokens: int = 32  # rollout length
    top_m: int = 64  # candidates per position (must match inference); 0 = the whole vocabulary
    steps: int = 30  # T of the schedule the nets are trained on (inference default)
    schedule: str = "cosine"  # base noise schedule (inference default)
    beta: float = 4.0  # β the proposal δ_ψ is fitted for (it scales linearly with β at inference)
    width: int = 256  # hidden width of the three small nets
    epochs_phi: int = 8  # passes over the tuples for φ (denoiser correction + value head)
    epochs_psi: int = 4  # passes for ψ (proposal)
    batch_size: int = 512  # tuples per optimiser step
    lr: float = 1e-3  # AdamW learning rate
    alpha: float = 1.0  # weight of the value loss in L_φ
    value_target: str = "soft"  # soft: LINEX to the soft value (1/β)·log E[e^{βr} | prefix] | contrast: the old head
    alpha_contrast: float = 0.0  # weight of the candidate-contrast loss (α_c; the `contrast` head used 10)
    score_k: int = 16  # candidates per position scored on prefix ⊕ v when α_c > 0 (the taken token + draws ∝ p_θ/2 + 1/2m)
    rollout_batch: int = 16  # prompts per rollout batch
    rollout_shards: int = 1  # prompt shards, each rolled out from its own seed (`--ray`: one actor call each)
    seed: int = 0  # seeds rollouts, noise and initialisation

    def __post_init__(self) -> None:
        """Concise errors for out-of-range knobs, from the library and from `dgalign train --set` alike."""
        for name in _COUNTS:
            check_range(name, getattr(self, name), 1)
        check_range("top_m", self.top_m, 0)  # 0 = the whole vocabulary
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("value_target", self.value_target, VALUE_TARGETS)
        check_range("beta", self.beta, 0, open_low=True)  # ψ is fitted to ĝ/β
        check_range("lr", self.lr, 0, open_low=True)
        check_range("alpha", self.alpha, 0)
        check_range("alpha_contrast", self.alpha_contrast, 0)
        if not 0 <= self.seed <= MAX_SEED:
            raise DGAlignError(f"seed must be in 0..{MAX_SEED}, got {self.seed}")

    @classmethod
    def tiny(cls) -> TrainConfig:
        """A preset that trains in well under 2 minutes on 2 CPU cores (tests, smoke runs)."""
        return cls(rollouts=4, max_new_tokens=8, epochs_phi=3, epochs_psi=2, width=64, batch_size=256)


@dataclass
class Tuples:
    """Training tuples, one per (completion, position) whose token is among the top-m."""

    hidden: torch.Tensor  # (N, Dh)
    cand_ids: torch.Tensor  # (N, m)
    cand_logp: torch.Tensor  # (N, m)
    target: torch.Tensor  # (N,) index of the taken token within the candidates
    reward: torch.Tensor  # (N,) final reward of the completion
    cand_reward: torch.Tensor  # (N, m) reward of the partial text prefix ⊕ v; NaN where v was not scored
    meta: dict = field(default_factory=dict)


@torch.no_grad()
def collect(lm: LM, reward: Reward, prompts: Prompts, cfg: TrainConfig, generator: torch.Generator) -> Tuples:
    """Roll out the base LM on every prompt, keeping h_i and the top-m of p_θ(· | prefix) at every position
    (`rollout(..., record=m)`), then score `score_k` candidates per position on the partial text prefix ⊕ v.

    Every reward call, partial texts and final completions alike, goes through a `Meter`; its counts are in
    `Tuples.meta`.
    """
    m = min(cfg.top_m, lm.vocab_size) if cfg.top_m > 0 else lm.vocab_size
    base = BaseConfig(max_new_tokens=cfg.max_new_tokens, num_samples=cfg.rollouts)
    meter = Meter(lm)
    hs, ids, lps, tgt, rws, crs = [], [], [], [], [], []
    rewards_all = []
    pieces: dict[int, str] = {}  # token id -> its text, for prefix ⊕ v

    def piece(v: int) -> str:
        if v not in pieces:
            pieces[v] = lm.decode([v])
        return pieces[v]

    for start in tqdm(range(0, len(prompts), cfg.rollout_batch), desc="rollouts", unit="batch"):
        batch = Prompts(prompts.texts[start:start + cfg.rollout_batch], prompts.ids[start:start + cfg.rollout_batch])
        out = rollout(lm, prefill(lm, batch, cfg.rollouts), base, cfg.max_new_tokens, generator=generator, record=m)
        prompt_of_row = [batch.texts[r // cfg.rollouts] for r in range(len(out.tokens))]  # rows are prompt-major
        prefixes: dict[tuple[int, ...], str] = {}  # the text of each prefix, decoded once (rollouts share some)
        scored_rows = []
        for t, step in enumerate(out.trace):  # step t: the prefix of each live row is its first t tokens
            hit = step.top_ids == step.tokens[:, None]  # (b, m); a row whose token fell outside the top-m is skipped
            live = hit.any(-1).nonzero().squeeze(-1)  # (n,)
            rows, cand = step.rows[live], step.top_ids[live]  # (n,), (n, m)
            taken = hit[live].float().argmax(-1)  # (n,) index of the drawn token among the candidates
            cr = torch.full(cand.shape, float("nan"), device="cpu")  # (n, m): NaN where v was not scored
            picks = _score_picks(step.top_logp[live], taken, cfg.score_k, generator)  # (n, k); drawn either way,
            # so the rollouts' random stream does not depend on α_c
            if _contrasts(cfg):  # score candidates on the partial text prefix ⊕ v (only the contrasts read them)
                texts = []
                for r, vs in zip(rows.tolist(), cand.gather(1, picks).tolist(), strict=True):
                    prefix = tuple(out.tokens[r][:t])
                    if prefix not in prefixes:
                        prefixes[prefix] = lm.decode(list(prefix))
                    texts += [prefixes[prefix] + piece(v) for v in vs]
                if texts:
                    scores = meter.score(reward, [prompt_of_row[r] for r in rows.tolist() for _ in range(picks.shape[1])],
                                         texts)
                    cr.scatter_(1, picks, scores.view(picks.shape))
            hs.append(step.hidden[live])
            ids.append(cand)
            lps.append(step.top_logp[live])
            tgt.append(taken)
            crs.append(cr)
            scored_rows.append(rows)
        rewards = meter.score(reward, prompt_of_row, [lm.decode(tokens) for tokens in out.tokens])  # (B,)
        rewards_all.append(rewards)
        rws += [rewards[rows] for rows in scored_rows]
    all_r = torch.cat(rewards_all)
    return Tuples(torch.cat(hs), torch.cat(ids), torch.cat(lps), torch.cat(tgt), torch.cat(rws), torch.cat(crs),
                  {"completions": len(all_r), "reward_mean": float(all_r.mean()), "reward_std": float(all_r.std()),
                   "reward_calls": meter.reward_calls, "lm_forward_tokens": lm.forward_tokens - meter.start_tokens})


def shard_generator(seed: int, index: int) -> torch.Generator:
    """The rollout generator of shard `index`: seeded from (seed, index) by numpy's SeedSequence, so the
    shards' streams are independent and each is fixed by the pair alone."""
    import numpy as np

    state = int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])
    return torch.Generator(device="cpu").manual_seed(state)


def shard_prompts(prompts: Prompts, shards: int) -> list[Prompts]:
    """`prompts` in `shards` contiguous pieces of near-equal size (none empty)."""
    n = len(prompts)
    cuts = [k * n // shards for k in range(shards + 1)]
    return [Prompts(prompts.texts[a:b], prompts.ids[a:b]) for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


def join_tuples(parts: list[Tuples]) -> Tuples:
    """The shards' tuples in shard order; their counts summed, the completions' reward mean and (unbiased)
    standard deviation pooled from each shard's."""
    n = [p.meta["completions"] for p in parts]
    mean = sum(k * p.meta["reward_mean"] for k, p in zip(n, parts, strict=True)) / sum(n)
    squares = sum((k - 1) * (p.meta["reward_std"] ** 2 if k > 1 else 0.0) + k * p.meta["reward_mean"] ** 2
                  for k, p in zip(n, parts, strict=True))  # Σ r² over every completion
    var = (squares - sum(n) * mean**2) / (sum(n) - 1) if sum(n) > 1 else math.nan
    meta = {"completions": sum(n), "reward_mean": mean, "reward_std": math.sqrt(max(var, 0.0)),
            **{k: sum(p.meta[k] for p in parts) for k in ("reward_calls", "lm_forward_tokens")}}
    return Tuples(*(torch.cat([getattr(p, f) for p in parts]) for f in
                    ("hidden", "cand_ids", "cand_logp", "target", "reward", "cand_reward")), meta)


def collect_shard(lm: LM, reward: Reward, prompts: Prompts, cfg: TrainConfig, index: int) -> Tuples:
    """`collect` on one shard, with that shard's generator; the tensors on the CPU (they travel and are joined)."""
    out = collect(lm, reward, prompts, cfg, shard_generator(cfg.seed, index))
    return Tuples(*(getattr(out, f).cpu() for f in
                    ("hidden", "cand_ids", "cand_logp", "target", "reward", "cand_reward")), out.meta)


def collect_shards(lm: LM, reward: Reward, prompts: Prompts, cfg: TrainConfig) -> Tuples:
    """Every shard here, one after another (`train.ray_collect.RayCollect` runs them on Ray actors)."""
    return join_tuples([collect_shard(lm, reward, shard, cfg, k)
                        for k, shard in enumerate(shard_prompts(prompts, cfg.rollout_shards))])


def _contrasts(cfg: TrainConfig) -> bool:
    """Whether the candidate contrasts are trained (and so the candidates scored on partial texts)."""
    return cfg.value_target == "contrast" or cfg.alpha_contrast > 0


def _score_picks(logp: torch.Tensor, taken: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Which candidates to score, (n, k'): the taken one first, then draws without replacement from
    p_θ/2 + uniform/2 (likely tokens, and a spread over the tail so the head is not extrapolating there)."""
    n, m = logp.shape
    k = min(max(k, 1), m)
    weights = 0.5 * logp.exp() + 0.5 / m
    weights[torch.arange(n, device=weights.device), taken] = 0.0
    others = torch.multinomial(weights, k - 1, replacement=False, generator=generator) if k > 1 and n else \
        torch.zeros(n, 0, dtype=torch.long, device=taken.device)
    return torch.cat([taken[:, None], others], 1)


def _noised(t: Tuples, idx: torch.Tensor, emb: torch.Tensor, abars: torch.Tensor, gen: torch.Generator):
    """A minibatch at random noise levels: candidates, x_0 = e_y, t, x_t and ᾱ_t, ᾱ_{t−1}."""
    cand = Candidates(t.cand_ids[idx], t.cand_logp[idx], emb[t.cand_ids[idx]])
    x0 = cand.emb[torch.arange(len(idx), device=idx.device), t.target[idx]]  # (B, D)
    steps = len(abars) - 1
    ts = torch.randint(1, steps + 1, (len(idx),), generator=gen, device=gen.device)
    a_t, a_prev = abars[ts], abars[ts - 1]
    x_t = a_t.float().sqrt()[:, None] * x0 + (1 - a_t.float()).sqrt()[:, None] * randn(x0.shape, x0, gen)
    return cand, x0, ts.float() / steps, x_t, a_t, a_prev


def phi_loss(nets: DGANets, t: Tuples, idx, emb, abars, alpha: float, gen,
             alpha_contrast: float = TrainConfig.alpha_contrast, value_target: str = TrainConfig.value_target,
             beta: float = TrainConfig.beta) -> tuple[torch.Tensor, dict]:
    """L_φ = ‖μ_φ − μ̃‖² (per dimension) + α·L_value + α_c·(candidate contrasts) on one minibatch."""
    cand, x0, t_frac, x_t, a_t, a_prev = _noised(t, idx, emb, abars, gen)
    h = t.hidden[idx]
    log_pi = posterior_logits(x_t, a_t, cand, nets.correction(x_t, t_frac, h))
    mu, _ = ddpm_mean_var(x_t, tweedie(log_pi, cand), a_t, a_prev)
    mu_true, _ = ddpm_mean_var(x_t, x0, a_t, a_prev)
    den = ((mu - mu_true) ** 2).mean()
    head, r = nets.value, t.reward[idx]
    if value_target == "soft":  # LINEX at the clean taken token (the twist) and at x_t (its gradient)
        rows = torch.arange(len(idx), device=idx.device)
        taken = cand.ids[rows, t.target[idx]]
        clean = head.units(head.clean(taken, x0, h, rows))
        val = (soft_value_loss(clean, r, beta) + soft_value_loss(head.reward(x_t, t_frac, h), r, beta)) / head.std**2
    else:
        val = ((head(x_t, t_frac, h) - (r - head.mean) / head.std) ** 2).mean()
    con = contrast_loss(nets, t, idx, cand, h) if alpha_contrast > 0 else torch.zeros((), device=den.device)
    return den + alpha * val + alpha_contrast * con, {"denoiser": float(den.detach()), "value": float(val.detach()),
                                                      "contrast": float(con.detach())}


def soft_value_loss(pred: torch.Tensor, reward: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean LINEX loss (e^u − u − 1)/β², u = β(r − pred): minimised over pred at (1/β)·log E[e^{βr}], the soft
    value in reward units, from single draws r; ≈ (r − pred)²/2 for small β·(r − pred)."""
    u = (beta * (reward - pred)).clamp(max=20.0)
    return (torch.expm1(u) - u).mean() / beta**2


def contrast_loss(nets: DGANets, t: Tuples, idx, cand: Candidates, h: torch.Tensor) -> torch.Tensor:
    """Within-prefix contrasts of r_φ(e_v, 0, h) against those of the partial-text reward, over the
    scored candidates: ((r_φ,v − mean r_φ) − (q_v − mean q))/σ_r, both means over the prefix's scored set.

    Centring removes the completion's reward r (the same for every candidate of a prefix, and
    noisy), so this term teaches exactly what the twist's softmax over candidates reads.
    """
    part = t.cand_reward[idx]  # (B, m)
    scored = ~part.isnan()
    if not scored.any():
        return torch.zeros((), device=part.device)
    b, v = scored.nonzero(as_tuple=True)
    pred = nets.value.clean(cand.ids[b, v], cand.emb[b, v], h, b)  # (S,) standardised
    count = scored.sum(-1).clamp(min=1).float()

    def centred(x: torch.Tensor) -> torch.Tensor:
        return x - torch.zeros(len(idx), device=x.device).index_add(0, b, x)[b] / count[b]

    diff = centred(pred) - centred(part[b, v]) / nets.value.std
    return (diff**2).sum() / len(idx)


def psi_loss(nets: DGANets, t: Tuples, idx, emb, abars, beta: float, gen) -> torch.Tensor:
    """L_ψ = ‖δ_ψ − ĝ/β‖² with ĝ the analytic guidance from r_φ's candidate values (eq. 9)."""
    cand, _, t_frac, x_t, a_t, _ = _noised(t, idx, emb, abars, gen)
    h = t.hidden[idx]
    with torch.no_grad():
        log_pi = posterior_logits(x_t, a_t, cand, nets.correction(x_t, t_frac, h))
        psi = beta * nets.value.candidates(cand, h)
        target = analytic(GuideInputs(x_t, a_t, t_frac, cand, log_pi, h, psi, beta)) / beta
    return ((nets.proposal(x_t, t_frac, h) - target) ** 2).mean()


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def check_out(out: str | Path) -> Path:
    """`out` as a checkpoint directory training may write: creatable, with no file at `<out>.work`, and
    empty or an earlier checkpoint (the new one replaces it whole, so anything else there would be lost)."""
    out = check_out_dir(out)
    check_out_dir(out.with_name(out.name + ".work"), "--out's work directory")
    if out.is_dir() and any(out.iterdir()) and not (out / CONFIG).is_file():
        raise DGAlignError(f"--out {out} is a non-empty directory that is not a DGA checkpoint; the checkpoint "
                           "would replace it whole: give a new or empty directory")
    return out


def train_dga(lm: LM, reward: Reward, reward_name: str, prompts: Prompts, out: str | Path, cfg: TrainConfig, *,
              rollouts: Callable[[Prompts, TrainConfig], Tuples] | None = None) -> DGANets:
    """Train φ then ψ for (lm, reward) on `prompts`; resumable from `<out>.work/`; returns the nets.

    `rollouts(prompts, cfg)` collects the tuples elsewhere (`train.ray_collect.RayCollect`: the shards on Ray
    actors); it must give what `collect_shards` gives here. None: here."""
    out = check_out(out)
    work = out.with_name(out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)  # tuples and nets train on the CPU; rollouts
    # on the LM's device draw from it too (ops.rand moves the draws)
    torch.manual_seed(cfg.seed)
    started = time.perf_counter()
    if (work / "tuples.pt").exists():
        tuples = Tuples(**torch.load(work / "tuples.pt", map_location="cpu"))
    else:
        if rollouts is not None:
            tuples = rollouts(prompts, cfg)
        elif cfg.rollout_shards > 1:
            tuples = collect_shards(lm, reward, prompts, cfg)
        else:
            tuples = collect(lm, reward, prompts, cfg, gen)
        _atomic_torch_save(asdict(tuples), work / "tuples.pt")
    emb = lm.embeddings().detach().float().cpu() / embedding_scale(lm)
    abars = alpha_bars(base_betas(cfg.schedule, cfg.steps))
    meta = {"model": lm.name, "reward": reward_name, "beta": cfg.beta, "emb_scale": embedding_scale(lm),
            "top_m": cfg.top_m, "steps": cfg.steps, "schedule": cfg.schedule, "train": asdict(cfg),
            "prompts": len(prompts), "tuples": len(tuples.target), **tuples.meta}
    with torch.device("cpu"):  # the nets are small: trained on the CPU, moved to the LM's device when sampling
        nets = DGANets.fresh(emb.shape[1], tuples.hidden.shape[1], emb.shape[0], cfg.width, meta)
    nets.value.mean.fill_(float(tuples.reward.mean()))
    nets.value.std.fill_(max(float(tuples.reward.std()), 1e-6))
    phi_params = [*nets.correction.parameters(), *nets.value.parameters()]
    opt_phi = torch.optim.AdamW(phi_params, lr=cfg.lr)
    opt_psi = torch.optim.AdamW(nets.proposal.parameters(), lr=cfg.lr)
    progress = {"epoch": 0, "losses": {"phi": [], "denoiser": [], "value": [], "contrast": [], "psi": []}}
    if (work / "state.pt").exists():  # resume
        saved = torch.load(work / "state.pt", map_location="cpu")
        for name, mod in nets.modules().items():
            mod.load_state_dict(saved["nets"][name])
        opt_phi.load_state_dict(saved["opt_phi"])
        opt_psi.load_state_dict(saved["opt_psi"])
        progress = saved["progress"]
        gen.set_state(saved["gen"])
    n = len(tuples.target)
    total = cfg.epochs_phi + cfg.epochs_psi
    bar = tqdm(range(progress["epoch"], total), desc="training φ, ψ", unit="epoch", initial=progress["epoch"],
               total=total)
    for epoch in bar:
        order = torch.randperm(n, generator=gen, device=gen.device)
        for start in range(0, n, cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            if epoch < cfg.epochs_phi:
                loss, parts = phi_loss(nets, tuples, idx, emb, abars, cfg.alpha, gen, cfg.alpha_contrast,
                                       cfg.value_target, cfg.beta)
                opt_phi.zero_grad()
                loss.backward()
                opt_phi.step()
                progress["losses"]["phi"].append(float(loss.detach()))
                progress["losses"]["denoiser"].append(parts["denoiser"])
                progress["losses"]["value"].append(parts["value"])
                progress["losses"]["contrast"].append(parts["contrast"])
            else:
                loss = psi_loss(nets, tuples, idx, emb, abars, cfg.beta, gen)
                opt_psi.zero_grad()
                loss.backward()
                opt_psi.step()
                progress["losses"]["psi"].append(float(loss.detach()))
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        progress["epoch"] = epoch + 1
        _atomic_torch_save({"nets": {k: m.state_dict() for k, m in nets.modules().items()},
                            "opt_phi": opt_phi.state_dict(), "opt_psi": opt_psi.state_dict(),
                            "progress": progress, "gen": gen.get_state()}, work / "state.pt")
    nets.meta.update(losses={k: v[-1] if v else None for k, v in progress["losses"].items()},
                     train_seconds=round(time.perf_counter() - started, 1))
    for mod in nets.modules().values():
        mod.eval()
    nets.save(out)
    plot_losses(progress["losses"], out / "losses.png")
    (out / "losses.json").write_text(json.dumps(progress["losses"]))
    shutil.rmtree(work)
    return nets


def plot_losses(losses: dict[str, list[float]], path: Path) -> None:
    """Loss curves of φ (denoiser, value) and ψ, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(15, 3.2))
    for ax, key, title in zip(axes, ["denoiser", "value", "contrast", "psi"],
                              ["L_φ denoiser ‖μ_φ − μ̃‖²", "L_φ value (r_φ − r̃)²", "L_φ contrasts (r_φ(e_v) − Q̃_v)²",
                               "L_ψ proposal"], strict=True):
        ax.plot(losses[key])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        if any(v > 0 for v in losses[key]):  # the contrast loss is 0 throughout when α_c = 0
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
