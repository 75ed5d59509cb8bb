"""One block's reverse chain of DGA (§2.2–2.4, 2.7): x_T → x̂_0 over each position's candidates.

`Chain.run` runs T (or, from a draft, round(t0·T)) guided DDPM steps on every (row, position)
pair of a block at once. For k > 1 each step first peeks the LM on the block rounded so far, which
gives positions j ≥ 1 their p_θ(· | prefix ⊕ ŷ_<j), hidden state and twist (Jacobi-style refinement:
one parallel LM pass per step). Each step is the DDPM posterior q(x_{t−1} | x_t, x_0) with x_0 either
the posterior mean x̂_0 plus the guidance γ_t·ĝ (`reverse=mean`, the paper's kernel), or a token drawn
from the tilted posterior π(v | x_t)·e^{ψ_v} (`reverse=sample`): since x_0 is one of the m candidate
embeddings, drawing it and then x_{t−1} from q(· | x_t, e_v) is an exact ancestral step of the
tilted process at any step size, where the mean form is exact only as T → ∞. What it returns is what the rounding needs: the final posterior
over the candidates at x_1 and the twist there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...ops import gather, randn, sample_logprobs
from ...types import LM, DecodeState
from .denoiser import Candidates, candidates, ddpm_mean_var, posterior_logits, tweedie
from .kernel import GuideInputs, analytic, finite_difference, perturb, value_gradient
from .schedule import RunningStats, adaptive_abar_prev

# ψ(prefix ⊕ ŷ_<j ⊕ v) of every position j and candidate v: (candidates (R·k, m), hidden (R·k, Dh), ŷ (R, k))
PsiFn = Callable[[Candidates, torch.Tensor, torch.Tensor], "torch.Tensor | None"]


@dataclass
class ChainOut:
    """The end of one block's chain, flattened over (row, position) = R·k."""

    x0: torch.Tensor  # (R·k, D) the last x̂_0
    cand: Candidates  # (R·k, m) each position's candidates (positions ≥ 1: given the last ŷ)
    hidden: torch.Tensor  # (R·k, Dh) the LM hidden state each position's value reads
    log_pi: torch.Tensor  # (R·k, m) the base posterior π(v | x_1) of the last step
    psi: torch.Tensor | None  # (R·k, m) the twist at the last step, if there is one
    guess: torch.Tensor  # (R, k) the block rounded to its likeliest candidates
    peeked: tuple | None  # (tokens (R, k−1), logits, hidden) of the last LM peek (k > 1)
    guided: bool = True  # whether the chain targeted the tilted process (grad ≠ none), so rounding tilts too


@dataclass
class Chain:
    """What every block's chain reads: the schedule, the nets, the guidance and the config."""

    lm: LM
    emb: torch.Tensor  # (V, D) scaled embeddings
    abars: torch.Tensor  # (T + 1,) float64 on the chain's device
    nets: object | None  # DGANets (correction g_φ, value head, proposal δ_ψ) or None
    grad: str  # the guidance estimator (kernel.py)
    cfg: object  # DGAConfig
    stats: RunningStats  # §2.4's running reward statistics, shared by every block

    def run(self, state: DecodeState, cand0: Candidates, k: int, x: torch.Tensor, abar: torch.Tensor, start: int,
            guess: torch.Tensor, psi_of: PsiFn, reward_of, generator: torch.Generator | None) -> ChainOut:
        """The reverse steps t = start .. 1 from x (R·k, D) at per-row ᾱ `abar`; `guess` (R, k) the first ŷ."""
        cfg, nets, abars = self.cfg, self.nets, self.abars
        flat, dev = x.shape[0], x.device
        rows = flat // k
        cand, hid, peeked = cand0, state.hidden.float(), None
        psi = psi_of(cand, hid, guess) if k == 1 else None
        log_pi = None
        for t in range(start, 0, -1):
            if k > 1:  # 2.2: the LM on the rounded block gives each position j ≥ 1 its p_θ(· | prefix ⊕ ŷ_<j)
                peeked = (guess[:, :-1], *self.lm.peek(state, guess[:, :-1]))
                cand, hid = block_candidates(cand0, state.hidden.float(), peeked[1], peeked[2].float(), self.emb,
                                             cfg.top_m)
                psi = psi_of(cand, hid, guess)
            abar_prev = abars[t - 1].expand(flat).clone() if cfg.adaptive_lambda == 0 else None
            t_frac = torch.full((flat,), t / cfg.steps, device=dev)
            extra = nets.correction(x, t_frac, hid) if nets is not None and cfg.denoiser == "learned" else None
            log_pi = posterior_logits(x, abar, cand, extra)
            drawn = None
            if cfg.reverse == "sample":  # x_0 drawn from the (tilted) posterior: exact for any T given π and ψ
                tilt = self.grad == "analytic" and psi is not None
                drawn = sample_logprobs((log_pi + psi).log_softmax(-1) if tilt else log_pi, generator)  # (R·k,)
                x0 = gather_rows(cand.emb, drawn)
            else:
                x0 = tweedie(log_pi, cand)
            if k > 1:  # ŷ: the block the LM reads next step (the drawn x_0, or x̂_0's likeliest candidate)
                guess = gather(cand.ids, drawn if drawn is not None else log_pi.argmax(-1)).view(rows, k)
            if abar_prev is None:  # 2.4: adaptive β_t from the standardised predicted reward
                r_hat = predicted_reward(nets, psi, log_pi, x, t_frac, hid)
                self.stats.update(r_hat)
                abar_prev = adaptive_abar_prev(abar, abars, t, self.stats.standardise(r_hat), cfg.adaptive_lambda,
                                               cfg.adaptive_clip)
            mean, var = ddpm_mean_var(x, x0, abar, abar_prev)  # 2.2: μ_φ, Σ_φ
            if drawn is None or self.grad not in ("analytic", "none"):  # in `sample`, analytic's tilt is in the draw
                inputs = GuideInputs(x, abar, t_frac, cand, log_pi, hid, psi, cfg.beta)
                ghat = guide(self.grad, inputs, nets, cfg, reward_of, generator)  # 2.3: ĝ
                gamma = ((1 - abar / abar_prev) / (abar / abar_prev).sqrt()).float()[:, None]  # β_t/√α_t
                mean = mean + cfg.guidance_scale * gamma * ghat
            x = mean
            if t > 1:
                x = x + var.sqrt() * randn(x.shape, x, generator)
            abar = abar_prev
        return ChainOut(x0, cand, hid, log_pi, psi, guess, peeked, self.grad != "none")


def gather_rows(emb: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """emb[b, index[b]] of candidate embeddings (B, m, D) -> (B, D)."""
    return emb[torch.arange(len(index), device=index.device), index]


def block_candidates(first: Candidates, hidden0: torch.Tensor, logits: torch.Tensor, hidden: torch.Tensor,
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


def predicted_reward(nets, psi, log_pi, x, t_frac, hidden) -> torch.Tensor:
    """r̂(x_t) for the adaptive schedule: the value head, else E_π[ψ], else 0."""
    if nets is not None:
        return nets.value.reward(x, t_frac, hidden)
    if psi is not None:
        return (log_pi.exp() * psi).sum(-1)
    return torch.zeros(x.shape[0], device=x.device)


def guide(grad: str, g: GuideInputs, nets, cfg, reward_of, generator) -> torch.Tensor:
    """ĝ by the configured estimator (kernel.py)."""
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
