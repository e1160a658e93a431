"""RewardModel on the tiny fixture folder: known answers, invariances, errors."""

import logging
import threading

import numpy as np
import pytest

from moerm_lite import RewardModel, UserProfile
from tests.model_test_utils import random_pairs

PROMPT = "why is the cat nice"
RESPONSES = ["the cat is kind and good", "it is rude and bad", "thanks for the question"]


def by_hand(model: RewardModel, head, prompt: str, responses: list[str]) -> np.ndarray:
    """Tokenize, embed prompt and response separately (the tiny backbone's formula), build the pair
    features of the folder's layout, run the dense head: scores (N,) computed without the runtime."""
    import onnx
    from onnx import numpy_helper
    from tokenizers import Tokenizer

    from moerm_build.graphs.onnx_head import reference_head
    from moerm_lite.features import pair_features

    folder = model.folder
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(folder / "onnx" / "backbone_fp32.onnx").graph.initializer}
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))

    def embed(text):
        ids = tok.encode(text).ids
        return np.tanh(inits["E"][ids] + inits["T"][0]).mean(0)  # (H,): one segment, no padding

    P = np.stack([embed(prompt)] * len(responses))
    R = np.stack([embed(r) for r in responses])
    x = pair_features(P, R, [prompt] * len(responses), responses, model.config.feature_layout)
    idx, gates, rewards = reference_head(x, head, model.experts_per_input)
    return (gates * np.asarray(model.w0)[idx] * rewards).sum(1)


def test_scores_equal_an_independent_numpy_reference(tiny_fp32, tiny_head):
    np.testing.assert_allclose(tiny_fp32.score(PROMPT, RESPONSES), by_hand(tiny_fp32, tiny_head, PROMPT, RESPONSES),
                               atol=1e-5)


def test_a_folder_of_the_second_feature_layout_scores_its_own_features(tmp_path):
    """A folder whose config names prompt_response_v2 (two word-trigram statistics more): the runtime
    computes that layout, and the scores equal the formula by hand on it."""
    from tests.tiny import build_tiny_folder

    folder, head = build_tiny_folder(tmp_path / "v2", feature_layout="prompt_response_v2", reference=False)
    m = RewardModel.load(folder, precision="fp32")
    assert m.config.feature_layout == "prompt_response_v2" and m.pair_features([(PROMPT, "ok")])[0].shape == (1, 2 * 16 + 15)
    np.testing.assert_allclose(m.score(PROMPT, RESPONSES), by_hand(m, head, PROMPT, RESPONSES), atol=1e-5)


def test_canonical_scores(tiny_fp32, tiny_int8):
    """Pinned values: a change in tokenization, pooling, features, routing or the formula moves them."""
    np.testing.assert_allclose(tiny_fp32.score(PROMPT, RESPONSES),
                               [0.14908906518124854, 0.13406052247928552, 0.4271969968936158], atol=1e-5)
    np.testing.assert_allclose(tiny_int8.score(PROMPT, RESPONSES),
                               [0.14807870203268472, 0.13350596077084304, 0.4302941341392836], atol=1e-4)


def test_score_types(tiny_fp32):
    s = tiny_fp32.score(PROMPT, RESPONSES[0])
    assert isinstance(s, float)
    arr = tiny_fp32.score(PROMPT, RESPONSES)
    assert isinstance(arr, np.ndarray) and arr.shape == (3,)
    assert s == pytest.approx(arr[0], abs=1e-6)
    assert tiny_fp32.score(PROMPT, []).shape == (0,)


@pytest.mark.parametrize("model,atol", [("tiny_fp32", 1e-6), ("tiny_int8", 1e-3)])
def test_batch_size_invariance_and_input_order(model, atol, request):
    m = request.getfixturevalue(model)
    pairs = random_pairs(70)
    ref = m.score_pairs(pairs, batch_size=1)
    for bs in (2, 7, 32, 100):
        np.testing.assert_allclose(m.score_pairs(pairs, batch_size=bs), ref, atol=atol)
    perm = np.random.default_rng(1).permutation(len(pairs))
    np.testing.assert_allclose(m.score_pairs([pairs[i] for i in perm]), ref[perm], atol=atol)


