import pytest
import torch

from dgalign.lm import ToyLM
from seeds import OFFSET


@pytest.fixture(scope="session")
def toy():
    return ToyLM()


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234 + OFFSET)


@pytest.fixture(scope="session")
def seed_offset():
    """Added to the seeds of the statistical tests (tests/seeds.py)."""
    return OFFSET


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A tiny random LlamaForCausalLM with the embedded model's tokenizer, saved as a model directory (offline)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from dgalign.lm.embedded import converted_dir

    tokenizer = AutoTokenizer.from_pretrained(converted_dir("smollm2-135m-instruct"))
    root = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return str(root)


@pytest.fixture
def prompts_file(tmp_path):
    """Four toy prompts, one a line (the bench tests' suite file)."""
    path = tmp_path / "toy-prompts.txt"
    path.write_text("ab\nba\nc\nabc\n")
    return path
