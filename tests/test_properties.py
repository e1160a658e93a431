"""Property-based tests over the public entry points (hypothesis), on the tiny model.

Every call either returns results with the stated properties or raises one of the documented
exceptions (``ValueError``, ``TypeError``, ``FileNotFoundError``) with a message naming what was
wrong. Anything else fails. CI runs a few hundred examples; for a long run:

    HYPOTHESIS_PROFILE=long python -m pytest tests/test_properties.py
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from moerm_lite import RewardModel, UserProfile  # noqa: E402
from tests.tiny import WORDS  # noqa: E402

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=1500, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DOCUMENTED = (ValueError, TypeError, FileNotFoundError)
# any text, biased towards the model's vocabulary, layout characters and odd whitespace
word = st.sampled_from(WORDS + ["\n", "- ", "1. ", "!", "?", "```", "\u3000", "\u200b", "\x00", "é", "👍"])
texts = st.one_of(st.text(max_size=60), st.lists(word, max_size=40).map(" ".join))
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]),
                                           "content": st.one_of(texts, st.none())}), min_size=1, max_size=3)
prompts = st.one_of(texts, messages)
junk = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts, st.binary(max_size=8)),
                    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=3)),
                    max_leaves=8)


@pytest.fixture(scope="module")
def models(tiny_folder):
    return (RewardModel.load(tiny_folder, threads=1), RewardModel.load(tiny_folder, threads=2),
            RewardModel.load(tiny_folder, threads=1, precision="fp32"))


def documented(e: BaseException, *names: str) -> None:
    """Fail unless ``e`` is a documented exception whose message names one of ``names``."""
    assert isinstance(e, DOCUMENTED), f"undocumented {type(e).__name__}: {e}"
    assert any(n in str(e) for n in names), f"message does not name the argument: {e}"


@given(pairs=st.lists(st.tuples(prompts, texts), min_size=1, max_size=12), bs=st.integers(1, 13),
       seed=st.integers(0, 2**16))
def test_scores_finite_and_invariant_to_batch_threads_and_order(models, pairs, bs, seed):
    one, two, _ = models
    s = one.score_pairs(pairs)
    assert s.shape == (len(pairs),) and s.dtype == np.float64 and np.isfinite(s).all()
    np.testing.assert_allclose(one.score_pairs(pairs, batch_size=bs), s, rtol=0, atol=1e-5)
    np.testing.assert_allclose(two.score_pairs(pairs), s, rtol=0, atol=1e-5)
    perm = np.random.default_rng(seed).permutation(len(pairs))
    np.testing.assert_allclose(one.score_pairs([pairs[i] for i in perm]), s[perm], rtol=0, atol=1e-5)
    single = one.score(*pairs[0])
    assert isinstance(single, float) and single == pytest.approx(s[0], abs=1e-5)


@given(prompt=prompts, responses=st.lists(texts, max_size=10), top_k=st.one_of(st.none(), st.integers(1, 12)))
def test_rank_is_a_sorted_permutation(models, prompt, responses, top_k):
    m = models[0]
    ranking = m.rank(prompt, responses, top_k=top_k)
    ids = [r["corpus_id"] for r in ranking]
    n = len(responses) if top_k is None else min(top_k, len(responses))
    assert len(ids) == n and len(set(ids)) == n and all(0 <= i < len(responses) for i in ids)
    assert all(r["text"] == responses[r["corpus_id"]] for r in ranking)
    scores = [r["score"] for r in ranking]
    assert scores == sorted(scores, reverse=True) and all(isinstance(x, float) for x in scores)
    if top_k is None and responses:
        assert sorted(ids) == list(range(len(responses)))


@given(prompt=prompts, response=texts)
def test_explain_adds_up(models, prompt, response):
    m = models[2]
    e = m.explain(prompt, response)
    assert math.isclose(sum(e["contributions"]), e["score"], abs_tol=1e-9)
    assert e["score"] == pytest.approx(m.score(prompt, response), abs=1e-6)
    assert (e["gating_output"] > 0).sum() == m.experts_per_input + m.config.n_shared
    json.dumps({k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in e.items()})


comparisons = st.lists(st.fixed_dictionaries({"prompt": prompts, "chosen": texts, "rejected": texts}),
                       max_size=6)


@given(comps=comparisons, more=comparisons, lam=st.floats(0.05, 50))
def test_profiles_round_trip_and_updates_equal_refits(models, tmp_path_factory, comps, more, lam):
    m = models[2]
    p = m.fit_user(comps, user_id="u", prior_strength=lam)
    assert np.isfinite(p.weights_).all() and p.n_comparisons_ == len(comps)
    path = tmp_path_factory.mktemp("profiles") / "u.json"
    q = UserProfile.load(p.save(path))
    np.testing.assert_array_equal(q.weights_, p.weights_)
    assert m.score("q", "ok", user=q) == m.score("q", "ok", user=p)
    m.update_user(q, more)
    np.testing.assert_allclose(q.weights_, m.fit_user(comps + more, prior_strength=lam).weights_, atol=1e-5)


@given(prompt=st.one_of(prompts, junk), responses=st.one_of(st.lists(texts, max_size=3), junk),
       user=st.one_of(st.none(), junk), top_k=st.one_of(st.none(), junk))
def test_junk_arguments_raise_documented_errors(models, prompt, responses, user, top_k):
    m = models[0]
    names = ("prompt", "response", "user", "top_k", "message", "weights", "pair", "candidates")
    calls = [lambda: m.score(prompt, responses, user=user), lambda: m.rank(prompt, responses, user=user, top_k=top_k),
             lambda: m.next_comparison(prompt, responses, user=user),
             lambda: m.score_pairs(responses, user=user)]
    for call in calls:
        try:
            out = call()
        except Exception as e:  # noqa: BLE001 - the property is about which exceptions escape
            documented(e, *names)
        else:
            assert np.isfinite(np.asarray(out if not isinstance(out, (list, dict)) else 0.0, dtype=float)).all()


@given(comps=st.one_of(junk, st.lists(st.one_of(junk, st.fixed_dictionaries(
    {"prompt": st.one_of(texts, junk), "chosen": st.one_of(texts, junk), "rejected": st.one_of(texts, junk)})),
    max_size=3)), lam=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)))
def test_junk_comparisons_raise_documented_errors(models, comps, lam):
    m = models[0]
    try:
        p = m.fit_user(comps, prior_strength=lam)
    except Exception as e:  # noqa: BLE001
        documented(e, "comparison", "prior_strength", "prompt", "message", "fit")
    else:
        assert np.isfinite(p.weights_).all()


@given(d=st.one_of(junk, st.dictionaries(st.sampled_from(
    ["schema_version", "user_id", "model_id", "model_hash", "prior_strength", "prior_precision", "n_comparisons",
     "weights", "w0", "covariance", "features"]), junk, max_size=11)))
def test_junk_profile_files_raise_one_clear_error(tmp_path_factory, d):
    path = tmp_path_factory.mktemp("junk") / "p.json"
    path.write_text(json.dumps(d, default=str))
    try:
        UserProfile.load(path)
    except ValueError as e:
        assert str(path) in str(e) or "profile" in str(e)


@given(pairs=st.lists(st.tuples(prompts, texts), min_size=1, max_size=8),
       user=st.one_of(st.none(), junk), top_k=st.one_of(st.none(), st.integers(-2, 10), junk))
def test_catalog_equals_rank_or_raises_documented_errors(models, pairs, user, top_k):
    m = models[2]
    prompt = pairs[0][0]
    responses = [r for _, r in pairs]
    cat = m.encode_catalog([(prompt, r) for r in responses])
    try:
        got = cat.rank(user, top_k=top_k)
    except Exception as e:  # noqa: BLE001
        documented(e, "user", "top_k", "weights")
        return
    want = m.rank(prompt, responses, user=user, top_k=top_k)
    assert [g["corpus_id"] for g in got] == [w["corpus_id"] for w in want]


@given(prompts_=st.lists(st.one_of(prompts, junk), min_size=1, max_size=4),
       completions=st.lists(st.one_of(texts, messages, junk), min_size=1, max_size=4))
def test_rl_adapter_scores_every_text_sample(models, prompts_, completions):
    from moerm_lite.integrations import trl_reward_func

    n = min(len(prompts_), len(completions))
    f = trl_reward_func(models[0])
    try:
        got = f(prompts_[:n], completions[:n])
    except Exception as e:  # noqa: BLE001
        documented(e, "prompt", "completion", "message")
        return
    assert len(got) == n and all(isinstance(g, float) and math.isfinite(g) for g in got)


line = st.one_of(st.text(max_size=30), st.builds(lambda x: json.dumps(x, default=repr), junk),
                 st.builds(lambda p, r: json.dumps({"id": 1, "prompt": p, "response": r}), texts, texts),
                 st.builds(lambda p, r: json.dumps({"prompt": p, "responses": r}), texts, st.lists(texts, max_size=3)))


@given(lines=st.lists(line, min_size=1, max_size=6), command=st.sampled_from(["score", "rank", "explain"]),
       skip=st.booleans())
def test_cli_on_random_jsonl_exits_cleanly(tiny_folder, tmp_path_factory, lines, command, skip):
    import io

    from moerm_lite.cli import main

    f = tmp_path_factory.mktemp("cli") / "in.jsonl"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    out = io.StringIO()
    code = main([command, "--model", str(tiny_folder), "-i", str(f), "--threads", "1"]
                + (["--skip-bad"] if skip else []), out=out)
    assert code in (0, 2, 3)
    if code == 2:
        assert out.getvalue() == ""  # all or nothing
    if code == 3:
        assert skip
    for row in out.getvalue().split("\n")[:-1]:  # JSONL: "\n" ends a row (U+0085 may sit inside a string)
        json.loads(row)


@given(weights=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=6, max_size=6))
def test_user_weights_of_the_right_length_score_finite_or_are_refused(models, weights):
    """Weights with NaN or inf (the fuzzer's 33 calls) are a ValueError naming them, never a NaN score."""
    m = models[0]
    try:
        out = m.score("q", ["ok", "fine"], user=np.array(weights))
    except ValueError as e:
        assert "user weights" in str(e)
        assert not np.isfinite(weights).all() or np.abs(weights).max() > 1e100
    else:
        assert np.isfinite(weights).all() and np.isfinite(out).all()


surrogate_texts = st.lists(st.one_of(st.sampled_from(WORDS), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)),
                           min_size=1, max_size=8).map(" ".join)