@pytest.mark.parametrize("precision,atol", [("fp32", 1e-6), ("int8", 1e-3)])
def test_rank_does_not_depend_on_how_the_backbone_batches(tiny_folder, precision, atol):
    """Every token budget per backbone call (each text alone up to one call for all) gives the same
    scores and the same ranking, ties in input order included."""
    responses = [*RESPONSES, RESPONSES[0], "", "the cat is kind and good and kind and good", RESPONSES[2]]
    models = [RewardModel.load(tiny_folder, precision=precision, tokens_per_batch=t) for t in (1, 16, 64, 10**6)]
    ref = models[-1].rank(PROMPT, responses)
    ids = [r["corpus_id"] for r in ref]
    assert ids.index(0) < ids.index(3) and ids.index(2) < ids.index(6)  # equal texts tie: input order kept
    for m in models[:-1]:
        got = m.rank(PROMPT, responses)
        np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in ref], atol=atol)
        assert [r["corpus_id"] for r in got] == ids


@pytest.mark.parametrize("precision,atol", [("fp32", 1e-6), ("int8", 1e-3)])
def test_two_feeds_at_a_time_rank_as_one_at_a_time(tiny_folder, precision, atol):
    """Two threads (a call's backbone feeds two at a time, sessions.FeedHelper) and one thread (one at a
    time) give the same scores and ranking, ties included, whatever the batching."""
    responses = [*RESPONSES, RESPONSES[0], "", "the cat is kind and good and kind and good", RESPONSES[2]] * 2
    for tokens in (1, 16, 10**6):
        ref = RewardModel.load(tiny_folder, precision=precision, threads=1, tokens_per_batch=tokens)
        two = RewardModel.load(tiny_folder, precision=precision, threads=2, tokens_per_batch=tokens)
        want, got = ref.rank(PROMPT, responses), two.rank(PROMPT, responses)
        assert [r["corpus_id"] for r in got] == [r["corpus_id"] for r in want]
        np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want], atol=atol)


def test_rank_and_flip(tiny_fp32):
    m = tiny_fp32
    ranking = m.rank(PROMPT, RESPONSES)
    assert [r["corpus_id"] for r in ranking] == [2, 0, 1]  # the canonical scores' order
    assert [r["text"] for r in ranking] == [RESPONSES[i] for i in (2, 0, 1)]
    assert m.rank(PROMPT, RESPONSES, top_k=1)[0]["corpus_id"] == 2
    flipped = UserProfile(user_id="contrarian")
    flipped.weights_ = -m.w0
    flipped.model_hash = m.model_hash
    assert [r["corpus_id"] for r in m.rank(PROMPT, RESPONSES, user=flipped)] == [1, 0, 2]


def test_explain_adds_up(tiny_fp32):
    m = tiny_fp32
    e = m.explain(PROMPT, RESPONSES[0])
    assert e["score"] == pytest.approx(m.score(PROMPT, RESPONSES[0]), abs=1e-9)
    assert e["score"] == pytest.approx(float(np.sum(e["gating_output"] * e["weights"] * e["rewards"])))
    assert e["rewards"].shape == e["gating_output"].shape == (m.n_experts,)
    S = m.config.n_shared  # the shared experts are always active, with gate 1
    assert np.count_nonzero(e["gating_output"]) == m.experts_per_input + S
    assert e["gating_output"].sum() == pytest.approx(1.0 + S, abs=1e-6)
    assert (e["rewards"][e["gating_output"] == 0] == 0).all()
    assert e["experts"] == m.expert_names and e["truncated"] is False
    routed = [k for k in range(m.n_experts) if e["gating_output"][k] > 0]
    assert sorted(d["expert"] for d in e["by_expert"]) == sorted(m.expert_names[k] for k in routed)
    assert [d["contribution"] for d in e["by_expert"]] == sorted(
        (float(e["contributions"][k]) for k in routed), key=lambda c: -abs(c))
    assert sum(d["contribution"] for d in e["by_expert"]) == pytest.approx(e["score"], abs=1e-6)
    assert not np.signbit(e["contributions"][e["gating_output"] == 0]).any()  # 0.0, never -0.0
    before = m.score(PROMPT, RESPONSES[0])
    e["weights"] *= 0  # the caller's copy, not the model's own weights
    assert m.score(PROMPT, RESPONSES[0]) == before


