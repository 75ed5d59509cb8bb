"""A Hugging Face causal LM behind the `LM` protocol, with our own KV-cache decoding steps.

Every sampler needs per-step access (next-token logits, last hidden state, the cache to branch
or reorder), so decoding is an explicit loop over `start` / `step` / `select` rather than
`model.generate`. Prompts are left-padded; position ids follow each row's real tokens.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from ..errors import DGAlignError
from ..types import DecodeState


def _context_length(model: PreTrainedModel, name: str) -> int:
    """The longest sequence the model takes: its config's `max_position_embeddings` (GPT-2's n_positions)."""
    try:
        return int(model.config.max_position_embeddings)
    except AttributeError:
        raise DGAlignError(
            f"model {name!r}: its {type(model.config).__name__} has no max_position_embeddings, so its context "
            "length is unknown"
        ) from None


class HFLM:
    """`LM` over a transformers causal LM and its tokenizer."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str,
        chat: bool | None = None,  # apply the chat template; None: when the tokenizer has one
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.chat = tokenizer.chat_template is not None if chat is None else chat
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
            eos.append(tokenizer.eos_token_id)
        self.eos_token_ids = eos
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else eos[0]
        self.max_context = _context_length(model, name)
        self.forward_tokens = 0
        self.device = next(model.parameters()).device
        # the LM head's input is the last hidden state, whatever the architecture: catch it there
        # (cheaper than output_hidden_states, which keeps every layer's output)
        self._head_input: torch.Tensor | None = None
        model.get_output_embeddings().register_forward_pre_hook(self._catch_head_input)

    def _catch_head_input(self, module, args) -> None:
        self._head_input = args[0]

    # -- text at the edges ---------------------------------------------------------------------
    def encode(self, prompts: list[str], *, raw: bool = False) -> list[list[int]]:
        if self.chat and not raw:
            return [
                list(
                    self.tokenizer.apply_chat_template(
                        [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=False
                    )
                )
                for p in prompts
            ]
        return [self.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Token ids of a whole conversation ([{"role", "content"}, ...]) ready for the assistant's
        turn; a model without a chat template gets the contents joined by newlines."""
        if not self.chat:
            return self.encode(["\n".join(m["content"] for m in messages)], raw=True)[0]
        return list(
            self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        )

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def embeddings(self) -> torch.Tensor:
        return self.model.get_input_embeddings().weight

    # -- decoding ------------------------------------------------------------------------------
    @torch.no_grad()
    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache, keep: int = 1) -> tuple:
        """Run `ids` (B, k) after what `cache` holds; the cache is extended in place.

        Returns logits (B, keep, V) float32 and last hidden states (B, keep, D) of the last `keep` positions.
        """
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=keep,
            cache=cache,  # `past_key_values` before transformers 5.24
        )
        self.forward_tokens += int(ids.shape[0] * ids.shape[1])
        return out.logits.float(), self._head_input[:, -keep:], cache

    def start(self, prompt_ids: list[list[int]]) -> DecodeState:
        ids, mask = self._left_pad(prompt_ids)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, L)
        logits, hidden, cache = self._forward(ids, mask, positions, DynamicCache())
        return DecodeState(logits[:, -1], hidden[:, -1], cache, mask, mask.sum(-1))

    def _append(self, state: DecodeState, tokens: torch.Tensor, keep: int) -> tuple:
        """Feed `tokens` (B, k) after the state's cache (extending it in place); logits, hidden, new mask."""
        tokens = tokens.to(self.device)
        batch, k = tokens.shape
        mask = torch.cat([state.mask, state.mask.new_ones(batch, k)], dim=-1)  # (B, L + k)
        positions = state.lengths[:, None] + torch.arange(k, device=self.device)  # (B, k)
        logits, hidden, _ = self._forward(tokens, mask, positions, state.cache, keep)
        return logits, hidden, mask

    def step(self, state: DecodeState, tokens: torch.Tensor) -> DecodeState:
        logits, hidden, mask = self._append(state, tokens, keep=1)
        return DecodeState(logits[:, -1], hidden[:, -1], state.cache, mask, state.lengths + tokens.shape[1])

    def peek(self, state: DecodeState, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = tokens.shape[1]
        logits, hidden, _ = self._append(state, tokens, keep=k)
        state.cache.crop(-k)  # a negative crop drops the last k positions: the state is as it was
        return logits, hidden

    def select(self, state: DecodeState, index: torch.Tensor) -> DecodeState:
        index = index.to(self.device)
        state.cache.reorder_cache(index)  # in place: the old state is consumed
        return DecodeState(
            state.logits[index], state.hidden[index], state.cache, state.mask[index], state.lengths[index]
        )

    @torch.no_grad()
    def sequence_logprobs(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> torch.Tensor:
        rows = [p + c for p, c in zip(prompt_ids, completion_ids, strict=True)]
        ids, mask = self._left_pad(rows)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float()
        self.forward_tokens += int(ids.numel())
        logp = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, L - 1)
        width = ids.shape[1]
        out = torch.zeros(len(rows), device="cpu")  # (B,) float32 on the CPU, as the toy's
        for i, c in enumerate(completion_ids):
            if c:
                out[i] = logp[i, width - 1 - len(c) :].sum()
        return out

    def logits_from_embeddings(self, prompt_ids: list[list[int]], embeds: torch.Tensor) -> torch.Tensor:
        """Next-token logits at T completion positions given as input embeddings, (B, T, V) float32.

        `embeds` (B, T, D) live in the space of `embeddings()` rows (a soft token is a mixture of
        rows); logits[:, t] predicts completion position t from the prompt and embeds[:, :t].
        Differentiable: gradients flow to `embeds` (soft-token / Langevin samplers). No KV cache.
        """
        ids, mask = self._left_pad(prompt_ids)  # (B, L)
        lookup = self.model.get_input_embeddings()
        with torch.no_grad():
            prompt = lookup(ids)  # (B, L, D): the model's own input for the prompt tokens
            # the lookup may scale E's rows (Gemma-3 multiplies them by √D): scale soft tokens alike
            scale = prompt[0, -1].norm() / lookup.weight[ids[0, -1]].norm()
        width = embeds.shape[1]
        inputs = torch.cat([prompt, embeds.to(prompt.dtype) * scale], dim=1)  # (B, L + T, D)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], width)], dim=-1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            inputs_embeds=inputs, attention_mask=mask, position_ids=positions, use_cache=False, logits_to_keep=width + 1
        )
        self.forward_tokens += int(mask.numel())
        return out.logits[:, :-1].float()  # positions L-1 .. L+T-2 predict completion positions 0 .. T-1

    @torch.no_grad()
    def pooled_hidden(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> torch.Tensor:
        """Last hidden state mean-pooled over each completion's tokens, read after its prompt, (B, D) float32.

        One forward pass of the decoder without the LM head; an empty completion gives zeros.
        """
        rows = [p + c for p, c in zip(prompt_ids, completion_ids, strict=True)]
        ids, mask = self._left_pad(rows)  # (B, L)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        decoder = self.model.get_decoder()
        hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
        hidden = hidden.last_hidden_state.float()  # (B, L, D)
        self.forward_tokens += int(ids.numel())
        width = ids.shape[1]
        n = torch.tensor([len(c) for c in completion_ids], device=self.device)  # (B,)
        keep = (torch.arange(width, device=self.device) >= width - n[:, None]).float()  # (B, L): completion
        return (hidden * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long, device="cpu")  # built here, then moved
        mask = torch.zeros((len(rows), width), dtype=torch.long, device="cpu")
        for i, r in enumerate(rows):
            if r:
                ids[i, width - len(r) :] = torch.tensor(r, device="cpu")
                mask[i, width - len(r) :] = 1
        return ids.to(self.device), mask.to(self.device)
