"""Value-guided decoding: CD-FUDGE (Mudgal et al., ICML 2024) and GenARM (Xu et al., ICLR 2025).

Target p_r(y | c) ∝ p_θ(y | c)·exp(β r(c, y)), token by token p_r(v | y_<t) = p_θ(v | y_<t)·e^{V(y_<t ⊕ v) − V(y_<t)}
with the soft value V = log E_{p_θ}[exp(β r) | ·]. With p the shared base proposal (temperature /
top-k / top-p) and a twist ψ ≈ V, each token is drawn from the step law q:

    S = the top-m tokens of p (the whole vocabulary when top_m = 0), M = Σ_{u∈S} p(u)          (1)
    ψ̄ = log Σ_{u∈S} (p(u)/M)·e^{ψ(y_<t ⊕ u)}                                                (2)
    q(v) = p(v)·e^{ψ(y_<t ⊕ v) − ψ̄} on S;  off S: q(v) = p(v) (tail=base) or 0 (tail=drop)     (3)

With tail=base S keeps its base mass M and the tail is left untilted, so truncating the tilt to the
top-m does not shift mass onto S; tail=drop renormalises over S (the truncating form). With
top_m = 0, q = p·e^ψ / Σ p·e^ψ: when ψ = V (and p = p_θ), ψ̄ = V(y_<t) and the answers follow p_r
exactly, with no weights. log q of every answer is known, so mean(log q − log p_θ) over the answers
is an unbiased estimate of KL(q ‖ p_θ). One LM forward per token, as plain sampling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import check_choice, check_range
from ..cost import Meter
from ..types import LM, Prompts, Reward, SamplerConfig, Samples
from .common import pack, prefill, score
from .dga.twist import Twist, build_twist, step_law
from .rollout import rollout

VALUES = ("learned", "exact")
TAILS = ("base", "drop")


@dataclass
class VGDConfig(SamplerConfig):
    value: str = "learned"  # twist ψ: learned (a DGA checkpoint's value head) | exact (toy only, by enumeration)
    checkpoint: str = ""  # `dgalign train` directory, shipped name or hf:REPO[@REV]; value=learned needs one
    top_m: int = 64  # tokens tilted by ψ each step: the top-m of the proposal (0 = the whole vocabulary)
    tail: str = "base"  # tokens outside the top-m: base = keep their proposal mass untilted; drop = never drawn

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("value", self.value, VALUES)
        check_range("top_m", self.top_m, 0)
        check_choice("tail", self.tail, TAILS)


def tilt(twist: Twist, prompt_of_row: list[int], prefixes: list[list[int]], hidden: torch.Tensor,
         prop: torch.Tensor, top_m: int, tail: str = "base") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The step law of rows at `hidden` (b, Dh), the LM state at their `prefixes`: (log q (b, V), S (b, m), ψ (b, m))."""
    m = prop.shape[-1] if top_m == 0 else min(top_m, prop.shape[-1])
    top = prop.topk(m, dim=-1).indices  # (b, m)   (1)
    psi = twist(prompt_of_row, prefixes, hidden, top)  # (b, m)
    return step_law(prop, top, psi.to(prop.dtype), tail), top, psi


@torch.no_grad()
def sample_vgd(
    lm: LM,
    reward: Reward,
    prompts: Prompts,
    cfg: VGDConfig,
    *,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> Samples:
    """Value-guided decoding with the twist `cfg.value`; rows that finish (EOS, length) leave the batch."""
    twist = build_twist(cfg.value, lm, reward, prompts, beta=cfg.beta, max_new_tokens=cfg.max_new_tokens,
                        checkpoint=cfg.checkpoint)
    meter = Meter(lm)
    index = [i for i in range(len(prompts)) for _ in range(cfg.num_samples)]  # prompt of each row

    def law(state, rows, prefixes, prop):
        return tilt(twist, [index[r] for r in rows.tolist()], prefixes, state.hidden, prop, cfg.top_m, cfg.tail)[0]

    state = prefill(lm, prompts, cfg.num_samples)
    out = rollout(lm, state, cfg, cfg.max_new_tokens, generator=generator, callback=callback, law=law)
    texts = [lm.decode(t) for t in out.tokens]
    rewards = score(meter, reward, [prompts.texts[i] for i in index], texts)
    kl_rows = (out.proposal_logprobs - out.base_logprobs).double()  # log q − log p_θ per answer: E_q is the KL
    return pack(lm, meter, index, out.tokens, rewards, out.base_logprobs, texts, kl_to_base=float(kl_rows.mean()),
                kl_rows=kl_rows.float().cpu(),
                extras={"value": cfg.value, "top_m": cfg.top_m, "tail": cfg.tail})