def test_truncation_is_visible_and_warned_once(tiny_folder, caplog):
    m = RewardModel.load(tiny_folder, precision="fp32", threads=1)  # its own count, from 0
    long = "the cat is good " * 20  # > max_length=24 tokens
    with caplog.at_level(logging.DEBUG, logger="moerm_lite"):
        m.score("", [long, "ok", long])
        for _ in range(3):
            m.score("", [long, "ok"])
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "truncated" in r.getMessage()]
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG and "truncated" in r.getMessage()]
    assert len(warned) == 1 and "2 of 3 inputs" in warned[0].getMessage()
    assert len(debug) == 3 and "(5 so far for this model)" in debug[-1].getMessage()
    assert m.truncated_inputs == 5
    assert m.explain("", long)["truncated"] is True


def test_empty_prompt_allowed_chat_prompt_rendered(tiny_fp32):
    assert np.isfinite(tiny_fp32.score("", "the cat is good"))
    chat = [{"role": "user", "content": "why is the cat nice"}]
    assert tiny_fp32.score(chat, "ok") == pytest.approx(tiny_fp32.score("user: why is the cat nice", "ok"))


@pytest.mark.parametrize("prompt,response,exc,match", [
    ("q", None, TypeError, "string"),
    ("q", 3.5, TypeError, "string"),
    (None, "ok", TypeError, "prompt"),
    ("q", "x" * 200_001, ValueError, "characters"),
])
def test_bad_text(tiny_fp32, prompt, response, exc, match):
    with pytest.raises(exc, match=match):
        tiny_fp32.score_pairs([(prompt, response)])


def test_empty_responses_are_scored_unless_refused(tiny_fp32):
    """One rule everywhere: an empty or whitespace-only reply is a text and gets a finite score."""
    m = tiny_fp32
    s = m.score("q", ["", "   ", "\u3000", "\u200b", "ok"])
    assert np.isfinite(s).all() and s[0] == s[1] == s[2]  # whitespace tokenizes to nothing, like ""
    assert m.score("q", "") == pytest.approx(s[0])
    assert [r["text"] for r in m.rank("q", ["ok", ""])] in (["ok", ""], ["", "ok"])
    for bad in ("", " \n\t", "\u3000"):
        with pytest.raises(ValueError, match="pair 1 is empty"):
            m.score_pairs([("q", "ok"), ("q", bad)], allow_empty=False)
    with pytest.raises(ValueError, match="empty"):
        m.score("q", "", allow_empty=False)


def test_message_without_content_is_empty(tiny_fp32):
    m = tiny_fp32
    tool_call = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]
    assert m.score(tool_call, "ok") == pytest.approx(m.score("user: hi\n\nassistant: ", "ok"))
    with pytest.raises(TypeError, match="message 0"):
        m.score([{"role": "user", "content": 3}], "ok")


@pytest.mark.parametrize("responses,exc,match", [
    ({"a": 1}, TypeError, "responses must be a list of strings, got dict"),
    ({"a", "b"}, TypeError, "got set"),
    (["ok", 2.5], TypeError, r"responses\[1\] must be a string, got float"),
    (3.5, TypeError, "got float"),
])
def test_bad_response_lists_are_named(tiny_fp32, responses, exc, match):
    with pytest.raises(exc, match=match):
        tiny_fp32.rank("q", responses)
    with pytest.raises(exc, match=match):
        tiny_fp32.score("q", responses)


