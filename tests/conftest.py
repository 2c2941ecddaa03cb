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
