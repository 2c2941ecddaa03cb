"""to_device and the training data's batches: CPU -> CUDA copies must not make the host wait for the GPU."""

import numpy as np
import pytest
import torch

from cogdiff.data import ArrayData
from cogdiff.devices import to_device

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_to_device_keeps_values_and_leaves_non_cuda_moves_to_tensor_to():
    t = torch.arange(6).reshape(2, 3)
    out = to_device(t, "cpu")
    assert out is t  # nothing to move: the same tensor, as t.to would give
    assert torch.equal(to_device(t.float(), torch.device("cpu")), t.float())


def _images(n=40):
    return np.random.default_rng(0).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


@needs_cuda
@pytest.mark.parametrize("keep_on_device", [True, False])
def test_array_data_batch_does_not_wait_for_queued_gpu_work(keep_on_device):
    """With a long kernel queued, get_batch returns while it still runs (a pageable .to("cuda") would wait), and the
    batch equals the one computed by hand from the same images and flips."""
    images = _images()
    data = ArrayData(images, np.arange(40) % 4, "cuda", keep_on_device=keep_on_device, classes=list("abcd"))
    idx = torch.tensor([3, 0, 39, 7, 7])
    data.get_batch(idx, torch.Generator("cuda").manual_seed(5))  # warm-up: first pinned block and kernel loads,
    torch.cuda.synchronize()  # which may synchronize once; the training loop's steady state is what is tested
    torch.cuda._sleep(2_000_000_000)  # about a second of GPU time, queued on the current stream
    x, y = data.get_batch(idx, torch.Generator("cuda").manual_seed(5))
    busy = not torch.cuda.current_stream().query()
    torch.cuda.synchronize()
    assert busy, "get_batch waited for the GPU: a host-device sync on the training hot path"
    flip = (torch.rand(5, generator=torch.Generator("cuda").manual_seed(5), device="cuda") < 0.5).cpu()
    ref = torch.from_numpy(images[idx.numpy()].transpose(0, 3, 1, 2)).float() / 127.5 - 1.0
    ref = torch.where(flip[:, None, None, None], ref.flip(-1), ref)
    torch.testing.assert_close(x.cpu(), ref)
    assert y.tolist() == [3, 0, 3, 3, 3]
