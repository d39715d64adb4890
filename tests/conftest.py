"""Shared test set-up.

- GPU tests are marked ``gpu`` and skipped cleanly without CUDA.
- Without CUDA, Triton kernels run in Triton's interpreter: ``TRITON_INTERPRET=1`` is set here,
  before any kernel module is imported (Triton decides at decoration time). The public ops read
  the variable at call time to route eager CPU calls to the kernels, so it stays set only for
  tests marked ``interpret`` (every test in ``test_kernels*.py``); all other tests see the CPU
  reference path, as a user without the variable would.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run scripts/gpu_check.sh on the GPU machine)")
    for item in items:
        if item.path.name.startswith("test_kernels"):
            item.add_marker(pytest.mark.interpret)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _environment(request, monkeypatch):
    torch.manual_seed(0)
    if "interpret" not in request.keywords:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