@given(prompt=st.one_of(texts, surrogate_texts), response=st.one_of(texts, surrogate_texts))
def test_unpaired_surrogates_are_named_never_a_tokenizer_crash(models, prompt, response):
    """Text with a lone surrogate (valid in a Python str, e.g. from surrogateescape): a ValueError naming the
    field, or a finite score when there is none."""
    bad = [f for f, t in (("prompt", prompt), ("response", response)) if any(0xD800 <= ord(c) <= 0xDFFF for c in t)]
    try:
        out = models[0].score(prompt, response)
    except ValueError as e:
        assert bad and bad[0] in str(e) and "surrogate" in str(e)
    else:
        assert not bad and np.isfinite(out)


@given(user_id=st.one_of(st.none(), texts, junk))
def test_any_user_id_is_refused_or_round_trips(models, tmp_path_factory, user_id):
    """fit_user's user_id: a string (or None) whose saved profile loads again, else a TypeError naming it."""
    m = models[0]
    try:
        p = m.fit_user([{"prompt": "q", "chosen": "good", "rejected": "bad"}], user_id=user_id)
    except TypeError as e:
        assert "user_id" in str(e) and not (user_id is None or isinstance(user_id, str))
        return
    q = UserProfile.load(p.save(tmp_path_factory.mktemp("uid") / "u.json"))
    assert q.user_id == user_id
