import pytest
import torch

from dgalign.lm import ToyLM


@pytest.fixture(scope="session")
def toy():
    return ToyLM()


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
