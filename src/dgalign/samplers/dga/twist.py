"""Twists ψ(prefix ⊕ v) ≈ log E_{p_θ}[exp(β r) | prefix ⊕ v], shared by every method that reads a value.

`vgd`, `cd-block`, `smc` (twist=learned / exact) and DGA all ask the same question: for each row
(a prompt and the answer prefix so far) and candidate next tokens v, what is ψ(prefix ⊕ v), in
nats with β folded in? A twist answers it:

- `LearnedTwist`: β·r_φ(e_v, 0, h_prefix), the value head of a DGA checkpoint (`dgalign train`),
  read at the LM's hidden state at the prefix; the checkpoint is loaded once per (path, device).
- `ExactToyTwist`: the soft value by enumeration on the toy LM (`ExactToyValue`), one table per
  prompt; with it `vgd` over the whole vocabulary samples p_θ·exp(β r)/Z exactly.
- none: the caller gets `None` and runs without a twist.

`build_twist` is what samplers call with their config's `value` / `checkpoint`; a caller (a test, a
benchmark) may build one itself and pass it in.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from ...errors import DGAlignError
from ...types import LM, Prompts, Reward
from .checkpoint import CONFIG, DGANets, resolve_checkpoint
from .denoiser import embedding_scale

TWIST_KINDS = ("learned", "exact", "none")


class Twist:
    """ψ(prefix ⊕ v) for candidate tokens; subclasses say how."""

    beta: float

    def __call__(self, prompt_of_row: list[int], prefixes: list[list[int]], hidden: torch.Tensor,
                 ids: torch.Tensor) -> torch.Tensor:
        """ψ(prefix_b ⊕ ids[b, j]) (B, m) float32 on `ids`' device; `hidden` (B, Dh) is the LM's state at each
        prefix, `prefixes` the answer tokens so far and `prompt_of_row` each row's prompt index."""
        raise NotImplementedError


class LearnedTwist(Twist):
    """β·r_φ(e_v, 0, h) in reward units from a DGA checkpoint's value head."""

    def __init__(self, nets: DGANets, lm: LM, beta: float):
        self.nets, self.head, self.beta = nets, nets.value, beta
        self.emb = lm.embeddings().detach().float().to(lm.device) / embedding_scale(lm)

    def __call__(self, prompt_of_row, prefixes, hidden, ids):
        b, m = ids.shape
        index = torch.arange(b, device=ids.device).repeat_interleave(m)
        flat = ids.reshape(-1)
        z = self.head.clean(flat, self.emb[flat], hidden.float(), index)
        return (self.beta * self.head.units(z)).view(b, m)


class ExactToyTwist(Twist):
    """The exact soft value on the toy LM, by enumeration; one `ExactToyValue` per prompt, built on first use."""

    def __init__(self, lm: LM, reward: Reward, prompts: Prompts, max_new_tokens: int, beta: float):
        self.lm, self.reward, self.prompts, self.max_new_tokens, self.beta = lm, reward, prompts, max_new_tokens, beta
        self.tables: dict[int, ExactToyValue] = {}

    def table(self, i: int) -> ExactToyValue:
        if i not in self.tables:  # the enumeration is ground truth, not the sampler's compute: not counted
            spent = self.lm.forward_tokens
            self.tables[i] = ExactToyValue(self.lm, self.reward, self.prompts.texts[i], self.prompts.ids[i],
                                           self.max_new_tokens, self.beta)
            self.lm.forward_tokens = spent
        return self.tables[i]

    def __call__(self, prompt_of_row, prefixes, hidden, ids):
        rows = [self.table(p)([(*prefix, v) for v in vs]) for p, prefix, vs in
                zip(prompt_of_row, prefixes, ids.tolist(), strict=True)]
        return torch.stack(rows).float().to(ids.device) if rows else torch.zeros(ids.shape, device=ids.device)


