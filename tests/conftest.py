import copy
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)  # tiny models: one thread is as fast, and never stalls against another job

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the repository; tests that read it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps one process-wide state; tests that train with different precisions each need their own."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def interrupt():
    """interrupt(method, step, error): the method's loss raises `error` at trainer step `step` (0-based),
    as a kill or a Ctrl-C in that step would; the other steps run as before."""

    def patch(method, step: int, error) -> None:
        real_loss = method.loss

        def loss(batch, at):
            if at == step:
                raise error
            return real_loss(batch, at)

        method.loss = loss

    return patch


@pytest.fixture
def graded_by():
    """graded_by(task, rule): a copy of the task whose grader is `rule(text)`. A random tiny model never
    multiplies right, and group advantages (grpo, lepo) need rewards that differ within a group."""

    def stub(task, rule):
        graded = copy.copy(task)
        graded.grade = lambda text, example: rule(text)
        return graded

    return stub
