"""DGA inference (§2.7) and its exact mode: `sample_dga`.

The outer loop is over blocks of k next tokens; each block is three named parts:

1. the reverse chain (`chain.Chain.run`): x_T (R·k rows, one per position) from noise, or from a
   draft of p_θ noised to t_0, through T guided reverse steps over each position's top-m candidates;
2. the rounding (`rounding.round_block`): tokens drawn from the chain's final tilted posterior,
   returned with log q (the explicit law they were drawn from) and log p_θ;
3. the twist (`twist.Twist`, learned / exact-toy / none), built once per call (or passed in), which
   gives every candidate its ψ(prefix ⊕ v) and every block its ψ(prefix ⊕ block).

Then the block is appended and the KV cache advanced. Because q is explicit, each block gets the
importance weight

    log w = log p_θ(y | prefix) + ψ(prefix ⊕ y) − ψ(prefix) − log q(y | x̂_0)

and with N particles, ESS-triggered resampling and the final correction β·r − ψ(final), the
returned answers converge to p_θ·exp(β r)/Z whatever ψ's quality (exact mode). A prompt's answers
are drawn from the pooled particles of all its runs, each weighted by its run's Ẑ. N = 1 without
correction is the paper's algorithm (fast mode). p_θ here is the base truncated to the top-m
(k > 1 exact mode insists on the whole vocabulary, top_m = 0).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...config import check_choice, check_counts, check_range
from ...cost import Meter
from ...errors import DGAlignError
from ...ops import randn
from ...smc_math import ess, log_mean_exp, normalise, pick_rows, resample_runs
from ...types import LM, Prompts, Reward, SamplerConfig, Samples
from ..common import pack, prefill
from .chain import Chain
from .denoiser import Candidates, candidates, embedding_scale
from .rounding import draft_block, round_block, rounding_law
from .schedule import RunningStats, alpha_bars, base_betas
from .twist import Twist, build_twist, load_nets

SCHEDULES = ("cosine", "linear")  # base noise schedules (schedule.base_betas)
INITS = ("noise", "draft")
GRADS = ("analytic", "value", "perturb", "fd", "proposal", "none")  # guidance estimators (kernel.py)
VALUES = ("auto", "learned", "exact", "none")
ROUNDINGS = ("posterior", "prior")
REVERSES = ("sample", "mean")
DENOISERS = ("learned", "exact")
TAILS = ("base", "drop")


@dataclass
class DGAConfig(SamplerConfig):
    checkpoint: str = ""  # directory written by `dgalign train`; empty: exact-Tweedie denoiser, `fd` guidance
    steps: int = 4  # T, reverse steps per block; with reverse=sample the law is exact at any T (toy), so few suffice
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
    denoiser: str = "learned"  # learned: the checkpoint's g_φ corrects the posterior | exact: g_φ = 0 (exact Tweedie)
    reverse: str = "sample"  # sample: x_0 drawn from the tilted posterior (exact at any T) | mean: x̂_0 + γ·ĝ (the paper)
    rounding: str = "posterior"  # posterior: draw from the chain's final tilted posterior | prior: the paper's ρ ∝ p_θ·N(x̂_0)
    tail: str = "base"  # k = 1: tokens outside the top-m keep their base probability (base) or are dropped (drop)
    round_tau: float = 0.0  # prior rounding's temperature τ; 0 = the final step's noise scale √(1−ᾱ_1)/√ᾱ_1
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
        check_choice("rounding", self.rounding, ROUNDINGS)
        check_choice("reverse step", self.reverse, REVERSES)
        check_choice("denoiser", self.denoiser, DENOISERS)
        check_choice("tail", self.tail, TAILS)
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
    target_lp: torch.Tensor  # (R,) log of the base law exact mode targets (p_θ, or p_θ,m with tail=drop)
    log_tilt: torch.Tensor  # (R,) Σ log of the twisted next-token law p_θ·e^ψ/Z the chain targets (k = 1)

    def reorder(self, index: torch.Tensor) -> None:
        self.tokens = [list(self.tokens[i]) for i in index.tolist()]
        for name in ("done", "psi_prev", "log_w", "log_q", "base_lp", "target_lp", "log_tilt"):
            setattr(self, name, getattr(self, name)[index])


def resolve(cfg: DGAConfig, has_nets: bool, twist: Twist | None) -> tuple[str, str]:
    """(value, grad) with `auto` resolved, or a concise error for a combination that cannot run."""
    value = cfg.value if cfg.value != "auto" else ("learned" if has_nets else "none")
    if twist is not None and cfg.value == "auto":
        value = "given"
    if value == "learned" and not has_nets:
        raise DGAlignError("value=learned needs --set checkpoint=DIR (train one with `dgalign train`)")
    grad = cfg.grad
    if grad == "auto":
        grad = "proposal" if has_nets and cfg.proposal else ("analytic" if value != "none" else "fd")
    if grad in ("proposal", "value") and not has_nets:
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
    twist: Twist | None = None,
) -> Samples:
    """Diffusion-Guided Alignment over blocks of `block` tokens; exact mode when `particles` > 1.

    `twist` overrides the one the config names (`value`, `checkpoint`), e.g. a caller's exact value.
    """
    if cfg.particles > 1 and cfg.block > 1 and 0 < cfg.top_m < lm.vocab_size:
        raise DGAlignError("exact mode (particles > 1) with block > 1 needs --set top_m=0: a position's top-m "
                           "depends on the tokens before it, so a truncated proposal can miss target tokens")
    meter = Meter(lm)
    nets = load_nets(cfg.checkpoint, lm.device) if cfg.checkpoint else None  # loaded once per (checkpoint, device)
    if nets is not None and nets.meta.get("model") != lm.name:
        raise DGAlignError(f"checkpoint {cfg.checkpoint} was trained for model {nets.meta.get('model')!r}, not {lm.name!r}")
    value, grad = resolve(cfg, nets is not None, twist)
    if twist is None and value in ("learned", "exact"):
        twist = build_twist(value, lm, reward, prompts, beta=cfg.beta, max_new_tokens=cfg.max_new_tokens,
                            checkpoint=cfg.checkpoint)
    emb = lm.embeddings().detach().float() / embedding_scale(lm)  # (V, D)
    n_part, answers = cfg.particles, len(prompts) * cfg.num_samples
    rows = answers * n_part
    prompt_of_row = torch.arange(len(prompts), device="cpu").repeat_interleave(cfg.num_samples * n_part)
    prompt_list = prompt_of_row.tolist()
    state = prefill(lm, prompts, cfg.num_samples * n_part)
    dev = state.logits.device  # the chain, its weights and the schedule live where the LM's outputs do
    abars = alpha_bars(base_betas(cfg.schedule, cfg.steps)).to(dev)  # (T + 1,) float64
    chain = Chain(lm, emb, abars, nets, grad, cfg, RunningStats())
    zeros = functools.partial(torch.zeros, rows, device=dev)  # float32 per-row buffers
    run = _Run([[] for _ in range(rows)], zeros(dtype=torch.bool), *(zeros() for _ in range(6)))
    log_z = torch.zeros(answers, device=dev)
    resamples, ess_trace = 0, []
    eos = torch.tensor(lm.eos_token_ids, device=dev)

    def psi_of(cand: Candidates, hid: torch.Tensor, guess: torch.Tensor) -> torch.Tensor | None:
        """ψ(prefix ⊕ ŷ_<j ⊕ v) for every block position j and candidate v, (R·k, m)."""
        if twist is None:
            return None
        k = guess.shape[1]
        ahead = guess.tolist()
        prefixes = [run.tokens[r] + ahead[r][:j] for r in range(rows) for j in range(k)]
        return twist([p for p in prompt_list for _ in range(k)], prefixes, hid, cand.ids)

    def psi_end(tok: torch.Tensor, kept: torch.Tensor, hidden: torch.Tensor | None) -> torch.Tensor:
        """ψ(prefix ⊕ y_block) for a block y (R, k) kept up to its first EOS: the twist on its last kept token,
        read at the LM's state before it (`hidden` (R, k−1, Dh) from peeking y)."""
        if twist is None:
            return zeros()
        last = (kept.sum(1) - 1).clamp(min=0)  # (R,)
        at = torch.arange(rows, device=dev), last
        h = state.hidden.float() if hidden is None else torch.cat([state.hidden[:, None], hidden], 1)[at].float()
        block, ends = tok.tolist(), last.tolist()
        prefixes = [run.tokens[r] + block[r][:ends[r]] for r in range(rows)]
        return twist(prompt_list, prefixes, h, tok[at][:, None])[:, 0]

    for pos in range(0, cfg.max_new_tokens, cfg.block):
        k = min(cfg.block, cfg.max_new_tokens - pos)  # this block's length; the last one may be shorter
        mix = _defensive_mix(cfg, k)
        cand0 = candidates(state.logits, emb, cfg.top_m)  # position 0's top-m, (R, m)
        rewards_of = _BlockRewards(lm, meter, reward, prompts, run.tokens, prompt_list, cand0) if grad == "fd" else None
        noise = randn((rows * k, emb.shape[1]), emb, generator)  # x_T, or what noises a draft
        drafted = draft_block(lm, state, cand0, emb, cfg.top_m, k, generator) if cfg.init == "draft" else None
        x, abar, start = _init(cfg, noise, abars, emb, drafted)
        # ŷ (R, k): the block rounded to tokens, which the LM reads for positions ≥ 1; before the first
        # step it is the draft, or position 0's likeliest token everywhere (each step refines it, Jacobi-style)
        guess = drafted if drafted is not None else cand0.ids[:, :1].expand(rows, k)
        out = chain.run(state, cand0, k, x, abar, start, guess, psi_of, rewards_of, generator)  # 1. x_T → x̂_0
        live = ~run.done
        blk = round_block(lm, out, rounding_law(out, cfg, float(abars[1])), state, cand0, emb, cfg, mix, live, eos, k,
                          generator)  # 2. rounding
        psi_y = _token_psi(out, blk.tokens[:, 0]) if k == 1 and out.psi is not None \
            else psi_end(blk.tokens, blk.kept, blk.hidden)  # 3. the twist at the block's end
        # exact-mode weight: log p(y_block) + ψ(prefix ⊕ y_block) − ψ(prefix) − log q(y_block | chain)
        run.log_w += torch.where(live, blk.log_p + psi_y - run.psi_prev - blk.log_q, 0.0)
        run.psi_prev = torch.where(live, psi_y, run.psi_prev)
        run.log_q += torch.where(live, blk.log_q, 0.0)
        run.target_lp += torch.where(live, blk.log_p, 0.0)
        run.base_lp += torch.where(live, blk.base, 0.0)
        if blk.log_tilt is not None:
            run.log_tilt += torch.where(live, blk.log_tilt, 0.0)
        tok_list, n_kept = blk.tokens.tolist(), blk.kept.sum(1).tolist()  # kept is a prefix of each row's block
        for r in live.nonzero().squeeze(-1).tolist():
            run.tokens[r].extend(tok_list[r][: n_kept[r]])
        run.done |= (blk.kept & torch.isin(blk.tokens, eos)).any(1)
        if callback is not None:
            for j in range(k):  # one call per token position, as the token-level samplers make
                callback({"step": pos + j, "live": int((~run.done).sum())})
        if run.done.all() or pos + k == cfg.max_new_tokens:
            break
        tok = blk.tokens
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
    rewards = meter.score(reward, [prompts.texts[i] for i in prompt_list], texts).to(dev)
    return _finish(lm, meter, cfg, run, rewards, texts, prompt_of_row, log_z, answers, len(prompts), generator,
                   {"grad": grad, "value": value}, resamples, ess_trace, twist is not None)


