"""Overlapping the batch source (e.g. a sampler) with Inception: same results, errors raised, no thread left."""

import threading
import time
import traceback

import numpy as np
import pytest

from cogdiff.metrics import FIDEvaluator, find_weights
from cogdiff.metrics.overlap import overlapped
from cogdiff.metrics.stats import compute_ref_stats

WORKER = "cogdiff-overlap-consumer"
pytestmark = pytest.mark.filterwarnings("ignore:FID from fewer images")


class SourceBroke(RuntimeError):
    pass


def workers_alive() -> list:
    return [t for t in threading.enumerate() if t.name == WORKER and t.is_alive()]


def finishes(fn, limit_s: float = 60.0):
    """Run ``fn`` on a thread; the exception it raised (or None), failing the test if it is still running after
    ``limit_s`` (a hang)."""
    box = {}

    def target():
        try:
            fn()
            box["error"] = None
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(limit_s)
    assert not t.is_alive(), f"still running after {limit_s} s"
    return box["error"]


# ----------------------------------------------------------------------------- the helper (no weights needed)


def test_items_consumed_in_order_and_timings_reported():
    got = []
    tm = overlapped(iter(range(7)), got.append, depth=1)
    assert got == list(range(7))
    assert set(tm) == {"source_s", "consume_s", "wait_for_consumer_s", "wait_for_source_s", "wall_s"}
    assert not workers_alive()
    with pytest.raises(ValueError, match="depth"):
        overlapped([1], got.append, depth=0)


def test_source_and_consumer_run_at_the_same_time():
    def source():
        for i in range(5):
            time.sleep(0.2)
            yield i

    tm = overlapped(source(), lambda i: time.sleep(0.2))
    assert tm["source_s"] >= 0.95 and tm["consume_s"] >= 0.95
    assert tm["wall_s"] < 1.6  # one after the other: 2.0 s; overlapped: about 1.2 s


def test_source_error_propagates_and_stops_the_worker():
    base = threading.active_count()
    got = []

    def source():
        yield 1
        yield 2
        raise SourceBroke("sampler failed")

    error = finishes(lambda: overlapped(source(), got.append))
    assert isinstance(error, SourceBroke) and str(error) == "sampler failed"
    assert not workers_alive() and threading.active_count() == base
    assert got in ([], [1], [1, 2])  # what was queued when the source failed may be dropped, never reordered


def test_consumer_error_is_reraised_with_its_traceback_and_closes_the_source():
    closed = []

    def endless():
        try:
            while True:
                yield np.zeros(3)
        finally:
            closed.append(True)

    def picky(item):
        raise KeyError("bad batch")

    error = finishes(lambda: overlapped(endless(), picky))
    assert isinstance(error, KeyError)
    assert "picky" in [frame.name for frame in traceback.extract_tb(error.__traceback__)]
    assert closed == [True] and not workers_alive()


# ----------------------------------------------------------------------------- FIDEvaluator.score_images


def colour_images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory):
    try:
        find_weights()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    from cogdiff.metrics.inception import InceptionFeatures

    ref = compute_ref_stats([colour_images(6, 3)], InceptionFeatures(device="cpu"), source="test")
    return FIDEvaluator(ref.save(str(tmp_path_factory.mktemp("ref") / "ref.npz")), device="cpu")


def test_overlap_gives_the_same_results(evaluator):
    gen = colour_images(7, 4)
    batches = [gen[:3], gen[3:5], gen[5:]]
    plain = evaluator.score_images(iter(batches))
    assert evaluator.last_timings["overlap"] is False
    over = evaluator.score_images(iter(batches), overlap=True)
    tm = evaluator.last_timings
    assert over == plain and over["num_images"] == 7
    assert tm["overlap"] is True and tm["inception_s"] > 0 and tm["batches_s"] >= tm["inception_s"]
    assert {"source_s", "metrics_s", "wait_for_inception_s", "wait_for_source_s"} <= set(tm)
    assert evaluator.score_images(iter(batches[:2]), overlap=True) != plain  # it does see the batches
    assert not workers_alive()


def test_overlap_source_error_raises_the_same_type_and_leaves_no_thread(evaluator):
    base = threading.active_count()

    def source():
        yield colour_images(2, 5)
        raise SourceBroke("sampler failed")

    with pytest.raises(SourceBroke):
        evaluator.score_images(source())
    assert isinstance(finishes(lambda: evaluator.score_images(source(), overlap=True)), SourceBroke)
    assert not workers_alive() and threading.active_count() == base


def test_overlap_bad_batch_raises_and_does_not_hang(evaluator):
    bad = np.zeros((2, 8, 8, 5), dtype=np.uint8)  # 5 channels
    with pytest.raises(ValueError) as plain:
        evaluator.score_images([colour_images(2, 6), bad])

    def endless():
        yield colour_images(2, 6)
        while True:
            yield bad

    error = finishes(lambda: evaluator.score_images(endless(), overlap=True))
    assert type(error) is type(plain.value) and str(error) == str(plain.value)
    assert not workers_alive()
