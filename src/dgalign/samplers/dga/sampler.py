"""DGA inference (§2.7) and its exact mode: `sample_dga`.

For each block of k next tokens: start x_T (R·k rows, one per position) from noise (or from a
draft of p_θ noised to t_0), run T reverse steps of the guided kernel over each position's top-m
candidates, round x̂_0 to tokens with the explicit categorical q(y | x̂_0) ∝ p_θ(y)·exp(−‖x̂_0 −
e_y‖²/2τ²), append, advance the KV cache, repeat. For k > 1 every step first peeks the LM on the
block rounded so far, which gives positions j ≥ 1 their p_θ(· | prefix ⊕ ŷ_<j), hidden state and
twist. Because q is explicit, each block gets the importance weight

    log w = log p_θ(y | prefix) + ψ(prefix ⊕ y) − ψ(prefix) − log q(y | x̂_0)

and with N particles, ESS-triggered resampling and the final correction β·r − ψ(final), the
returned answers converge to p_θ·exp(β r)/Z whatever ψ's quality (exact mode). A prompt's answers
are drawn from the pooled particles of all its runs, each weighted by its run's Ẑ. N = 1 without
correction is the paper's algorithm (fast mode). p_θ here is the base truncated to the top-m
(k > 1 exact mode insists on the whole vocabulary, top_m = 0).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...config import check_choice, check_counts, check_range
from ...cost import Meter
from ...errors import DGAlignError
from ...ops import gather, rand, randn, sample_logprobs
from ...smc_math import ess, log_mean_exp, normalise, pick_rows, resample_runs
from ...types import LM, Prompts, Reward, SamplerConfig, Samples
from ..common import pack, prefill
from .checkpoint import DGANets
from .denoiser import (
    Candidates,
    candidates,
    ddpm_mean_var,
    embedding_scale,
    posterior_logits,
    sq_dist,
    tweedie,
)
from .kernel import GuideInputs, analytic, finite_difference, perturb, value_gradient
from .schedule import RunningStats, adaptive_abar_prev, alpha_bars, base_betas
from .value import ExactToyValue

SCHEDULES = ("cosine", "linear")  # base noise schedules (schedule.base_betas)
INITS = ("noise", "draft")
GRADS = ("analytic", "value", "perturb", "fd", "proposal", "none")  # guidance estimators (kernel.py)
VALUES = ("auto", "learned", "exact", "none")


@dataclass
class DGAConfig(SamplerConfig):
    checkpoint: str = ""  # directory written by `dgalign train`; empty: exact-Tweedie denoiser, `fd` guidance
    steps: int = 30  # T, reverse diffusion steps per block (30: fast mode within MC noise of exact on the toy)
    schedule: str = "cosine"  # base noise schedule: cosine | linear
    block: int = 1  # k, tokens per diffusion block (1 = token level; = max_new_tokens: sentence level)
    top_m: int = 64  # candidates per position (the top-m of p_θ); 0 = the whole vocabulary
    init: str = "noise"  # noise: x_T ~ N(0, I) | draft: a p_θ draw noised to t0 (SDEdit)
    t0: float = 0.5  # draft init: start at step round(t0·T)
    grad: str = "auto"  # analytic | value | perturb | fd | proposal | none; auto: proposal if on, else analytic, else fd
    proposal: bool = False  # with grad=auto, use the checkpoint's δ_ψ instead of analytic (embedded: gain 0.36 vs 0.61)
    guidance_scale: float = 1.0  # multiplies γ_t·ĝ
    value: str = "auto"  # twist ψ: learned (checkpoint) | exact (toy only, by enumeration) | none; auto: learned if any
    adaptive_lambda: float = 0.0  # λ of §2.4: β_t·exp(−λ r̂(x_t)); 0 = fixed schedule
    adaptive_clip: float = 2.0  # clip of the standardised r̂ in §2.4
    round_tau: float = 0.0  # rounding temperature τ; 0 = the final step's noise scale √(1−ᾱ_1)/√ᾱ_1
    round_mix: float = -1.0  # ε: q = (1−ε)·rounding + ε·p_θ keeps weights ≤ 1/ε; −1 = auto (0 fast; exact: 1 − 0.9^k ≤ 0.5)
    particles: int = 1  # N particles per answer; 1 = fast mode, > 1 = exact mode with resampling
    ess_threshold: float = 0.5  # resample a run when ESS < threshold·N
    perturbations: int = 4  # K for the perturb and fd estimators

    def __post_init__(self) -> None:
        super().__post_init__()
        check_counts(self, "steps", "block", "particles", "perturbations")
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("init", self.init, INITS)
        check_choice("grad estimator", self.grad, ("auto", *GRADS))
        check_choice("value", self.value, VALUES)
        check_range("top_m", self.top_m, 0)
        check_range("t0", self.t0, 0, 1)
        check_range("adaptive_lambda", self.adaptive_lambda, 0)
        check_range("adaptive_clip", self.adaptive_clip, 0, open_low=True)
        check_range("round_tau", self.round_tau, 0)
        if self.round_mix != -1:
            check_range("round_mix (or -1 for auto)", self.round_mix, 0, 1)
        check_range("ess_threshold", self.ess_threshold, 0, 1)


@dataclass
class _Run:
    """Mutable per-row state of the particle system (R = answers × particles rows)."""

    tokens: list[list[int]]
    done: torch.Tensor  # (R,) bool
    psi_prev: torch.Tensor  # (R,) ψ(prefix)
    log_w: torch.Tensor  # (R,) log-weight since the last resampling
    log_q: torch.Tensor  # (R,) log q of the whole answer
    base_lp: torch.Tensor  # (R,) log p_θ (untruncated) of the whole answer
    trunc_lp: torch.Tensor  # (R,) log p_θ truncated to the top-m
    log_tilt: torch.Tensor  # (R,) Σ log of the twisted next-token law p_θ,m·e^ψ/Z the chain targets (k = 1)

    def reorder(self, index: torch.Tensor) -> None:
        self.tokens = [list(self.tokens[i]) for i in index.tolist()]
        for name in ("done", "psi_prev", "log_w", "log_q", "base_lp", "trunc_lp", "log_tilt"):
            setattr(self, name, getattr(self, name)[index])


def _resolve(cfg: DGAConfig, nets: DGANets | None, exact_value: ExactToyValue | None) -> tuple[str, str]:
    value = cfg.value if cfg.value != "auto" else ("learned" if nets is not None else "none")
    if value == "learned" and nets is None:
        raise DGAlignError("value=learned needs --set checkpoint=DIR (train one with `dgalign train`)")
    if value == "exact" and exact_value is None:
        raise DGAlignError("value=exact is only available on the toy LM")
    grad = cfg.grad
    if grad == "auto":
        grad = "proposal" if nets is not None and cfg.proposal else ("analytic" if value != "none" else "fd")
    if grad in ("proposal", "value") and nets is None:
        raise DGAlignError(f"grad={grad} needs --set checkpoint=DIR")
    if grad in ("analytic", "perturb") and value == "none":
        raise DGAlignError(f"grad={grad} needs a value twist (checkpoint, or value=exact on the toy)")
    return value, grad


@torch.no_grad()
def sample_dga(
    lm: LM,
    reward: Reward,
    prompts: Prompts,
    cfg: DGAConfig,
    *,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Samples:
    """Diffusion-Guided Alignment over blocks of `block` tokens; exact mode when `particles` > 1."""
    if cfg.block < 1:
        raise DGAlignError(f"block must be at least 1, got {cfg.block}")
    if cfg.particles > 1 and cfg.block > 1 and 0 < cfg.top_m < lm.vocab_size:
        raise DGAlignError("exact mode (particles > 1) with block > 1 needs --set top_m=0: a position's top-m "
                           "depends on the tokens before it, so a truncated proposal can miss target tokens")
    meter = Meter(lm)
    nets = _load_on(cfg.checkpoint, lm.device) if cfg.checkpoint else None  # the nets follow the LM
    if nets is not None and nets.meta.get("model") != lm.name:
        raise DGAlignError(f"checkpoint {cfg.checkpoint} was trained for model {nets.meta.get('model')!r}, not {lm.name!r}")
    exact_value = (
        ExactToyValue(lm, reward, prompts.texts[0], prompts.ids[0], cfg.max_new_tokens, cfg.beta)
        if cfg.value == "exact" and len(prompts) == 1 and lm.name == "toy" else None
    )
    value, grad = _resolve(cfg, nets, exact_value)
    emb = lm.embeddings().detach().float() / embedding_scale(lm)  # (V, D)
    n_part, answers = cfg.particles, len(prompts) * cfg.num_samples
    rows = answers * n_part
    prompt_of_row = torch.arange(len(prompts), device="cpu").repeat_interleave(cfg.num_samples * n_part)
    state = prefill(lm, prompts, cfg.num_samples * n_part)
    dev = state.logits.device  # the chain, its weights and the schedule live where the LM's outputs do
    betas = base_betas(cfg.schedule, cfg.steps)
    abars = alpha_bars(betas).to(dev)  # (T + 1,) float64
    zeros = functools.partial(torch.zeros, rows, device=dev)  # float32 per-row buffers
    run = _Run([[] for _ in range(rows)], zeros(dtype=torch.bool), zeros(), zeros(), zeros(), zeros(), zeros(),
               zeros())
    log_z = torch.zeros(answers, device=dev)
    stats, resamples, ess_trace = RunningStats(), 0, []
    eos = torch.tensor(lm.eos_token_ids, device=dev)

    def psi_of(cand: Candidates, hid: torch.Tensor, guess: torch.Tensor) -> torch.Tensor | None:
        """ψ(prefix ⊕ ŷ_<j ⊕ v) for every block position j and candidate v, (R·k, m); ŷ (R, k) the rounded block."""
        if value == "learned":
            return cfg.beta * nets.value.candidates(cand, hid)
        if value == "exact":  # one lookup per distinct (prefix, ŷ_<j); finished rows get zeros (weights frozen)
            ids = cand.ids.view(rows, guess.shape[1], -1)  # (R, k, m)
            cols = []
            for j in range(guess.shape[1]):
                inverse, rep = _distinct(groups, guess[:, :j])
                cols.append(torch.stack([
                    torch.zeros(ids.shape[-1], device="cpu") if run.done[r]
                    else exact_value([(*run.tokens[r], *guess[r, :j].tolist(), v) for v in ids[r, j].tolist()])
                    for r in rep
                ]).float().to(dev)[inverse])
            return torch.stack(cols, 1).flatten(0, 1)
        return None

    def psi_end(tok: torch.Tensor, kept: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """ψ(prefix ⊕ y_block) for a block y (R, k) kept up to its first EOS; `hidden` (R, k−1, Dh) from peeking y."""
        if value == "learned":  # the head at t = 0 on the last kept token, read at the prefix before it
            at = torch.arange(rows, device=dev), (kept.sum(1) - 1).clamp(min=0)
            h = torch.cat([state.hidden[:, None], hidden], 1)[at].float()
            return cfg.beta * nets.value.units(nets.value.clean(tok[at], emb[tok[at]], h, at[0]))
        if value == "exact":
            inverse, rep = _distinct(groups, tok)
            return exact_value([(*run.tokens[r], *tok[r].tolist()) for r in rep]).float().to(dev)[inverse]
        return zeros()

    def reward_of(picks: torch.Tensor) -> torch.Tensor:
        """Real reward of prefix ⊕ the block spelled by candidate picks (K, R·k), broadcast to (K, R·k).

        Rows sharing a prompt and prefix share a cache of scored blocks, so each distinct text is
        scored once per block.
        """
        n_pert, k = picks.shape[0], picks.shape[1] // rows
        toks = cand.ids.gather(1, picks.T).T.reshape(n_pert, rows, k)
        keys = torch.cat([groups.expand(n_pert, rows)[..., None], toks], -1).flatten(0, 1)  # (K·R, 1 + k)
        inverse, rep = _distinct(keys[:, 0], keys[:, 1:])
        distinct = [tuple(keys[i].tolist()) for i in rep]
        todo = [(i % rows, key) for i, key in zip(rep, distinct, strict=True) if key not in scored]
        if todo:
            texts = [lm.decode(run.tokens[r] + _upto_eos(list(key[1:]), lm.eos_token_ids)) for r, key in todo]
            scores = meter.score(reward, [prompts.texts[int(prompt_of_row[r])] for r, _ in todo], texts)
            scored.update(zip([key for _, key in todo], scores.tolist(), strict=True))
        values = torch.tensor([scored[key] for key in distinct], device=dev)[inverse].view(n_pert, rows)
        return values.repeat_interleave(k, 1)

    for pos in range(0, cfg.max_new_tokens, cfg.block):
        k = min(cfg.block, cfg.max_new_tokens - pos)  # this block's length; the last one may be shorter
        mix = _defensive_mix(cfg, k)
        flat = rows * k  # the chain runs on every (row, position) pair at once
        cand0 = candidates(state.logits, emb, cfg.top_m)  # position 0's top-m, (R, m)
        if grad == "fd" or value == "exact":  # rows with the same prompt and prefix share values and rewards
            keys: dict[tuple, int] = {}
            groups = torch.tensor([keys.setdefault((int(prompt_of_row[r]), *run.tokens[r]), len(keys))
                                   for r in range(rows)], device=dev)
            scored: dict[tuple, float] = {}  # fd's reward cache for this block
        noise = randn((flat, emb.shape[1]), emb, generator)  # x_T, or what noises a draft
        drafted = _draft(lm, state, cand0, emb, cfg.top_m, k, generator) if cfg.init == "draft" else None
        x, abar, start = _init(cfg, noise, abars, emb, drafted)
        # ŷ (R, k): the block rounded to tokens, which the LM reads for positions ≥ 1; before the first
        # step it is the draft, or position 0's likeliest token everywhere (each step refines it, Jacobi-style)
        guess = drafted if drafted is not None else cand0.ids[:, :1].expand(rows, k)
        cand, hid, peeked = cand0, state.hidden.float(), None  # (R·k, m) candidates, (R·k, Dh) hidden states
        psi = psi_of(cand, hid, guess) if k == 1 else None
        for t in range(start, 0, -1):  # 2.7: T reverse steps
            if k > 1:  # 2.2: the LM on the rounded block gives each position j ≥ 1 its p_θ(· | prefix ⊕ ŷ_<j)
                peeked = (guess[:, :-1], *lm.peek(state, guess[:, :-1]))
                cand, hid = _block_candidates(cand0, state.hidden.float(), peeked[1], peeked[2].float(), emb, cfg.top_m)
                psi = psi_of(cand, hid, guess)
            abar_prev = abars[t - 1].expand(flat).clone() if cfg.adaptive_lambda == 0 else None
            t_frac = torch.full((flat,), t / cfg.steps, device=dev)
            extra = nets.correction(x, t_frac, hid) if nets is not None else None
            log_pi = posterior_logits(x, abar, cand, extra)
            x0 = tweedie(log_pi, cand)
            if k > 1:  # round x̂_0 to its likeliest candidate: the block the LM reads next step
                guess = gather(cand.ids, log_pi.argmax(-1)).view(rows, k)
            if abar_prev is None:  # 2.4: adaptive β_t from the standardised predicted reward
                r_hat = _predicted_reward(nets, psi, log_pi, x, t_frac, hid)
                stats.update(r_hat)
                abar_prev = adaptive_abar_prev(abar, abars, t, stats.standardise(r_hat), cfg.adaptive_lambda,
                                               cfg.adaptive_clip)
            mean, var = ddpm_mean_var(x, x0, abar, abar_prev)  # 2.2: μ_φ, Σ_φ
            inputs = GuideInputs(x, abar, t_frac, cand, log_pi, hid, psi, cfg.beta)
            ghat = _guide(grad, inputs, nets, cfg, reward_of, generator)  # 2.3: ĝ
            gamma = ((1 - abar / abar_prev) / (abar / abar_prev).sqrt()).float()[:, None]  # β_t/√α_t
            x = mean + cfg.guidance_scale * gamma * ghat
            if t > 1:
                x = x + var.sqrt() * randn(x.shape, x, generator)
            abar = abar_prev
        # 2.7 rounding, per position: ρ_j(y | x̂_0,j) ∝ p_θ(y)·exp(−‖x̂_0,j − e_y‖²/2τ²) over its top-m. The block's
        # proposal is mixed with ε·p_θ (defensive importance sampling, Hesterberg 1995),
        # q(y_block) = (1−ε)·Π_j ρ_j(y_j) + ε·p_θ(y_block | prefix), so weights stay ≤ e^Δψ/ε for every k
        tau2 = cfg.round_tau**2 if cfg.round_tau > 0 else float((1 - abars[1]) / abars[1])
        log_rho = (cand.logp - sq_dist(x0, cand) / (2 * tau2)).log_softmax(-1)  # (R·k, m)
        live = ~run.done
        if k == 1:  # the mixture over one token is one categorical
            log_q_all = torch.logaddexp(log_rho + math.log1p(-mix), cand.logp + math.log(mix)) if mix > 0 else log_rho
            pick = sample_logprobs(log_q_all, generator)  # (R,)
            tok = gather(cand.ids, pick)[:, None]
        else:  # all positions rounded at once; with probability ε a row takes a block drawn from p_θ instead
            tok = gather(cand.ids, sample_logprobs(log_rho, generator)).view(rows, k)
            if mix > 0:
                from_base = rand((rows,), x0, generator) < mix
                if from_base.any():  # the draft costs k(k−1)/2 peeked tokens per row
                    tok = torch.where(from_base[:, None], _draft(lm, state, cand0, emb, cfg.top_m, k, generator), tok)
        tok = torch.where(live[:, None], tok, eos[0])  # (R, k)
        is_eos = torch.isin(tok, eos).long()
        kept = live[:, None] & (is_eos.cumsum(1) - is_eos == 0)  # (R, k): the answer ends at a block's first EOS
        if k == 1:
            psi_y = gather(psi, pick) if psi is not None else zeros()
            if psi is not None:
                run.log_tilt += torch.where(live, gather((cand.logp + psi).log_softmax(-1), pick), 0.0)
            block_lq, block_lp = gather(log_q_all, pick), gather(cand.logp, pick)
            block_base = gather(state.logits.float().log_softmax(-1), tok[:, 0])
        else:  # log p_θ(y_j | prefix ⊕ y_<j) needs the LM on y itself (the chain's last peek, when y is that block)
            same = torch.equal(peeked[0][live], tok[live, :-1])
            logits, hidden = peeked[1:] if same else lm.peek(state, tok[:, :-1])
            base = torch.cat([state.logits[:, None], logits], 1).float().log_softmax(-1)
            base = base.gather(-1, tok[..., None]).squeeze(-1)  # (R, k)
            block_base = block_lp = torch.where(kept, base, 0.0).sum(1)  # untruncated: k > 1 exact mode has top_m = 0
            rho_y = torch.where(cand.ids == tok.view(-1, 1), log_rho, -math.inf).logsumexp(-1).view(rows, k)
            block_lq = torch.where(kept, rho_y, 0.0).sum(1)
            if mix > 0:
                block_lq = torch.logaddexp(block_lq + math.log1p(-mix), block_lp + math.log(mix))
            psi_y = psi_end(tok, kept, hidden)
        # exact-mode weight: log p_θ,m(y_block) + ψ(prefix ⊕ y_block) − ψ(prefix) − log q(y_block | x̂_0)
        run.log_w += torch.where(live, block_lp + psi_y - run.psi_prev - block_lq, 0.0)
        run.psi_prev = torch.where(live, psi_y, run.psi_prev)
        run.log_q += torch.where(live, block_lq, 0.0)
        run.trunc_lp += torch.where(live, block_lp, 0.0)
        run.base_lp += torch.where(live, block_base, 0.0)
        tok_list, n_kept = tok.tolist(), kept.sum(1).tolist()  # kept is a prefix of each row's block
        for r in live.nonzero().squeeze(-1).tolist():
            run.tokens[r].extend(tok_list[r][: n_kept[r]])
        run.done |= (kept & (is_eos == 1)).any(1)
        if callback is not None:
            for j in range(k):  # one call per token position, as the token-level samplers make
                callback({"step": pos + j, "live": int((~run.done).sum())})
        if run.done.all() or pos + k == cfg.max_new_tokens:
            break
        if n_part > 1:  # resample runs whose ESS fell below the threshold
            lw = run.log_w.view(answers, n_part)
            ess_trace.append(float(ess(lw).mean()))
            index, log_z_inc, low = resample_runs(lw, cfg.ess_threshold, generator)  # (R,) rows; (answers,) × 2
            if low.any():
                resamples += int(low.sum())
                log_z += log_z_inc
                run.reorder(index)
                run.log_w = torch.where(low.repeat_interleave(n_part), 0.0, run.log_w)
                state, tok = lm.select(state, index), tok[index]
        state = lm.step(state, tok)  # commit the whole block (tokens after an EOS too: that row is finished)

    texts = [lm.decode(t) for t in run.tokens]
    rewards = meter.score(reward, [prompts.texts[i] for i in prompt_of_row.tolist()], texts).to(dev)
    # KL(q ‖ p_θ): the rounding's log q(y | x̂_0) is conditional on the chain, not the law of the answers, so
    # it is not used. Fast mode: log q ≈ Σ log of the twisted next-token law the chain targets (k = 1, with
    # a twist). Exact mode: the answers follow p_r = p_θ,m·e^{βr}/Z, so KL ≈ β·E[r] − log Ẑ (below).
    extras, kl = {"grad": grad, "value": value}, None
    if n_part == 1:
        if cfg.block == 1 and value != "none":  # the twist was known at every token
            kl = float((run.log_tilt - run.base_lp).mean())
        keep = torch.arange(rows, device=dev)
        out_log_z = None
    else:  # final correction β·r − ψ(final)
        run.log_w += cfg.beta * rewards - run.psi_prev
        lw = run.log_w.view(answers, n_part)
        run_log_z = log_z + log_mean_exp(lw)  # (answers,) log Ẑ of each run
        # a prompt's answers are drawn from the pool of all its runs' particles, each weighted by
        # Ẑ_run·w̄ (combining independent SMC samplers): consistent as runs grow, for any N
        pooled = (run_log_z[:, None] + normalise(lw)).view(len(prompts), cfg.num_samples * n_part)
        keep = pick_rows(pooled, generator, num=cfg.num_samples, scheme="multinomial")  # (answers,) rows
        out_log_z = log_mean_exp(run_log_z.view(len(prompts), cfg.num_samples))
        extras.update(resamples=resamples, mean_ess=sum(ess_trace) / max(len(ess_trace), 1), run_log_z=run_log_z.float(),
                      final_ess=float(ess(lw).mean()),
                      kl_target=float((run.log_q - run.trunc_lp - cfg.beta * rewards).mean() + out_log_z.mean()))
        out_log_z = out_log_z.cpu()
        extras["run_log_z"] = extras["run_log_z"].cpu()
        kl = float(cfg.beta * rewards[keep].mean() - out_log_z.mean())
    idx = keep.tolist()
    return pack(lm, meter, [int(prompt_of_row[i]) for i in idx], [run.tokens[i] for i in idx], rewards[keep].cpu(),
                run.base_lp[keep].cpu(), [texts[i] for i in idx], log_z=out_log_z, kl_to_base=kl, extras=extras)


def _load_on(checkpoint: str, device: torch.device) -> DGANets:
    """A checkpoint's nets, read on the CPU and moved to `device` (float32 whatever the LM's dtype: they are
    small, and their maths wants it)."""
    with torch.device("cpu"):
        nets = DGANets.load(checkpoint)
    for module in nets.modules().values():
        module.to(device=device, dtype=torch.float32)
    return nets


def _defensive_mix(cfg: DGAConfig, k: int) -> float:
    """ε of the block proposal; auto: 0 in fast mode, else 1 − 0.9^k capped at 0.5 — as likely to leave
    the chain as mixing each token with 0.1 (k = 1: 0.1)."""
    if cfg.round_mix >= 0:
        return cfg.round_mix
    return min(1 - 0.9**k, 0.5) if cfg.particles > 1 else 0.0


def _distinct(groups: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Rows keyed by (group, tokens): each row's index among the distinct keys (N,), and one row of each key.

    `groups` (N,) are dense ids 0..G−1, `tokens` (N, L) ≥ 0. Column by column, (index so far, next
    token) pairs are renumbered with a 1-D `unique` (far faster than `unique(dim=0)`); indices stay
    < N, so the pair codes fit int64.
    """
    inverse = groups
    for col in tokens.T:
        inverse = torch.unique(inverse * (int(col.max()) + 1) + col, return_inverse=True)[1]
    rep = torch.zeros(int(inverse.max()) + 1, dtype=torch.long, device=inverse.device).scatter_(
        0, inverse, torch.arange(len(groups), device=inverse.device))
    return inverse, rep.tolist()


