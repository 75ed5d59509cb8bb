"""`dgalign bench`'s settings, apart from the harness so that the CLI reads their defaults without loading torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import DEFAULT_MODEL


@dataclass
class BenchConfig:
    suite: str  # SUITES name, a .txt / .jsonl / .csv prompts file, or hf:NAME[:CONFIG][@SPLIT] (a dataset)
    out: str  # run directory: <suite>.jsonl rows and <suite>.manifest.json
    methods: list[str] = field(default_factory=lambda: ["base"])  # specs name:key=value:...; each is its row label
    labels: list[str] = field(default_factory=list)  # the rows' labels, one per method; empty: the specs themselves
    grid: str = ""  # a GRIDS name whose methods run after `methods` ("" = none)
    n_prompts: int = 40  # the suite's first N prompts
    max_new_tokens: int = 32  # completion length limit of every method
    seeds: list[int] = field(default_factory=lambda: [0])  # one row per (prompt, method, seed)
    batch: int = 1  # prompts per sampler call (one method, one seed); the call's cost is split over its answers
    model: str = DEFAULT_MODEL  # built-in name, HF id, local path, or "toy"
    beta: float = 4.0  # β of every method unless its spec sets beta= (4: what `dgalign train` fits for)
    reward: str = ""  # proxy reward spec, used for guidance; "" = the suite's
    gold: list[str] | None = None  # gold reward specs, evaluation only; None = the suite's (files: none)
    raw: bool | None = None  # True: no chat template; None = the suite's (prompt files: chat)
    sets: dict[str, str] = field(default_factory=dict)  # key=value for every method whose config has the field
    budget_matched: float = 0.0  # > 0: each method's knob set so LM forward tokens/answer ≈ this × base's
    ppl_model: str = "auto"  # perplexity judge; "auto" = gemma3-270m if installed, else the base; "" = none
    device: str | None = None  # cpu, cuda, ...; None = cuda when available
    dtype: str = "auto"  # the LM's weights (lm.DTYPES); "auto" = float32 on CPU, the checkpoint's on GPU
    device_map: str | None = None  # accelerate's placement over several GPUs, instead of `device`
    revision: str | None = None  # hub branch, tag or commit of `model`
    trust_remote_code: bool = False
    # the field map of .jsonl / .csv files and hf: datasets: the column each row key is read from
    prompt_field: str = "prompt"  # the prompt
    reference_field: str = ""  # the reference answer (BLEU, ROUGE-L, BERTScore); "" = a "reference" column as is
    id_field: str = ""  # the prompt's id, written to each row as "prompt_id"; "" = an "id" column as is

    def field_map(self) -> dict[str, str]:
        """Row key -> column, for `load_prompts`."""
        mapped = {"prompt": self.prompt_field, "reference": self.reference_field, "id": self.id_field}
        return {key: column for key, column in mapped.items() if column}


# fields that give rows their meaning: a resumed run must agree with the manifest on these
IDENTITY = ("suite", "model", "max_new_tokens", "beta", "reward", "gold", "raw", "sets", "budget_matched",
            "ppl_model", "prompt_field", "reference_field", "id_field", "batch")
# identity fields added after runs were first written: a manifest without them had these values
LATER_IDENTITY = {"prompt_field": "prompt", "reference_field": "", "id_field": "", "batch": 1}
