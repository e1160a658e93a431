"""run_feeds with a FeedHelper: a lone call's backbone feeds two at a time, each computed exactly as alone."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from moerm_lite import RewardModel
from moerm_lite.sessions import FeedHelper, cpu_session, run_feeds
from moerm_lite.text import TextTokenizer
from tests.tiny import WORDS

OUT = "embedding"


class FakeBackbone:
    """A backbone whose ``run`` returns its feed's first id, after ``wait(feed_id)``; records which thread
    ran each feed."""

    def __init__(self, wait=lambda i: None) -> None:
        self.wait = wait
        self.threads: dict[int, str] = {}

    def run(self, output_names, feed, run_options=None):
        i = int(feed["input_ids"][0, 0])
        self.wait(i)
        self.threads[i] = threading.current_thread().name
        return [np.full((1, 2), i, np.float32)]


def feeds(n: int):
    return ({"input_ids": np.array([[i]])} for i in range(n))  # a generator: taken one at a time


def collect(backbone, output, feeds, helper=None) -> list[np.ndarray]:
    """run_feeds' outputs in feed order; each index stored exactly once."""
    got: dict[int, np.ndarray] = {}

    def store(i: int, out: np.ndarray) -> None:
        assert i not in got
        got[i] = out

    run_feeds(backbone, output, feeds, store, helper)
    assert sorted(got) == list(range(len(got)))
    return [got[i] for i in range(len(got))]


def test_two_at_a_time_equals_one_at_a_time_bit_for_bit(tiny_folder):
    m = RewardModel.load(tiny_folder, precision="fp32", threads=2)
    graph = m.config.graphs["fp32"]
    session = cpu_session(m.folder / graph.backbone, 2)
    tok = TextTokenizer(m.folder / "tokenizer.json", m.config.max_length)
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=n)) for n in rng.integers(1, 40, size=12)]
    ids, _ = tok.encode(texts, "response")
    batches = [[ids[i] for i in g] for g in ([0], [1, 2, 3], [4], [5, 6], [7], [8, 9, 10, 11])]
    padded = [{k: v for k, v in tok.pad(b).items() if k in m.config.backbone_inputs} for b in batches]
    out = m.config.backbone_output
    alone = collect(session, out, padded)
    helper = FeedHelper()
    for _ in range(3):
        together = collect(session, out, iter(padded), helper)
        assert len(together) == len(alone)
        for a, b in zip(alone, together):
            assert a.shape == b.shape and np.array_equal(a, b)


def test_a_lone_call_runs_two_feeds_at_once():
    both = threading.Barrier(2, timeout=10)  # feeds 0 and 1 each wait for the other: only two workers pass
    backbone = FakeBackbone(lambda i: both.wait() if i < 2 else None)
    got = collect(backbone, OUT, feeds(6), FeedHelper())
    assert [int(g[0, 0]) for g in got] == list(range(6))  # in order
    assert len({backbone.threads[0], backbone.threads[1]}) == 2
    assert threading.current_thread().name in backbone.threads.values()


def test_calls_that_overlap_each_run_on_their_own_thread():
    helper, holding, release = FeedHelper(), threading.Event(), threading.Event()

    def hold(i: int) -> None:  # the first call's own thread holds its feed until the second call is done
        if threading.current_thread().name == "first":
            holding.set()
            assert release.wait(10)
        time.sleep(0.001)  # the helper's feeds take a while: both threads take some

    first_backbone = FakeBackbone(hold)
    first = threading.Thread(target=collect, args=(first_backbone, OUT, feeds(50), helper), name="first")
    first.start()
    assert holding.wait(10)
    deadline = time.monotonic() + 10
    while len(first_backbone.threads) < 49 and time.monotonic() < deadline:  # the helper ran the rest
        time.sleep(0.01)
    time.sleep(0.05)  # and is free again, while the first call is still in flight
    second_backbone = FakeBackbone(lambda i: time.sleep(0.005))
    got = collect(second_backbone, OUT, feeds(8), helper)
    release.set()
    first.join(10)
    assert len(first_backbone.threads) == 50
    assert [int(g[0, 0]) for g in got] == list(range(8))
    assert set(second_backbone.threads.values()) == {threading.current_thread().name}  # no helper while busy
    # alone again: the helper takes feeds again
    both = threading.Barrier(2, timeout=10)
    collect(FakeBackbone(lambda i: both.wait() if i < 2 else None), OUT, feeds(4), helper)


@pytest.mark.parametrize("bad", [0, 1, 5])
def test_an_error_on_either_thread_is_raised_and_the_helper_goes_on(bad):
    def fail(i: int) -> None:
        if i == bad:
            raise RuntimeError(f"feed {i} failed")

    helper = FeedHelper()
    with pytest.raises(RuntimeError, match=f"feed {bad} failed"):
        collect(FakeBackbone(fail), OUT, feeds(6), helper)
    got = collect(FakeBackbone(), OUT, feeds(6), helper)
    assert [int(g[0, 0]) for g in got] == list(range(6))