@pytest.mark.parametrize("top_k", [-1, 0, 1.5, True, "2"])
def test_rank_top_k_must_be_positive(tiny_fp32, top_k):
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        tiny_fp32.rank("q", ["a", "b", "c"], top_k=top_k)
    assert len(tiny_fp32.rank("q", ["a", "b", "c"], top_k=5)) == 3


def test_bad_comparisons_are_named(tiny_fp32):
    with pytest.raises(TypeError, match="comparisons must be a list of dicts, got float"):
        tiny_fp32.fit_user(1.0)
    with pytest.raises(TypeError, match="rejected of comparison 1 must be a string"):
        tiny_fp32.fit_user([{"chosen": "a", "rejected": "b"}, {"chosen": "a", "rejected": 2}])


def test_bad_user_weights(tiny_fp32, tiny_folder):
    m = tiny_fp32
    with pytest.raises(ValueError, match="NaN"):
        m.score("q", "ok", user=np.full(m.n_experts, np.nan))
    with pytest.raises(ValueError, match="n_experts"):
        m.score("q", "ok", user=np.ones(m.n_experts + 1))
    with pytest.raises(TypeError, match="UserProfile.load"):
        m.score("q", "ok", user="alice.json")
    other = UserProfile(user_id="bob")
    other.weights_, other.model_id, other.model_hash = m.w0, "another-model", "0123456789abcdef"
    with pytest.raises(ValueError, match="another-model"):
        m.score("q", "ok", user=other)


def test_bad_arguments(tiny_fp32, tiny_folder):
    with pytest.raises(TypeError):
        tiny_fp32.score("q", 5)
    with pytest.raises(TypeError, match="pair 0"):
        tiny_fp32.score_pairs(["just a string"])
    with pytest.raises(ValueError, match="batch_size"):
        tiny_fp32.score_pairs([("q", "ok")], batch_size=0)
    with pytest.raises(ValueError, match="available"):
        RewardModel.load(tiny_folder, precision="fp16")
    with pytest.raises(ValueError, match="threads"):
        RewardModel.load(tiny_folder, threads=0)


def test_fit_user_moves_towards_comparisons(tiny_fp32):
    m = tiny_fp32
    base = m.score(PROMPT, RESPONSES)
    worst, best = int(np.argmin(base)), int(np.argmax(base))
    comps = [{"prompt": PROMPT, "chosen": RESPONSES[worst], "rejected": RESPONSES[best]}] * 10
    u = m.fit_user(comps, user_id="u1", prior_strength=0.1)
    assert u.n_comparisons_ == 10 and u.user_id == "u1" and u.model_hash == m.model_hash
    after = m.score(PROMPT, RESPONSES, user=u)
    assert after[worst] > after[best]  # the user's preference now wins
    np.testing.assert_array_equal(m.fit_user([]).weights_, m.w0)
    with pytest.raises(ValueError, match="chosen"):
        m.fit_user([{"prompt": "q", "chosen": "ok"}])


def test_comparison_features_are_differences(tiny_fp32):
    m = tiny_fp32
    phi = m.comparison_features([{"prompt": PROMPT, "chosen": RESPONSES[0], "rejected": RESPONSES[1]}])
    s = m.score(PROMPT, RESPONSES[:2])
    assert phi @ m.w0 == pytest.approx([s[0] - s[1]], abs=1e-9)


@pytest.mark.parametrize("threads", [1, 2])
def test_eight_threads_score_at_once(tiny_folder, threads):
    model = RewardModel.load(tiny_folder, threads=threads)  # 2: calls alone take the feed helper, others not
    pairs = random_pairs(40, seed=3)
    ref = model.score_pairs(pairs, batch_size=8)
    results, errors = [None] * 8, []

    def work(i):
        try:
            results[i] = model.score_pairs(pairs, batch_size=8)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results:
        np.testing.assert_allclose(r, ref, atol=1e-6)