def _upto_eos(tokens: list[int], eos: list[int]) -> list[int]:
    """`tokens` up to and including the first EOS."""
    for i, tok in enumerate(tokens):
        if tok in eos:
            return tokens[: i + 1]
    return tokens


def _block_candidates(first: Candidates, hidden0: torch.Tensor, logits: torch.Tensor, hidden: torch.Tensor,
                      emb: torch.Tensor, top_m: int) -> tuple[Candidates, torch.Tensor]:
    """Candidates and hidden states of every block position, flattened to (R·k, ...).

    Position 0's come from the decode state (`first` (R, m), `hidden0` (R, Dh)); position j ≥ 1's
    from the LM run on the rounded block, `logits` (R, k−1, V) and `hidden` (R, k−1, Dh) at j − 1.
    """
    rows, rest = logits.shape[:2]
    later = candidates(logits.flatten(0, 1), emb, top_m)

    def join(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a[:, None], b.reshape(rows, rest, *b.shape[1:])], 1).flatten(0, 1)

    cand = Candidates(join(first.ids, later.ids), join(first.logp, later.logp), join(first.emb, later.emb))
    return cand, join(hidden0, hidden.flatten(0, 1))


def _draft(lm: LM, state, first: Candidates, emb: torch.Tensor, top_m: int, k: int, generator) -> torch.Tensor:
    """k tokens drawn one after another from the top-m of p_θ (draft init), (R, k); later positions by `peek`."""
    drafted = gather(first.ids, sample_logprobs(first.logp, generator))[:, None]
    while drafted.shape[1] < k:
        nxt = candidates(lm.peek(state, drafted)[0][:, -1], emb, top_m)
        drafted = torch.cat([drafted, gather(nxt.ids, sample_logprobs(nxt.logp, generator))[:, None]], 1)
    return drafted


