"""Shared pytest configuration: device and dtype parametrisation.

Every op test is parametrised over DEVICES (CUDA skipped where absent) x dtype x
contiguity. Import the helpers from tests/helpers.py (adversarial inputs, tolerances).
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """For modules of small tensors (pytestmark = pytest.mark.usefixtures("one_thread")):
    one intra-op thread is faster there, and kind to shared CPUs."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