class ExactToyValue:
    """ψ(prefix) = log Σ_y p_θ(y | prefix)·exp(β r(c, prefix ⊕ y)), by recursion over the toy's tree.

    ψ(complete y) = β r(c, y); ψ(prefix) = log Σ_v p_θ(v | prefix)·exp(ψ(prefix ⊕ v)).
    """

    def __init__(self, lm, reward, prompt: str, prompt_ids: list[int], max_new_tokens: int, beta: float):
        self.table: dict[tuple[int, ...], float] = {}
        self.eos = eos = set(lm.eos_token_ids)

        def visit(prefix: tuple[int, ...]) -> float:
            if (prefix and prefix[-1] in eos) or len(prefix) == max_new_tokens:
                value = beta * float(reward([prompt], [lm.decode(list(prefix))])[0])
            else:
                logp = lm.start([prompt_ids + list(prefix)]).logits[0].double().log_softmax(-1)
                kids = torch.tensor([float(logp[v]) + visit(prefix + (v,)) for v in range(len(logp))], device="cpu")
                value = float(torch.logsumexp(kids, 0))
            self.table[prefix] = value
            return value

        self.log_z = visit(())

    def __call__(self, prefixes: list[tuple[int, ...]]) -> torch.Tensor:
        """ψ of each prefix; tokens after its first EOS are ignored (the answer ended there)."""
        return torch.tensor([self.table[self._cut(p)] for p in prefixes], device="cpu")

    def _cut(self, prefix: tuple[int, ...]) -> tuple[int, ...]:
        for i, tok in enumerate(prefix):
            if tok in self.eos:
                return prefix[: i + 1]
        return prefix


def step_law(prop: torch.Tensor, top: torch.Tensor, psi: torch.Tensor, tail: str = "base") -> torch.Tensor:
    """log q (b, V) of value-guided decoding's step (`vgd.py` (1)–(3): q = p·e^{ψ−ψ̄} on S, the tail untilted or dropped) from the proposal's log-probs `prop` (b, V), the candidates S `top` (b, m) and
    their twists ψ `psi` (b, m)."""
    lp = prop.gather(-1, top)  # (b, m) log p(u), u ∈ S
    log_m = torch.logsumexp(lp, -1, keepdim=True)  # (b, 1) log M   (1)
    psi_bar = torch.logsumexp(lp - log_m + psi, -1, keepdim=True)  # (b, 1)   (2)
    inside = lp + psi - psi_bar  # (b, m) log q on S, whose mass stays M   (3)
    if tail == "drop":
        return torch.full_like(prop, float("-inf")).scatter(-1, top, inside - log_m)
    return prop.scatter(-1, top, inside)


@functools.lru_cache(maxsize=8)
def _cached_nets(path: str, stamp: float, device: str) -> DGANets:
    with torch.device("cpu"):
        nets = DGANets.load(path)
    for module in nets.modules().values():  # float32 whatever the LM's dtype: the nets are small
        module.to(device=device, dtype=torch.float32)
    return nets


def load_nets(checkpoint: str, device: torch.device) -> DGANets:
    """A checkpoint's nets on `device`, loaded once per (checkpoint, its files' age, device)."""
    path = resolve_checkpoint(checkpoint)
    stamp = (Path(path) / CONFIG).stat().st_mtime if (Path(path) / CONFIG).exists() else 0.0
    return _cached_nets(str(path), stamp, str(device))


def build_twist(kind: str, lm: LM, reward: Reward | None, prompts: Prompts, *, beta: float, max_new_tokens: int,
                checkpoint: str = "") -> Twist | None:
    """The twist a sampler's config names: `learned` (needs `checkpoint`), `exact` (toy LM only) or `none`."""
    if kind == "none":
        return None
    if kind == "learned":
        if not checkpoint:
            raise DGAlignError("a learned twist needs --set checkpoint=DIR (train one with `dgalign train`)")
        nets = load_nets(checkpoint, lm.device)
        if nets.meta.get("model") != lm.name:
            raise DGAlignError(f"checkpoint {checkpoint} was trained for model {nets.meta.get('model')!r}, "
                               f"not {lm.name!r}")
        return LearnedTwist(nets, lm, beta)
    if kind == "exact":
        from ...lm.toy import ToyLM

        if not isinstance(lm, ToyLM):
            raise DGAlignError("value=exact (the soft value by enumeration) is only available on the toy LM")
        if reward is None:
            raise DGAlignError("value=exact needs a reward")
        return ExactToyTwist(lm, reward, prompts, max_new_tokens, beta)
    raise DGAlignError(f"unknown twist {kind!r}; valid: {', '.join(TWIST_KINDS)}")