def _finish(lm, meter, cfg, run: _Run, rewards, texts, prompt_of_row, log_z, answers, n_prompts, generator, extras,
            resamples, ess_trace, has_twist) -> Samples:
    """The returned answers and their KL to the base.

    KL(q ‖ p_θ): the rounding's log q is conditional on the chain, not the law of the answers, so it
    is not used. Fast mode: log q ≈ Σ log of the twisted next-token law the chain targets (k = 1, with a
    twist; `benchmarks/kl_estimator_check.py` measures its error on the toy). Exact mode: the answers
    follow p_r = p_θ·e^{βr}/Z, so KL ≈ β·E[r] − log Ẑ.
    """
    n_part, kl_rows, out_log_z = cfg.particles, None, None
    if n_part == 1:
        keep = torch.arange(len(texts), device=rewards.device)
        if cfg.block == 1 and has_twist:  # the twist was known at every token
            kl_rows = (run.log_tilt - run.base_lp).float()
    else:  # final correction β·r − ψ(final)
        run.log_w += cfg.beta * rewards - run.psi_prev
        lw = run.log_w.view(answers, n_part)
        run_log_z = log_z + log_mean_exp(lw)  # (answers,) log Ẑ of each run
        # a prompt's answers are drawn from the pool of all its runs' particles, each weighted by
        # Ẑ_run·w̄ (combining independent SMC samplers): consistent as runs grow, for any N
        pooled = (run_log_z[:, None] + normalise(lw)).view(n_prompts, cfg.num_samples * n_part)
        keep = pick_rows(pooled, generator, num=cfg.num_samples, scheme="multinomial")  # (answers,) rows
        out_log_z = log_mean_exp(run_log_z.view(n_prompts, cfg.num_samples))
        extras.update(resamples=resamples, mean_ess=sum(ess_trace) / max(len(ess_trace), 1),
                      run_log_z=run_log_z.float().cpu(), final_ess=float(ess(lw).mean()),
                      kl_target=float((run.log_q - run.target_lp - cfg.beta * rewards).mean() + out_log_z.mean()))
        prompt_of_kept = torch.as_tensor([int(prompt_of_row[i]) for i in keep.tolist()], device=out_log_z.device)
        kl_rows = (cfg.beta * rewards[keep] - out_log_z[prompt_of_kept]).float()  # mean: β·E[r] − mean log Ẑ
        out_log_z = out_log_z.cpu()
    idx = keep.tolist()
    kl = None if kl_rows is None else float(kl_rows.double().mean())
    return pack(lm, meter, [int(prompt_of_row[i]) for i in idx], [run.tokens[i] for i in idx], rewards[keep].cpu(),
                run.base_lp[keep].cpu(), [texts[i] for i in idx], log_z=out_log_z, kl_to_base=kl,
                kl_rows=None if kl_rows is None else kl_rows.cpu(), extras=extras)


