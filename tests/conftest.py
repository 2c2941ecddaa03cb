import pytest
import torch

# Overrides (on configs/tiny.yaml) for a smaller model on generated 16x16 shapes: tests of the training
# machinery rather than of learning. Test modules import it with ``from conftest import MICRO`` (pytest puts
# tests/ on sys.path); each adds its own train.* settings.
MICRO = ["data.kind=synthetic", "data.resolution=16", "model.patch_size=4", "model.embed_dim=32", "model.depth=2",
         "model.num_heads=2", "train.batch_size=16", "optim.warmup_steps=5", "sample.num_inference_steps=2",
         "sample.grid_size=4", "train.sample_every=0"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): on a busy
    2-core machine two OpenMP threads run several times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
