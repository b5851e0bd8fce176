"""Test setup: without a CUDA GPU, Triton kernels run under Triton's CPU interpreter.

TRITON_INTERPRET must be set before triton is imported (triton.jit reads it), hence here, first.
"""

import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# a fast path that cannot build fails its test instead of falling back (variants/fast_paths.py); the fallback's
# own tests set "auto"
os.environ.setdefault("DELTALAB_FAST_PATHS", "strict")

import pytest  # noqa: E402

DEVICE = "cuda" if HAS_CUDA else "cpu"


@pytest.fixture
def device() -> str:
    return DEVICE


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
