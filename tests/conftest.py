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
