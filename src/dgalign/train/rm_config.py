"""How a reward-model head is trained, apart from the trainer so that the CLI reads the defaults without torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RMConfig:
    """How a reward-model head is trained (the features are frozen)."""

    features: str = "minilm"  # minilm | lm:<model> | random:<dim> (see dgalign.rewards.learned)
    hidden: int = 256  # MLP width; 0 = a linear head
    dropout: float = 0.2  # dropout after the MLP's hidden layer
    val_frac: float = 0.1  # fraction of the pairs held out for early stopping and the reported accuracy
    epochs: int = 200  # most passes over the training pairs
    patience: int = 15  # stop after this many epochs without a lower validation loss
    lr: float = 1e-3  # AdamW learning rate
    weight_decay: float = 0.1  # AdamW weight decay
    batch_size: int = 64  # pairs per optimiser step
    max_pairs: int | None = None  # train and validate on a random subset of this many pairs; None: all
    seed: int = 0  # subset, split, initialisation, dropout and batch order


# The built-in `harmless` and `truthfulness-rm` rewards: the defaults on a suite's training pairs, 10% of them held
# out for early stopping (`harmless`: the 1431 HH-RLHF harmless pairs whose first turn is no hh-harmless evaluation
# prompt; `truthfulness-rm`: 4594 true-over-false answer pairs of the 307 truthfulqa training questions).
# MiniLM rather than LM features: on 300 of the pairs (10 random 240/60 splits) an MLP head on
# minilm reaches 0.655 validation accuracy against 0.60-0.625 on lm:smollm2-135m-instruct, whose
# features cost ~15x more (all pairs would take ~40 min on 2 CPU cores, minilm ~6 min).
HARMLESS = RMConfig(features="minilm")