def _init(cfg: DGAConfig, noise: torch.Tensor, abars: torch.Tensor, emb: torch.Tensor,
          drafted: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """x at the first reverse step (R·k, D), its per-row ᾱ, and that step's index (§2.7)."""
    flat = noise.shape[0]
    if cfg.init == "noise":
        return noise, abars[-1].expand(flat).clone(), cfg.steps
    if cfg.init == "draft":  # SDEdit: the draft's embeddings noised to step round(t0·T)
        start = max(1, round(cfg.t0 * cfg.steps))
        a = abars[start].float()
        return a.sqrt() * emb[drafted.flatten()] + (1 - a).sqrt() * noise, abars[start].expand(flat).clone(), start
    raise DGAlignError(f"unknown init {cfg.init!r}; valid: noise, draft")


def _predicted_reward(nets, psi, log_pi, x, t_frac, hidden) -> torch.Tensor:
    """r̂(x_t) for the adaptive schedule: the value head, else E_π[ψ], else 0."""
    if nets is not None:
        return nets.value.reward(x, t_frac, hidden)
    if psi is not None:
        return (log_pi.exp() * psi).sum(-1)
    return torch.zeros(x.shape[0], device=x.device)


def _guide(grad: str, g: GuideInputs, nets, cfg: DGAConfig, reward_of, generator) -> torch.Tensor:
    if grad == "analytic":
        return analytic(g)
    if grad == "value":
        return value_gradient(g, nets.value)
    if grad == "perturb":
        return perturb(g, cfg.perturbations, generator)
    if grad == "fd":
        return finite_difference(g, cfg.perturbations, reward_of, generator)
    if grad == "proposal":
        return g.beta * nets.proposal(g.x_t, g.t_frac, g.hidden)
    return torch.zeros_like(g.x_t)
