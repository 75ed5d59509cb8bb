"""Token-level sequential Monte Carlo with twists (Zhao et al., ICML 2024; LLaMPPL, Lew et al. 2023).

Target p_r(y | c) ∝ p_θ(y | c)·exp(β r(c, y)). One run holds N particles. At token t every
unfinished particle draws y_t from the proposal q (the base LM under the shared temperature /
top-k / top-p) and its log-weight gains

    log p_θ(y_t | y_<t) − log q(y_t | y_<t) + ψ_t − ψ_{t−1}                             (1)

with a twist ψ_t ≈ log E_p[exp(β r) | y_≤t] (ψ_0 = 0): β·r of the partial text, a DGA checkpoint's value
head or the toy's exact soft value (these two read at the hidden state before y_t, on y_t). With
proposal=twisted, q is value-guided decoding's step law (`dga.twist.step_law`, q ∝ p·e^ψ on the top-m, the
tail untilted); with the exact value over the whole vocabulary the increments (1) are then constant,
so any number of particles samples p_r exactly. A particle that finishes (EOS or the length
limit) gains the final correction β r(c, y) − ψ_{t−1} instead and keeps its weight from then on (2).
A run resamples when ESS < ess_threshold·N (3). Whatever the twist, the weights are proper for p_r
(restricted to what q can draw), and the product over resampling epochs of the mean weight is an
unbiased Ẑ of Z = Σ_y p_θ(y)·exp(β r) (Del Moral 2004) (4). Each run returns one particle drawn
from its final normalised weights (5). All runs of all prompts are one tensor batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import check_choice, check_counts, check_range
from ..cost import Meter
from ..errors import DGAlignError
from ..ops import gather, proposal_logprobs, sample_logprobs
from ..smc_math import RESAMPLING, ess, log_mean_exp, pick_rows, resample_runs
from ..types import LM, Prompts, Reward, SamplerConfig, Samples
from .common import pack, prefill
from .dga.twist import build_twist
from .vgd import tilt

TWISTS = ("reward", "none", "learned", "exact")
VALUE_TWISTS = ("learned", "exact")  # read at the LM's hidden state, so they can also shape the proposal
PROPOSALS = ("base", "twisted")


@dataclass
class SMCConfig(SamplerConfig):
    particles: int = 16  # particles per run; one run per returned completion
    ess_threshold: float = 0.5  # resample a run when its ESS falls below this fraction of `particles`
    # ψ_t: "reward" = β·r(c, partial text); "none" = 0 (plain particle filter); "learned" = a DGA checkpoint's
    # value head; "exact" = the soft value by enumeration (toy only)
    twist: str = "reward"
    checkpoint: str = ""  # for twist=learned: `dgalign train` directory, shipped name or hf:REPO[@REV]
    proposal: str = "base"  # "base" = the base LM; "twisted" = vgd's step law (needs twist=learned or exact)
    top_m: int = 64  # proposal=twisted: tokens tilted by ψ (0 = the whole vocabulary); the rest keep their base mass
    resampling: str = "systematic"  # "systematic" or "multinomial"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_counts(self, "particles")
        check_choice("twist", self.twist, TWISTS)
        check_choice("proposal", self.proposal, PROPOSALS)
        check_range("top_m", self.top_m, 0)
        check_choice("resampling scheme", self.resampling, RESAMPLING)
        check_range("ess_threshold", self.ess_threshold, 0, 1)
        if self.proposal == "twisted" and self.twist not in VALUE_TWISTS:
            raise DGAlignError(f"proposal=twisted needs a value twist (twist=learned or exact), not twist={self.twist}")
        if self.twist == "learned" and not self.checkpoint:
            raise DGAlignError("twist=learned needs --set checkpoint=DIR (train one with `dgalign train`)")


def twist(cfg: SMCConfig, meter: Meter, reward: Reward, prompts: list[str], texts: list[str]) -> torch.Tensor:
    """ψ_t of unfinished particles from their partial texts, (b,) (the value twists are read before the step)."""
    if cfg.twist == "reward":
        return cfg.beta * meter.score(reward, prompts, texts)
    return torch.zeros(len(texts), device="cpu")  # "none"


@torch.no_grad()
def sample_smc(
    lm: LM,
    reward: Reward,
    prompts: Prompts,
    cfg: SMCConfig,
    *,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Samples:
    """Twisted SMC; `log_z` is log of the mean over runs of each run's unbiased Ẑ."""
    value = build_twist(cfg.twist, lm, reward, prompts, beta=cfg.beta, max_new_tokens=cfg.max_new_tokens,
                        checkpoint=cfg.checkpoint) if cfg.twist in VALUE_TWISTS else None
    meter = Meter(lm)
    runs, n, length = len(prompts) * cfg.num_samples, cfg.particles, cfg.max_new_tokens
    size = runs * n  # particle b belongs to run b // n, prompt b // (num_samples·n)
    prompt_of = [prompts.texts[b // (cfg.num_samples * n)] for b in range(size)]
    state = prefill(lm, prompts, cfg.num_samples * n)  # rows = alive particles, in particle order

    tokens = torch.zeros(size, length, dtype=torch.long, device="cpu")  # (B, T)
    lengths = torch.zeros(size, dtype=torch.long, device="cpu")
    log_w = torch.zeros(size, dtype=torch.float64, device="cpu")  # since the run's last resampling
    psi = torch.zeros(size, dtype=torch.float64, device="cpu")  # ψ of each particle's current prefix
    base_lp = torch.zeros(size, device="cpu")  # log p_θ(y | c)
    rewards = torch.full((size,), float("nan"), device="cpu")  # r(c, y) once finished
    alive = torch.ones(size, dtype=torch.bool, device="cpu")
    log_z = torch.zeros(runs, dtype=torch.float64, device="cpu")  # Σ over epochs of log mean weight, per run
    ess_min = torch.full((runs,), float(n), dtype=torch.float64, device="cpu")
    resamples = torch.zeros(runs, dtype=torch.long, device="cpu")
    eos = torch.tensor(lm.eos_token_ids, device="cpu")

    for t in range(length):
        live = alive.nonzero().squeeze(-1)  # (b,) particle ids, the rows of `state`
        base, prop = proposal_logprobs(state.logits, cfg.temperature, cfg.top_k, cfg.top_p)  # (b, V) each
        if value is not None:  # the rows' prompts and prefixes, for the value twist
            rows_prompt = [b // (cfg.num_samples * n) for b in live.tolist()]
            prefixes = tokens[live, :t].tolist()
        if cfg.proposal == "twisted":
            prop = tilt(value, rows_prompt, prefixes, state.hidden, prop, cfg.top_m)[0]
        tok = sample_logprobs(prop, generator)  # (b,)
        lp_base, lp_prop = gather(base, tok).cpu(), gather(prop, tok).cpu()
        if value is not None:  # ψ_t = ψ(y_<t ⊕ y_t), read at the state before y_t
            psi_t = value(rows_prompt, prefixes, state.hidden, tok[:, None])[:, 0].double().cpu()
        tok = tok.cpu()
        tokens[live, t], lengths[live] = tok, t + 1
        base_lp[live] += lp_base
        log_w[live] += (lp_base - lp_prop).double()  # (1) proposal correction
        done = torch.isin(tok, eos) | (t == length - 1)
        texts = [lm.decode(row) for row in tokens[live, : t + 1].tolist()]
        prompt_rows = [prompt_of[b] for b in live.tolist()]

        # (2) finished particles: exact terminal value β·r(c, y)
        if done.any():
            ends = done.nonzero().squeeze(-1).tolist()
            r = meter.score(reward, [prompt_rows[i] for i in ends], [texts[i] for i in ends])
            rewards[live[done]] = r
            log_w[live[done]] += cfg.beta * r.double() - psi[live[done]]
            psi[live[done]] = cfg.beta * r.double()
            alive[live[done]] = False
        # (1) unfinished particles: advance the LM by their token, then twist
        if not done.all():
            keep = (~done).nonzero().squeeze(-1)
            if done.any():
                state = lm.select(state, keep.to(lm.device))
            state = lm.step(state, tok[keep][:, None].to(lm.device))
            new_psi = psi_t[keep] if value is not None else twist(
                cfg, meter, reward, [prompt_rows[i] for i in keep.tolist()], [texts[i] for i in keep.tolist()]).double()
            log_w[live[keep]] += new_psi - psi[live[keep]]
            psi[live[keep]] = new_psi

        run_ess = ess(log_w.view(runs, n))  # (R,)
        ess_min = torch.minimum(ess_min, run_ess)
        if callback is not None:
            callback({"step": t, "live": int(alive.sum()), "ess": float(run_ess.mean())})
        if not alive.any():
            break
        # (3) resample the runs whose ESS fell below the threshold; (4) bank their mean weight
        perm, log_z_inc, need = resample_runs(log_w.view(runs, n), cfg.ess_threshold, generator, cfg.resampling)
        if need.any():  # perm (B,): ancestor of each new particle
            log_z += log_z_inc
            row_of = alive.cumsum(0) - 1  # state row of each alive particle
            tokens, lengths, psi, base_lp, rewards = tokens[perm], lengths[perm], psi[perm], base_lp[perm], rewards[perm]
            alive = alive[perm]
            log_w = torch.where(need.repeat_interleave(n), 0.0, log_w)  # a resampled run restarts at weight 1
            resamples += need.long()
            state = lm.select(state, row_of[perm[alive]].to(lm.device))

    # (4) the last epoch's mean weight, (5) one draw per run from its final weights
    lw = log_w.view(runs, n)
    log_z += log_mean_exp(lw)
    final_ess = ess(lw)
    pick = pick_rows(lw, generator)  # (R,) global particle ids
    per_prompt = log_z.view(len(prompts), cfg.num_samples)
    return pack(
        lm,
        meter,
        [r // cfg.num_samples for r in range(runs)],
        [row[:m] for row, m in zip(tokens[pick].tolist(), lengths[pick].tolist(), strict=True)],
        rewards[pick],
        base_lp[pick],
        ess=float(final_ess.mean()),
        log_z=log_mean_exp(per_prompt).float(),
        extras={
            "particles": n,
            "run_log_z": log_z.float(),  # (R,) log Ẑ of each run
            "run_final_ess": final_ess.float(),  # (R,) ESS of each run's final weights
            "run_min_ess": ess_min.float(),  # (R,) smallest ESS each run reached
            "run_resamples": resamples,  # (R,) resampling events per run
        },
    )
