"""DGA inference (§2.7) and its exact mode: `sample_dga`.

For each block of k next tokens: start x_T from noise (or from a draft of p_θ noised to t_0),
run T reverse steps of the guided kernel over the top-m candidates, round x̂_0 to tokens with
the explicit categorical q(y | x̂_0) ∝ p_θ(y)·exp(−‖x̂_0 − e_y‖²/2τ²), append, advance the KV
cache, repeat. Because q is explicit, each block gets the importance weight

    log w = log p_θ(y | prefix) + ψ(prefix ⊕ y) − ψ(prefix) − log q(y | x̂_0)

and with N particles, ESS-triggered resampling and the final correction β·r − ψ(final), the
returned answers converge to p_θ·exp(β r)/Z whatever ψ's quality (exact mode). A prompt's answers
are drawn from the pooled particles of all its runs, each weighted by its run's Ẑ. N = 1 without
correction is the paper's algorithm (fast mode). p_θ here is the base truncated to the top-m.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...cost import Meter
from ...errors import DGAlignError
from ...ops import gather, sample_logprobs
from ...smc_math import ess, log_mean_exp, normalise, resample
from ...types import LM, Prompts, Reward, SamplerConfig, Samples
from ..common import pack, prefill
from .checkpoint import DGANets
from .denoiser import Candidates, candidates, ddpm_mean_var, posterior_logits, sq_dist, tweedie
from .kernel import GuideInputs, analytic, finite_difference, perturb, value_gradient
from .schedule import RunningStats, adaptive_beta, alpha_bars, base_betas
from .value import ExactToyValue


@dataclass
class DGAConfig(SamplerConfig):
    checkpoint: str = ""  # directory written by `dgalign train`; empty: exact-Tweedie denoiser, `fd` guidance
    steps: int = 30  # T, reverse diffusion steps per block (30: fast mode within MC noise of exact on the toy)
    schedule: str = "cosine"  # base noise schedule: cosine | linear
    block: int = 1  # k, tokens per diffusion block (1 = token level; = max_new_tokens: sentence level)
    top_m: int = 64  # candidates per position (the top-m of p_θ); 0 = the whole vocabulary
    init: str = "noise"  # noise: x_T ~ N(0, I) | draft: a p_θ draw noised to t0 (SDEdit)
    t0: float = 0.5  # draft init: start at step round(t0·T)
    grad: str = "auto"  # analytic | value | perturb | fd | proposal | none; auto: proposal > analytic > fd
    proposal: bool = True  # with grad=auto, use the checkpoint's δ_ψ (fast path) when it has one
    guidance_scale: float = 1.0  # multiplies γ_t·ĝ
    value: str = "auto"  # twist ψ: learned (checkpoint) | exact (toy only, by enumeration) | none; auto: learned if any
    adaptive_lambda: float = 0.0  # λ of §2.4: β_t·exp(−λ r̂(x_t)); 0 = fixed schedule
    adaptive_clip: float = 2.0  # clip of the standardised r̂ in §2.4
    round_tau: float = 0.0  # rounding temperature τ; 0 = the final step's noise scale √(1−ᾱ_1)/√ᾱ_1
    round_mix: float = -1.0  # ε: q = (1−ε)·rounding + ε·p_θ keeps weights ≤ 1/ε; −1 = auto (0 fast, 0.1 exact)
    particles: int = 1  # N particles per answer; 1 = fast mode, > 1 = exact mode with resampling
    ess_threshold: float = 0.5  # resample a run when ESS < threshold·N
    perturbations: int = 4  # K for the perturb and fd estimators


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

    def reorder(self, index: torch.Tensor) -> None:
        self.tokens = [list(self.tokens[i]) for i in index.tolist()]
        for name in ("done", "psi_prev", "log_w", "log_q", "base_lp", "trunc_lp"):
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
    valid = {"analytic", "value", "perturb", "fd", "proposal", "none"}
    if grad not in valid:
        raise DGAlignError(f"unknown grad estimator {grad!r}; valid: {', '.join(sorted(valid))}")
    if grad in ("proposal", "value") and nets is None:
        raise DGAlignError(f"grad={grad} needs --set checkpoint=DIR")
    if grad in ("analytic", "perturb") and value == "none":
        raise DGAlignError(f"grad={grad} needs a value twist (checkpoint, or value=exact on the toy)")
    return value, grad


def embedding_scale(lm: LM) -> float:
    """RMS of the embedding entries: e_v = E_v / scale has unit-RMS coordinates."""
    return float(lm.embeddings().detach().float().pow(2).mean().sqrt())


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
    """Diffusion-Guided Alignment; exact mode when `particles` > 1."""
    if cfg.block != 1:
        raise DGAlignError("block > 1 is not available yet in this build; use block=1")
    meter = Meter(lm)
    nets = DGANets.load(cfg.checkpoint) if cfg.checkpoint else None
    if nets is not None and nets.meta.get("model") != lm.name:
        raise DGAlignError(f"checkpoint {cfg.checkpoint} was trained for model {nets.meta.get('model')!r}, not {lm.name!r}")
    exact_value = (
        ExactToyValue(lm, reward, prompts.texts[0], prompts.ids[0], cfg.max_new_tokens, cfg.beta)
        if cfg.value == "exact" and len(prompts) == 1 and lm.name == "toy" else None
    )
    value, grad = _resolve(cfg, nets, exact_value)
    emb = lm.embeddings().detach().float() / embedding_scale(lm)  # (V, D)
    betas = base_betas(cfg.schedule, cfg.steps)
    abars = alpha_bars(betas)  # (T + 1,)

    n_part, answers = cfg.particles, len(prompts) * cfg.num_samples
    mix = cfg.round_mix if cfg.round_mix >= 0 else (0.1 if n_part > 1 else 0.0)
    rows = answers * n_part
    prompt_of_row = torch.arange(len(prompts)).repeat_interleave(cfg.num_samples * n_part)
    state = prefill(lm, prompts, cfg.num_samples * n_part)
    run = _Run([[] for _ in range(rows)], torch.zeros(rows, dtype=torch.bool), torch.zeros(rows),
               torch.zeros(rows), torch.zeros(rows), torch.zeros(rows), torch.zeros(rows))
    log_z = torch.zeros(answers)
    stats, resamples, ess_trace = RunningStats(), 0, []
    eos = torch.tensor(lm.eos_token_ids)

    def psi_of(cand: Candidates) -> torch.Tensor | None:
        """ψ(prefix ⊕ v) for every candidate, (R, m)."""
        if value == "learned":
            return cfg.beta * nets.value.candidates(cand.emb, state.hidden)
        if value == "exact":  # one lookup per distinct prefix; finished rows get zeros (weights frozen)
            table = torch.stack([
                torch.zeros(cand.ids.shape[1]) if run.done[r]
                else exact_value([tuple(run.tokens[r]) + (v,) for v in cand.ids[r].tolist()])
                for r in group_rows.values()
            ]).float()
            return table[groups]
        return None

    def reward_of(picks: torch.Tensor) -> torch.Tensor:
        """Real reward of prefix ⊕ candidate, picks (K, R) candidate indices -> (K, R).

        Rows sharing a prompt and prefix share one table row of `m` lazily filled scores, so each
        distinct text is scored once per position.
        """
        need = torch.unique(groups[None, :] * cand_table.shape[1] + picks).tolist()
        todo = [i for i in need if math.isnan(cand_table.view(-1)[i])]
        if todo:
            g_ids, js = [i // cand_table.shape[1] for i in todo], [i % cand_table.shape[1] for i in todo]
            rep = [group_rows[g] for g in g_ids]  # a row of each group
            texts = [lm.decode(run.tokens[r] + [int(cand.ids[r, j])]) for r, j in zip(rep, js, strict=True)]
            scores = meter.score(reward, [prompts.texts[int(prompt_of_row[r])] for r in rep], texts)
            cand_table.view(-1)[torch.tensor(todo)] = scores
        return cand_table[groups[None, :].expand_as(picks), picks]

    for pos in range(cfg.max_new_tokens):
        cand = candidates(state.logits, emb, cfg.top_m)
        if grad == "fd" or value == "exact":  # rows with the same prompt and prefix share per-candidate values
            keys: dict[tuple, int] = {}
            groups = torch.tensor([keys.setdefault((int(prompt_of_row[r]), *run.tokens[r]), len(keys))
                                   for r in range(rows)])
            group_rows = {g: r for r, g in enumerate(groups.tolist())}  # one row of each group, in group order
            group_rows = dict(sorted(group_rows.items()))
            cand_table = torch.full((len(keys), cand.ids.shape[1]), float("nan"))  # fd's reward cache
        psi = psi_of(cand)
        x, abar, start = _init(cfg, cand, abars, generator)
        for t in range(start, 0, -1):  # 2.7: T reverse steps
            abar_prev = abars[t - 1].expand(rows).clone() if cfg.adaptive_lambda == 0 else None
            t_frac = torch.full((rows,), t / cfg.steps)
            extra = nets.correction(x, t_frac, state.hidden, cand.emb) if nets is not None else None
            log_pi = posterior_logits(x, abar, cand, extra)
            x0 = tweedie(log_pi, cand)
            if abar_prev is None:  # 2.4: adaptive β_t from the standardised predicted reward
                r_hat = _predicted_reward(nets, psi, log_pi, x, t_frac, state.hidden)
                stats.update(r_hat)
                beta_t = adaptive_beta(float(betas[t - 1]), stats.standardise(r_hat), cfg.adaptive_lambda,
                                       cfg.adaptive_clip)
                abar_prev = (abar.double() / (1 - beta_t)).clamp(max=1.0) if t > 1 else torch.ones(rows,
                                                                                                    dtype=torch.float64)
            mean, var = ddpm_mean_var(x, x0, abar, abar_prev)  # 2.2: μ_φ, Σ_φ
            inputs = GuideInputs(x, abar, t_frac, cand, log_pi, state.hidden, psi, cfg.beta)
            ghat = _guide(grad, inputs, nets, cfg, reward_of, generator)  # 2.3: ĝ
            gamma = ((1 - abar / abar_prev) / (abar / abar_prev).sqrt()).float()[:, None]  # β_t/√α_t
            x = mean + cfg.guidance_scale * gamma * ghat
            if t > 1:
                x = x + var.sqrt() * torch.randn(x.shape, generator=generator, dtype=x.dtype)
            abar = abar_prev
        # 2.7 rounding: q(y | x̂_0) ∝ p_θ(y)·exp(−‖x̂_0 − e_y‖²/2τ²) over the top-m
        # mixed with ε·p_θ (defensive importance sampling, Hesterberg 1995) so exact-mode weights stay bounded
        tau2 = cfg.round_tau**2 if cfg.round_tau > 0 else float((1 - abars[1]) / abars[1])
        log_q_all = (cand.logp - sq_dist(x0, cand) / (2 * tau2)).log_softmax(-1)
        if mix > 0:
            log_q_all = torch.logaddexp(log_q_all + math.log1p(-mix), cand.logp + math.log(mix))
        pick = sample_logprobs(log_q_all, generator)  # (R,)
        tok = gather(cand.ids, pick)
        live = ~run.done
        tok = torch.where(live, tok, eos[0])
        # exact-mode weight: log p_θ,m(y) + ψ(prefix ⊕ y) − ψ(prefix) − log q(y | x̂_0)
        psi_y = gather(psi, pick) if psi is not None else torch.zeros(rows)
        step_lq, step_lp = gather(log_q_all, pick), gather(cand.logp, pick)
        run.log_w += torch.where(live, step_lp + psi_y - run.psi_prev - step_lq, 0.0)
        run.psi_prev = torch.where(live, psi_y, run.psi_prev)
        run.log_q += torch.where(live, step_lq, 0.0)
        run.trunc_lp += torch.where(live, step_lp, 0.0)
        run.base_lp += torch.where(live, gather(state.logits.float().log_softmax(-1), tok), 0.0)
        for r in live.nonzero().squeeze(-1).tolist():
            run.tokens[r].append(int(tok[r]))
        run.done |= torch.isin(tok, eos)
        if callback is not None:
            callback({"step": pos, "live": int((~run.done).sum())})
        if run.done.all() or pos == cfg.max_new_tokens - 1:
            break
        if n_part > 1:  # resample runs whose ESS fell below the threshold
            lw = run.log_w.view(answers, n_part)
            low = ess(lw) < cfg.ess_threshold * n_part  # (answers,)
            ess_trace.append(float(ess(lw).mean()))
            if low.any():
                resamples += int(low.sum())
                log_z += torch.where(low, log_mean_exp(lw), 0.0)
                local = torch.where(low[:, None], resample(lw, generator), torch.arange(n_part).expand(answers, -1))
                index = (local + torch.arange(answers)[:, None] * n_part).flatten()
                run.reorder(index)
                run.log_w = torch.where(low.repeat_interleave(n_part), 0.0, run.log_w)
                state, tok = lm.select(state, index), tok[index]
        state = lm.step(state, tok[:, None])

    texts = [lm.decode(t) for t in run.tokens]
    rewards = meter.score(reward, [prompts.texts[i] for i in prompt_of_row.tolist()], texts)
    extras = {"grad": grad, "value": value, "kl_base": float((run.log_q - run.base_lp).mean())}
    if n_part == 1:
        keep = torch.arange(rows)
        out_log_z = None
    else:  # final correction β·r − ψ(final)
        run.log_w += cfg.beta * rewards - run.psi_prev
        lw = run.log_w.view(answers, n_part)
        run_log_z = log_z + log_mean_exp(lw)  # (answers,) log Ẑ of each run
        # a prompt's answers are drawn from the pool of all its runs' particles, each weighted by
        # Ẑ_run·w̄ (combining independent SMC samplers): consistent as runs grow, for any N
        pooled = (run_log_z[:, None] + normalise(lw)).view(len(prompts), cfg.num_samples * n_part)
        keep = (resample(pooled, generator, num=cfg.num_samples, scheme="multinomial")
                + torch.arange(len(prompts))[:, None] * cfg.num_samples * n_part).flatten()
        out_log_z = log_mean_exp(run_log_z.view(len(prompts), cfg.num_samples))
        extras.update(resamples=resamples, mean_ess=sum(ess_trace) / max(len(ess_trace), 1),
                      final_ess=float(ess(lw).mean()),
                      kl_target=float((run.log_q - run.trunc_lp - cfg.beta * rewards).mean() + out_log_z.mean()))
    idx = keep.tolist()
    return pack(lm, meter, [int(prompt_of_row[i]) for i in idx], [run.tokens[i] for i in idx], rewards[keep],
                run.base_lp[keep], [texts[i] for i in idx], log_z=out_log_z, extras=extras)


def _init(cfg: DGAConfig, cand: Candidates, abars: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor, int]:
    """x at the first reverse step, its per-row ᾱ, and that step's index (§2.7)."""
    rows, dim = cand.ids.shape[0], cand.emb.shape[-1]
    noise = torch.randn((rows, dim), generator=generator)
    if cfg.init == "noise":
        return noise, abars[-1].expand(rows).clone(), cfg.steps
    if cfg.init == "draft":
        start = max(1, round(cfg.t0 * cfg.steps))
        draft = cand.emb[torch.arange(rows), sample_logprobs(cand.logp, generator)]  # (R, D) e_y, y ~ p_θ
        a = abars[start].float()
        return a.sqrt() * draft + (1 - a).sqrt() * noise, abars[start].expand(rows).clone(), start
    raise DGAlignError(f"unknown init {cfg.init!r}; valid: noise, draft")


def _predicted_reward(nets, psi, log_pi, x, t_frac, hidden) -> torch.Tensor:
    """r̂(x_t) for the adaptive schedule: the value head, else E_π[ψ], else 0."""
    if nets is not None:
        return nets.value.reward(x, t_frac, hidden)
    if psi is not None:
        return (log_pi.exp() * psi).sum(-1)
    return torch.zeros(x.shape[0])


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
