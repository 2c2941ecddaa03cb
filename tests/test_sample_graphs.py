"""Sampling under CUDA graphs: the option's CPU fallback and the fixed-shape padding of the last batch."""

import contextlib

import numpy as np
import pytest
from test_sample import tiny_pipeline

import cogdiff.sampling as sampling


@pytest.mark.parametrize("choice, device, on", [("auto", "cpu", False), ("true", "cpu", False), (True, "cpu", False),
                                                ("auto", "cuda", True), ("false", "cuda", False)])
def test_use_cuda_graphs(choice, device, on):
    assert sampling.use_cuda_graphs(choice, device) is on


def test_bad_choice_is_a_one_line_error():
    with pytest.raises(ValueError, match="cuda_graphs must be auto, true or false"):
        sampling.use_cuda_graphs("always", "cpu")


def test_the_option_falls_back_to_eager_on_cpu_with_identical_images():
    pipe = tiny_pipeline(num_classes=3)
    eager = np.concatenate(list(sampling.pipeline_batches(pipe, 5, 2, 3, seed=1, cuda_graphs="false")))
    option = np.concatenate(list(sampling.pipeline_batches(pipe, 5, 2, 3, seed=1, cuda_graphs="true")))
    assert eager.shape[0] == 5 and np.array_equal(eager, option)


def test_padding_keeps_the_shape_and_drops_the_extra_images(monkeypatch):
    pipe = tiny_pipeline(num_classes=3)
    shapes = []
    monkeypatch.setattr(sampling, "use_cuda_graphs", lambda choice, device: True)  # the graph path, minus CUDA

    @contextlib.contextmanager
    def recording(pipeline, enabled):
        handle = pipeline.transformer.register_forward_pre_hook(lambda m, args: shapes.append(args[0].shape[0]))
        try:
            yield
        finally:
            handle.remove()

    monkeypatch.setattr(sampling, "graphed_denoiser", recording)
    padded = sampling.sample_batch(pipe, range(4, 7), 3, seed=2, cuda_graphs="true", pad_to=5)
    full = sampling.sample_batch(pipe, range(4, 9), 3, seed=2)
    assert padded.shape[0] == 3 and set(shapes) == {5}
    assert np.array_equal(padded, full[:3])  # same batch shape, same per-image seeds: the same images
