"""``RewardModel.load(int8_compute=True)``: onnxruntime multiplies the shipped backbone's 8-bit weights in
int8 (``MatMulNBits``, inputs quantized per row in blocks). Rankings agree with the default path wherever the
default's scores are apart by more than int8's rounding, scores do not depend on the batch, the fusion
really happens, and what it cannot run on is named. Its speed is measured in bench/run.py, not here."""

import json
from pathlib import Path

import numpy as np
import pytest

from moerm_lite import RewardModel
from moerm_lite.sessions import INT8_COMPUTE_ORT, cpu_session

ROOT = Path(__file__).resolve().parents[1]
SANITY = ROOT / "tests" / "data" / "sanity.jsonl"
EXAMPLES = ROOT / "models" / "examples"
MOVE = 0.4  # int8 compute moves a score by at most ~0.2 on the bench workload (scores' spread ~1.4)
PROMPT = "How do I bake bread?"
REPLIES = ["Mix flour, water, salt and yeast, let it rise, then bake at 230 C.", "No.", "",
           "Mix flour, water, salt and yeast, let it rise, then bake at 230 C.",  # the first again: a tie
           "Bread is a food. " * 20, "Paris is the capital of France."]


def read_rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def both():
    return RewardModel.load(threads=2), RewardModel.load(threads=2, int8_compute=True)


def test_rankings_agree_where_the_default_separates_ties_included(both):
    exact, fast = both
    assert fast.int8_compute and not exact.int8_compute and "int8_compute=True" in repr(fast)
    calls = [(r["prompt"], r["responses"]) for r in read_rows(EXAMPLES / "rank.jsonl")] + [(PROMPT, REPLIES)]
    for prompt, replies in calls:
        want = {r["corpus_id"]: r["score"] for r in exact.rank(prompt, replies)}
        got = fast.rank(prompt, replies)
        position = {r["corpus_id"]: i for i, r in enumerate(got)}
        score = {r["corpus_id"]: r["score"] for r in got}
        for i in want:
            assert abs(score[i] - want[i]) < MOVE / 2, (prompt, i)
            for j in want:
                if want[i] > want[j] + MOVE:
                    assert position[i] < position[j], (prompt, i, j)
    ids = [r["corpus_id"] for r in fast.rank(PROMPT, REPLIES)]
    assert ids.index(0) + 1 == ids.index(3)  # equal texts tie, in input order


def test_the_sanity_suite_wins_the_same_clear_pairs(both):
    """Our 20 questions against four kinds of worse reply: every pair the default path decides by more than
    int8's rounding is decided the same way, and int8 compute really moves the scores (it is not a no-op)."""
    suite = read_rows(SANITY)
    moved = 0.0
    for kind in ("offtopic", "nonanswer", "dismissive", "truncated"):
        pairs = [(r["prompt"], r[side]) for r in suite for side in ("answer", kind)]
        exact, fast = (m.score_pairs(pairs).reshape(-1, 2) @ np.array([1.0, -1.0]) for m in both)  # (20,) each
        clear = np.abs(exact) > MOVE
        assert np.array_equal(exact[clear] > 0, fast[clear] > 0), kind
        moved = max(moved, float(np.abs(fast - exact).max()))
    assert 1e-4 < moved < MOVE


def test_scores_do_not_depend_on_the_batch(both):
    """Activations are quantized per row, so a text's score is the same alone or among others."""
    _, fast = both
    pairs = [(r["prompt"], r[side]) for r in read_rows(SANITY)[:6]
             for side in ("answer", "offtopic", "truncated")]
    together = fast.score_pairs(pairs)
    np.testing.assert_allclose(fast.score_pairs(pairs, batch_size=1), together, rtol=0, atol=1e-3)
    np.testing.assert_allclose(fast.score_pairs(pairs[::-1])[::-1], together, rtol=0, atol=1e-3)


def test_the_weights_are_multiplied_as_matmulnbits(both, tmp_path):
    """The session int8_compute asks for runs each 8-bit weight as one MatMulNBits (onnxruntime's profile),
    where the default folds them into plain fp32 MatMuls."""
    exact, _ = both
    graph = exact.folder / exact.config.graphs[exact.precision].backbone
    ops = {}
    for int8 in (False, True):
        sess = cpu_session(graph, 1, dequantize_at_load=True, int8_compute=int8,
                           profile_prefix=str(tmp_path / f"p{int8}"))
        sess.run(None, {"input_ids": np.array([[101, 7592, 102]]), "attention_mask": np.ones((1, 3), np.int64),
                        "token_type_ids": np.zeros((1, 3), np.int64)})
        events = json.loads(Path(sess.end_profiling()).read_text())
        ops[int8] = {e["args"]["op_name"] for e in events
                     if e.get("cat") == "Node" and "op_name" in e.get("args", {})}
    assert "MatMulNBits" in ops[True] and "MatMulNBits" not in ops[False] and "MatMul" in ops[False]


def test_what_it_cannot_run_on_is_named(tiny_folder, monkeypatch):
    with pytest.raises(ValueError, match="onnxruntime engine"):
        RewardModel.load(int8_compute=True, engine="openvino")
    with pytest.raises(ValueError, match="8-bit weights"):
        RewardModel.load(tiny_folder, precision="fp32", int8_compute=True)
    with pytest.raises(ValueError, match="True or False"):
        RewardModel.load(int8_compute="yes")
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "__version__", "1.24.4")
    need = ".".join(map(str, INT8_COMPUTE_ORT))
    with pytest.raises(ValueError, match=f"onnxruntime>={need}, this is 1.24.4"):
        RewardModel.load(int8_compute=True)


def test_the_batch_scorer_passes_it_on(both):
    """Ray Data's per-worker scorer (moerm_lite.batch) loads the model the same way when asked."""
    from moerm_lite.batch import BatchScorer

    _, fast = both
    rows = [(r["prompt"], r["answer"]) for r in read_rows(SANITY)[:4]]
    scorer = BatchScorer(threads=2, int8_compute=True)
    out = scorer({"prompt": np.array([p for p, _ in rows]), "response": np.array([r for _, r in rows])})
    assert scorer.model.int8_compute
    np.testing.assert_allclose(out["score"], fast.score_pairs(rows), rtol=0, atol=1e-5)