def _token_psi(out, tok: torch.Tensor) -> torch.Tensor:
    """ψ(prefix ⊕ y) of each row's token y (R,): its candidate's twist, or for a tail token (outside the top-m,
    drawn untilted) the candidates' soft mean log Σ_v p_θ,m(v)·e^{ψ_v}, the ψ that leaves it untilted."""
    hit = out.cand.ids == tok[:, None]  # (R, m)
    inside = torch.where(hit, out.psi, 0.0).sum(-1)
    return torch.where(hit.any(-1), inside, (out.cand.logp + out.psi).logsumexp(-1))


class _BlockRewards:
    """The real reward of prefix ⊕ the block spelled by candidate picks, for the `fd` estimator.

    Rows sharing a prompt and prefix share a cache of scored blocks, so each distinct text is scored
    once per block.
    """

    def __init__(self, lm: LM, meter: Meter, reward: Reward, prompts: Prompts, tokens: list[list[int]],
                 prompt_list: list[int], cand: Candidates):
        self.lm, self.meter, self.reward, self.prompts, self.tokens, self.prompt_list = (
            lm, meter, reward, prompts, tokens, prompt_list)
        keys: dict[tuple, int] = {}
        dev = cand.ids.device
        self.groups = torch.tensor([keys.setdefault((prompt_list[r], *tokens[r]), len(keys))
                                    for r in range(len(tokens))], device=dev)
        self.scored: dict[tuple, float] = {}

    def __call__(self, picks: torch.Tensor, cand: Candidates) -> torch.Tensor:
        """Rewards (K, R·k) of candidate picks (K, R·k) under `cand` (the chain's current candidates)."""
        rows = len(self.tokens)
        n_pert, k = picks.shape[0], picks.shape[1] // rows
        toks = cand.ids.gather(1, picks.T).T.reshape(n_pert, rows, k)
        keys = torch.cat([self.groups.expand(n_pert, rows)[..., None], toks], -1).flatten(0, 1)  # (K·R, 1 + k)
        inverse, rep = _distinct(keys[:, 0], keys[:, 1:])
        distinct = [tuple(keys[i].tolist()) for i in rep]
        todo = [(i % rows, key) for i, key in zip(rep, distinct, strict=True) if key not in self.scored]
        if todo:
            texts = [self.lm.decode(self.tokens[r] + _upto_eos(list(key[1:]), self.lm.eos_token_ids)) for r, key in todo]
            scores = self.meter.score(self.reward, [self.prompts.texts[self.prompt_list[r]] for r, _ in todo], texts)
            self.scored.update(zip([key for _, key in todo], scores.tolist(), strict=True))
        values = torch.tensor([self.scored[key] for key in distinct], device=picks.device)[inverse].view(n_pert, rows)
        return values.repeat_interleave(k, 1)


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
