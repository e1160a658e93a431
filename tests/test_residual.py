"""The residual over pair features (fit_user's default): fitted on what the expert weights leave, moved only
by many comparisons, stored exactly, applied by every scoring path that can and refused by the others."""

import io
import json

import numpy as np
import pytest
from scipy.special import expit, ndtr

from moerm_lite import Catalog, RewardModel, UserProfile
from moerm_lite.cli import main
from moerm_lite.features import feature_dim
from moerm_lite.head import combine
from moerm_lite.personalize import decode_array, encode_array, fit_residual, penalized_logistic
from tests.test_online import COMPS


def planted_residual(N, F=20, seed=0):
    """Comparison differences X (N, F) labelled by a taste v_true the experts (offset 0) cannot see."""
    rng = np.random.default_rng(seed)
    v_true = rng.normal(size=F) * 1.5
    X = rng.normal(size=(N, F))
    y = rng.random(N) < expit(X @ v_true)
    return v_true, np.where(y[:, None], X, -X)


def test_residual_recovers_a_taste_only_many_comparisons_show():
    v_true, X = planted_residual(2000)
    Xtest = planted_residual(2000, seed=1)[1]  # other comparisons of the same user
    big = fit_residual(X, np.zeros(len(X)), 30.0)
    assert big @ v_true / np.linalg.norm(big) / np.linalg.norm(v_true) > 0.95
    small = fit_residual(X[:5], np.zeros(5), 30.0)
    # five comparisons barely move it: its scores stay small next to the many-comparison fit's
    assert np.abs(Xtest @ small).mean() < 0.1 * np.abs(Xtest @ big).mean()
    np.testing.assert_array_equal(fit_residual(X[:0], np.zeros(0), 30.0), np.zeros(20))


def test_residual_is_the_optimum_and_only_explains_what_the_offset_leaves():
    v_true, X = planted_residual(300, seed=2)
    offset = 3.0 * (X @ v_true)  # the experts already order every comparison, confidently
    v = fit_residual(X, offset, 30.0)
    free = fit_residual(X, np.zeros(len(X)), 30.0)
    assert np.linalg.norm(v) < 0.4 * np.linalg.norm(free)
    # the gradient of the documented objective vanishes there (in the scaled units the penalty uses)
    rms = np.sqrt((X ** 2).mean(0))
    scale = np.maximum(rms, 1e-3 * np.median(rms)) + 1e-6
    Z, u = X / scale, v * scale
    grad = -(expit(-(offset + Z @ u)) @ Z) + 2 * 30.0 * u
    assert np.abs(grad).max() < 1e-5
    with pytest.raises(ValueError, match="residual_strength"):
        fit_residual(X, offset, 0.0)
    with pytest.raises(ValueError, match="NaN"):
        fit_residual(np.full((2, 3), np.nan), np.zeros(2), 1.0)


@pytest.mark.parametrize("N", [5, 20, 21, 400])  # Newton in the row span (N <= F = 20), L-BFGS above
def test_penalized_logistic_reaches_the_optimum_on_both_paths(N):
    """The one penalised logistic fit (the residual's and the build side's probes): zero gradient, and the
    same answer from either solver where both apply."""
    rng = np.random.default_rng(N)
    Z, offset = rng.normal(size=(N, 20)), rng.normal(size=N)
    u = penalized_logistic(Z, offset, 0.3)
    grad = -(expit(-(offset + Z @ u)) @ Z) + 2 * 0.3 * u
    assert np.abs(grad).max() < 1e-5  # of a loss summed over N comparisons
    if N <= 20:  # the row-span Newton agrees with a plain Newton on all F coefficients
        w = np.zeros(20)
        for _ in range(50):
            s = expit(offset + Z @ w)
            g = -((1 - s) @ Z) + 0.6 * w
            H = (Z * (s * (1 - s))[:, None]).T @ Z + 0.6 * np.eye(20)
            w -= np.linalg.solve(H, g)
        np.testing.assert_allclose(u, w, atol=1e-8)
    np.testing.assert_array_equal(penalized_logistic(Z[:0], offset[:0], 0.3), np.zeros(20))


def test_float16_array_codec_round_trips_and_refuses_garbage():
    a = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float16).astype(np.float64)
    np.testing.assert_array_equal(decode_array(json.loads(json.dumps(encode_array(a))), "x"), a)
    for bad in (None, {"dtype": "float32"}, {"dtype": "float16", "shape": [2], "base64": "!!"},
                {"dtype": "float16", "shape": [7], "base64": encode_array(a)["base64"]}):
        with pytest.raises(ValueError, match="pair_features"):
            decode_array(bad, "pair_features")


def test_profile_with_residual_updates_like_a_fit_on_all_and_round_trips(tmp_path):
    _, X = planted_residual(60, seed=3)
    phi = np.random.default_rng(4).normal(size=(60, 4))
    w0 = np.array([0.5, -0.2, 0.0, 1.0])
    full = UserProfile(prior_strength=1.0, model_hash="0" * 16, residual_strength=30.0).fit(phi, w0, X)
    part = UserProfile(prior_strength=1.0, model_hash="0" * 16, residual_strength=30.0)
    part.fit(phi[:20], w0, X[:20])
    part.save(tmp_path / "p.json")
    part = UserProfile.load(tmp_path / "p.json").partial_fit(phi[20:], X[20:])
    np.testing.assert_allclose(part.residual_, full.residual_, atol=1e-6)
    np.testing.assert_allclose(part.weights_, full.weights_, atol=1e-6)
    assert np.abs(full.residual_).max() > 0.01  # it did learn something
    back = UserProfile.load(full.save(tmp_path / "f.json"))
    np.testing.assert_array_equal(back.residual_, full.residual_)
    assert back.residual_strength == 30.0 and back.pair_features_.shape == (60, 20)
    with pytest.raises(ValueError, match="pair_features"):
        UserProfile(residual_strength=30.0).fit(phi, w0)  # a residual needs the pair features
    with pytest.raises(ValueError, match="pair_features"):
        full.partial_fit(phi[:1])


@pytest.mark.parametrize("choice", ["auto", "evidence"])
def test_residual_chosen_per_user_refit_on_updates_and_round_trips(tmp_path, choice):
    """residual_strength=choice (leave-one-out) and "evidence": a taste the experts see gets no or a weak
    residual (none is stored as zeros), one only the pair features show gets a strong one; an update chooses
    again on all comparisons, exactly as one fit would."""
    rng = np.random.default_rng(7)
    _, X = planted_residual(80, seed=8)  # labelled by the pair features alone
    phi = rng.normal(size=(80, 4)) * np.sign(rng.normal(size=(80, 1)))  # unrelated to the labels
    w0 = np.zeros(4)
    outside = UserProfile(prior_strength=1.0, model_hash="0" * 16, residual_strength=choice).fit(phi, w0, X)
    assert outside.residual_chosen_ is not None and outside.residual_chosen_ <= 10
    assert np.abs(outside.residual_).max() > 0.01
    lab = np.where(rng.random(80) < expit(4 * phi[:, 0]), 1, -1)[:, None]  # labelled by expert 0 alone
    noise = rng.normal(size=(80, 20)) * lab
    inside = UserProfile(prior_strength=1.0, model_hash="0" * 16, residual_strength=choice).fit(phi * lab, w0, noise)
    assert inside.residual_chosen_ is None or inside.residual_chosen_ >= 30
    assert np.abs(noise @ inside.residual_).mean() < 0.1 * np.abs(phi * lab @ inside.weights_).mean()
    none = UserProfile(prior_strength=1.0, model_hash="0" * 16, residual_strength=choice).fit(
        np.zeros((0, 4)), w0, np.zeros((0, 20)))
    assert none.residual_chosen_ is None and not none.residual_.any()  # no comparisons: no residual
    part = UserProfile(prior_strength=1.0, model_hash="0" * 16, residual_strength=choice).fit(phi[:30], w0, X[:30])
    part = UserProfile.load(part.save(tmp_path / "p.json")).partial_fit(phi[30:], X[30:])
    assert part.residual_chosen_ == outside.residual_chosen_ and part.residual_strength == choice
    np.testing.assert_allclose(part.residual_, outside.residual_, atol=1e-6)
    back = UserProfile.load(inside.save(tmp_path / "i.json"))
    assert back.residual_strength == choice and back.residual_chosen_ == inside.residual_chosen_
    assert back.pair_features_.shape == (80, 20)
    with pytest.raises(ValueError, match="residual_strength must be None, 'auto', 'evidence' or a positive"):
        UserProfile(residual_strength="sometimes")


@pytest.mark.parametrize("edit, match", [
    ({"residual_strength": None}, "both be set"),
    ({"residual": [float("nan")] * 20}, "finite"),
    ({"pair_features": {"dtype": "float16", "shape": [3, 20], "base64": ""}}, "pair_features"),
])
def test_malformed_residual_profiles_are_refused(edit, match):
    _, X = planted_residual(5, seed=5)
    p = UserProfile(model_hash="0" * 16, residual_strength=30.0).fit(np.zeros((5, 2)), np.zeros(2), X)
    d = p.to_dict()
    with pytest.raises(ValueError, match=match):
        UserProfile.from_dict({**d, **edit})


def test_model_scores_with_the_residual_everywhere_it_can(tiny_fp32, tmp_path):
    m = tiny_fp32
    plain = m.fit_user(COMPS, residual_strength=None)  # the expert weights alone
    user = m.fit_user(COMPS * 20, residual_strength=1.0)  # many repeats: the residual moves
    assert user.residual_.shape == (feature_dim(m.config.hidden_size),)
    assert plain.residual_ is None and user.n_comparisons_ == 100
    pairs = [("why", "the cat is kind"), ("", "no"), ("how", "harm and hate")]
    out = m.expert_outputs(pairs, with_features=True)
    np.testing.assert_array_equal(out["features"], m.pair_features(pairs)[0])
    residual = out["features"].astype(float) @ user.residual_  # (3,)
    want = combine(out["gating_output"], out["rewards"], user.weights_) + residual
    np.testing.assert_allclose(m.score_pairs(pairs, user=user), want, rtol=1e-9, atol=1e-9)
    assert np.abs(residual).max() > 1e-3  # the residual is not a no-op
    e = m.explain(*pairs[0], user=user)
    assert e["score"] == pytest.approx(float(e["contributions"].sum()) + e["residual"])
    assert e["score"] == pytest.approx(want[0])
    assert m.explain(*pairs[0], user=plain)["residual"] == 0.0
    assert [r["corpus_id"] for r in m.rank("why", [p[1] for p in pairs], user=user)] == list(
        np.argsort(-m.score_pairs([("why", p[1]) for p in pairs], user=user), kind="stable"))
    # a catalog encoded with pair features ranks it as rank() does, and keeps them on disk; one without
    # them, and the paths that score from expert outputs alone, refuse it by name rather than drop it
    cat = m.encode_catalog(pairs, with_features=True)
    np.testing.assert_allclose(cat.scores(user), want, rtol=1e-9, atol=1e-9)
    back = Catalog.load(cat.save(tmp_path / "c.npz"))
    assert [r["id"] for r in back.rank(user)] == [r["id"] for r in cat.rank(user)]
    np.testing.assert_array_equal(back.pair_features, cat.pair_features)
    with pytest.raises(ValueError, match="encoded without them"):
        m.encode_catalog(pairs, with_features=False).rank(user)
    # active questions predict the answer from the whole score, residual included
    q = m.next_comparison("why", [p[1] for p in pairs], user=user)
    i, j = q["pair"]
    s = m.score_pairs([("why", p[1]) for p in pairs], user=user)
    k2 = np.pi / 8
    assert q["p_first"] == pytest.approx(ndtr(np.sqrt(k2) * (s[i] - s[j]) / np.sqrt(1 + k2 * q["variance"])),
                                         rel=1e-6)
    with pytest.raises(ValueError, match="residual"):
        m.user_weights(user)
    # a profile without a residual scores exactly as before
    np.testing.assert_array_equal(m.score_pairs(pairs, user=plain),
                                  combine(out["gating_output"], out["rewards"], plain.weights_))


def test_a_user_gets_the_folders_recommended_residual_by_default(tiny_fp32, tiny_folder, tmp_path):
    m = tiny_fp32
    rho = m.config.recommended_residual_strength
    default, fixed = m.fit_user(COMPS), m.fit_user(COMPS, residual_strength=rho)
    assert default.residual_strength == rho
    np.testing.assert_array_equal(default.residual_, fixed.residual_)
    np.testing.assert_array_equal(default.weights_, fixed.weights_)
    assert np.abs(default.residual_).max() > 0  # fitted, not a placeholder
    # None: the expert weights alone, the same weights (the residual is fitted after them)
    alone = m.fit_user(COMPS, residual_strength=None)
    assert alone.residual_ is None and alone.residual_strength is None
    np.testing.assert_array_equal(alone.weights_, default.weights_)
    # the CLI the same: no flag is the recommended strength, "none" none
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in COMPS))
    args = ["--model", str(tiny_folder), "--threads", "1"]
    assert main(["fit", str(tmp_path / "c.jsonl"), "-o", str(tmp_path / "d.json"), *args]) == 0
    assert main(["fit", str(tmp_path / "c.jsonl"), "-o", str(tmp_path / "n.json"), "--residual-strength", "none",
                 *args]) == 0
    assert UserProfile.load(tmp_path / "d.json").residual_strength == rho
    assert UserProfile.load(tmp_path / "n.json").residual_ is None


def test_describe_says_how_much_the_residual_carries():
    """A taste only the pair features show leaves much of the score differences to the residual; one an
    expert shows leaves it little; both in plain words, with the share."""
    rng = np.random.default_rng(7)
    _, X = planted_residual(80, seed=8)  # labelled by the pair features alone
    phi = rng.normal(size=(80, 4)) * np.sign(rng.normal(size=(80, 1)))  # unrelated to the labels
    outside = UserProfile(prior_strength=1.0, model_hash="0" * 16, residual_strength=30.0).fit(phi, np.zeros(4), X)
    lab = np.where(rng.random(80) < expit(4 * phi[:, 0]), 1, -1)[:, None]  # labelled by expert 0 alone
    inside = UserProfile(prior_strength=1.0, model_hash="0" * 16, residual_strength=30.0).fit(
        phi * lab, np.zeros(4), rng.normal(size=(80, 20)) * lab)
    out, ins = outside.describe(), inside.describe()
    assert out["residual_share"] > 0.3 and ins["residual_share"] < 0.15  # measured 0.52 and 0.06
    share = np.abs(outside.pair_features_ @ outside.residual_).mean()  # the comparisons as stored (float16)
    assert out["residual_share"] == pytest.approx(share / (share + np.abs(phi @ outside.weights_).mean()))
    assert f"makes {100 * out['residual_share']:.0f}% of its score differences" in out["text"]
    alone = UserProfile(prior_strength=1.0, model_hash="0" * 16).fit(phi, np.zeros(4))
    assert alone.residual_share() is None and alone.describe()["residual_share"] is None
    assert "residual" not in alone.describe()["text"]
    json.dumps(out)  # plain types


def test_update_user_with_residual_equals_fit_on_all(tiny_fp32):
    full = tiny_fp32.fit_user(COMPS, residual_strength=0.5)
    p = tiny_fp32.fit_user(COMPS[:2], residual_strength=0.5)
    tiny_fp32.update_user(p, COMPS[2:])
    np.testing.assert_allclose(p.residual_, full.residual_, atol=1e-6)
    np.testing.assert_allclose(p.weights_, full.weights_, atol=1e-6)


def test_cli_fits_updates_and_ranks_with_a_residual(tiny_folder, tmp_path):
    for name, rows in (("a.jsonl", COMPS[:3]), ("b.jsonl", COMPS[3:]), ("all.jsonl", COMPS)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = ["--model", str(tiny_folder), "--threads", "1"]
    r = ["--residual-strength", "0.5"]
    assert main(["fit", str(tmp_path / "a.jsonl"), "-o", str(tmp_path / "auto.json"), "--residual-strength", "auto",
                 *m]) == 0
    assert UserProfile.load(tmp_path / "auto.json").residual_strength == "auto"
    assert main(["fit", str(tmp_path / "all.jsonl"), "-o", str(tmp_path / "ev.json"), "--residual-strength",
                 "evidence", *m]) == 0
    assert UserProfile.load(tmp_path / "ev.json").residual_strength == "evidence"
    assert main(["fit", str(tmp_path / "a.jsonl"), "-o", str(tmp_path / "p.json"), *r, *m]) == 0
    assert main(["fit", str(tmp_path / "b.jsonl"), "--update", str(tmp_path / "p.json"), *m]) == 0
    assert main(["fit", str(tmp_path / "all.jsonl"), "-o", str(tmp_path / "all.json"), *r, *m]) == 0
    a, b = UserProfile.load(tmp_path / "p.json"), UserProfile.load(tmp_path / "all.json")
    np.testing.assert_allclose(a.residual_, b.residual_, atol=1e-6)
    request = {"prompt": "why", "responses": ["kind", "rude", "no"]}
    (tmp_path / "q.jsonl").write_text(json.dumps(request) + "\n")
    out = io.StringIO()
    assert main(["rank", "-i", str(tmp_path / "q.jsonl"), "--user", str(tmp_path / "p.json"), *m],
                out=out) == 0
    got = json.loads(out.getvalue())
    want = RewardModel.load(tiny_folder, threads=1).score_pairs([("why", t) for t in ("kind", "rude", "no")],
                                                                user=a)
    assert [r["score"] for r in got["ranking"]] == pytest.approx(sorted(want, reverse=True))


def test_cli_catalog_with_features_ranks_a_residual_profile(tiny_folder, tmp_path, capsys):
    m = ["--model", str(tiny_folder), "--threads", "1"]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in COMPS))
    profile = str(tmp_path / "p.json")
    assert main(["fit", str(tmp_path / "c.jsonl"), "-o", profile, "--residual-strength", "0.5", *m]) == 0
    items = [{"id": f"i{n}", "prompt": "why", "response": t} for n, t in enumerate(["kind", "rude", "no"])]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    assert main(["encode", "-i", str(tmp_path / "items.jsonl"), "-o", str(tmp_path / "f.npz"), *m]) == 0
    assert main(["encode", "-i", str(tmp_path / "items.jsonl"), "-o", str(tmp_path / "plain.npz"),
                 "--no-features", *m]) == 0
    out = io.StringIO()
    assert main(["rank", "--catalog", str(tmp_path / "f.npz"), "--user", profile], out=out) == 0
    got = {r["id"]: r["score"] for r in map(json.loads, out.getvalue().splitlines())}
    model = RewardModel.load(tiny_folder, threads=1)
    want = model.score_pairs([("why", r["response"]) for r in items], user=UserProfile.load(profile))
    assert [got[r["id"]] for r in items] == pytest.approx(list(want))
    capsys.readouterr()
    assert main(["rank", "--catalog", str(tmp_path / "plain.npz"), "--user", profile]) == 2
    assert "--no-features" in capsys.readouterr().err


def test_rl_adapters_batch_scorer_and_catalog_ranker_apply_a_residual(tiny_fp32, tiny_folder, tmp_path):
    from moerm_lite.batch import BatchScorer, CatalogRanker
    from moerm_lite.integrations import openrlhf_reward_func, trl_reward_func

    user = tiny_fp32.fit_user(COMPS * 20, user_id="u", residual_strength=1.0)
    plain = tiny_fp32.fit_user(COMPS, user_id="p", residual_strength=None)
    texts = ["kind", "rude", "no"]
    want = tiny_fp32.score_pairs([("why", t) for t in texts], user=user)  # (3,)
    assert trl_reward_func(tiny_fp32, user)(["why"] * 3, texts) == pytest.approx(list(want))
    got = openrlhf_reward_func(tiny_fp32, user)([f"why{t}" for t in texts], ["why"] * 3)["rewards"]
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-6)
    # per-row users: the residual row gets its residual, the others none
    per_row = trl_reward_func(tiny_fp32, profiles={"u": user, "p": plain})
    mixed = per_row(["why"] * 3, texts, user_id=["u", "p", "u"])
    want_p = tiny_fp32.score_pairs([("why", "rude")], user=plain)[0]
    assert mixed == pytest.approx([want[0], want_p, want[2]])
    user.save(tmp_path / "u.json")
    plain.save(tmp_path / "p.json")
    out = BatchScorer(tiny_folder, precision="fp32", profiles=tmp_path, breakdown=True)(
        {"prompt": ["why"] * 3, "response": texts, "user_id": ["u", "p", "u"]})
    np.testing.assert_allclose(out["score"], [want[0], want_p, want[2]], rtol=1e-6)
    np.testing.assert_allclose(out["contributions"].sum(1) + out["residual"], out["score"], rtol=1e-9)
    assert out["residual"][1] == 0.0 and out["residual"][0] != 0.0
    items = [("why", t) for t in texts]
    tiny_fp32.encode_catalog(items).save(tmp_path / "f.npz")
    top = CatalogRanker(tmp_path / "f.npz", profiles=tmp_path, top_k=3)({"user_id": ["u"]})
    np.testing.assert_allclose(top["top_scores"][0], np.sort(want)[::-1], rtol=1e-6)
    tiny_fp32.encode_catalog(items, with_features=False).save(tmp_path / "plain.npz")
    with pytest.raises(ValueError, match="encoded without them"):
        CatalogRanker(tmp_path / "plain.npz", profiles=tmp_path)({"user_id": ["u"]})


def test_block_prior_names_the_blocks_of_the_pair_features():
    from moerm_lite.features import block_prior, feature_blocks
    assert block_prior({"statistics": 3, "relevance": 0.1}, feature_blocks(4)) == (
        ("reply", 4, 1.0), ("relevance", 4, 0.1), ("statistics", 13, 3.0))
    assert block_prior({}, feature_blocks(4, "prompt_response_v2"))[-1] == ("statistics", 15, 1.0)
    with pytest.raises(ValueError, match="names blocks among"):
        block_prior({"tone": 2.0}, feature_blocks(4))
    with pytest.raises(ValueError, match="scale for 'reply' must be a positive finite number"):
        block_prior({"reply": 0.0}, feature_blocks(4))


def test_a_prior_scale_on_every_feature_is_a_weaker_penalty():
    """Prior scale c on every feature is the penalty rho / c^2: the same residual, the same evidence and the same
    leave-one-out choice (a known answer for the scale's direction: a larger scale frees the residual)."""
    from moerm_lite.personalize import choose_residual, log_evidence, residual_scale
    _, X = planted_residual(30, seed=3)
    offset = np.linspace(-1, 1, 30)
    c = np.full(20, 2.0)
    np.testing.assert_allclose(fit_residual(X, offset, 12.0, c), fit_residual(X, offset, 3.0), atol=1e-8)
    phi, w0 = np.ones((30, 2)) * 0.1, np.zeros(2)
    assert log_evidence(phi, X, w0, 1.0, None, 12.0, residual_scale(X, c)) == pytest.approx(
        log_evidence(phi, X, w0, 1.0, None, 3.0), abs=1e-9)
    for criterion in ("loo", "evidence"):
        scaled = choose_residual(phi, X, w0, 1.0, None, (None, 4.0, 40.0), criterion, w0, prior=c)[2]
        plain = choose_residual(phi, X, w0, 1.0, None, (None, 1.0, 10.0), criterion, w0)[2]
        assert list(scaled.values()) == pytest.approx(list(plain.values()), abs=1e-8)


def test_a_block_prior_finds_a_taste_that_lives_in_one_block():
    """A planted user who prefers what three of 40 features measure (a 'statistics' block among noise columns):
    a residual that may use that block freely predicts held-out comparisons better than one that spreads
    the same penalty over every feature, and one that favours another block does worse."""
    rng = np.random.default_rng(5)
    F, S = 40, 3
    X = rng.normal(size=(200, F))
    v_true = np.zeros(F)
    v_true[-S:] = [2.0, -1.5, 1.0]
    X = np.where((rng.random(200) < expit(X @ v_true))[:, None], X, -X)  # chosen minus rejected
    train, test = X[:20], X[20:]
    blocks = {"plain": None, "statistics": (("reply", 37, 1.0), ("statistics", 3, 5.0)),
              "other": (("reply", 37, 5.0), ("statistics", 3, 1.0))}
    acc = {}
    for name, prior in blocks.items():
        p = UserProfile(prior_strength=1.0, model_hash="0" * 16, residual_strength=3.0, residual_prior=prior)
        p.fit(np.zeros((20, 2)), np.zeros(2), train)
        acc[name] = float(np.mean(test @ p.residual_ > 0))
    assert acc["statistics"] > acc["plain"] + 0.05 > acc["other"] + 0.05, acc


def test_residual_prior_round_trips_refits_and_is_checked(tmp_path):
    """A profile keeps the prior it was fitted under (schema 6), an update refits under it, a profile of schema 5
    reads as fitted without one, and a prior that does not cover the residual is refused by name."""
    rng = np.random.default_rng(2)
    _, X = planted_residual(40, seed=4)
    phi = rng.normal(size=(40, 3))
    prior = (("reply", 8, 1.0), ("relevance", 8, 0.1), ("statistics", 4, 3.0))
    def profile(prior=None):
        return UserProfile(prior_strength=1.0, model_hash="0" * 16, residual_strength="evidence", residual_prior=prior)

    full = profile(prior).fit(phi, np.zeros(3), X)
    part = UserProfile.load(profile(prior).fit(phi[:15], np.zeros(3), X[:15]).save(tmp_path / "p.json"))
    assert part.residual_prior == prior
    part.partial_fit(phi[15:], X[15:])
    np.testing.assert_allclose(part.residual_, full.residual_, atol=1e-6)
    plain = profile().fit(phi, np.zeros(3), X)
    assert np.abs(plain.residual_ - full.residual_).max() > 1e-3  # the prior matters
    d = json.loads(full.to_json())
    assert d["schema_version"] == 6 and d["residual_prior"] == [list(b) for b in prior]
    old = {k: v for k, v in d.items() if k != "residual_prior"} | {"schema_version": 5}
    assert UserProfile.from_dict(old).residual_prior is None
    with pytest.raises(ValueError, match="residual_prior covers 21 features"):
        UserProfile.from_dict(d | {"residual_prior": [["reply", 9, 1.0], ["relevance", 8, 0.1], ["statistics", 4, 3.0]]})
    with pytest.raises(ValueError, match="malformed: residual_prior needs at least one block"):
        UserProfile.from_dict(d | {"residual_prior": [["reply", 20, -1.0]]})
    with pytest.raises(ValueError, match="residual_prior covers 20 features"):
        UserProfile(residual_strength=1.0, residual_prior=prior).fit(phi, np.zeros(3), np.zeros((40, 21)))


def test_fit_user_and_the_cli_take_a_residual_prior(tiny_folder, tmp_path):
    m = RewardModel.load(tiny_folder, threads=1)
    H, F = m.config.hidden_size, feature_dim(m.config.hidden_size, m.config.feature_layout)
    p = m.fit_user(COMPS, residual_strength=0.5, residual_prior={"statistics": 3.0})
    assert p.residual_prior == (("reply", H, 1.0), ("relevance", H, 1.0), ("statistics", F - 2 * H, 3.0))
    assert m.fit_user(COMPS, residual_strength=0.5).residual_prior is None  # the tiny folder recommends none
    with pytest.raises(ValueError, match="names blocks among"):
        m.fit_user(COMPS, residual_prior={"style": 2.0})
    with pytest.raises(ValueError, match="residual_prior must be 'recommended', None or a scale per block"):
        m.fit_user(COMPS, residual_prior="strong")
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in COMPS))
    args = ["fit", str(tmp_path / "c.jsonl"), "--model", str(tiny_folder), "--threads", "1",
            "--residual-strength", "0.5"]
    assert main([*args, "-o", str(tmp_path / "u.json"), "--residual-prior", "relevance=0.1,statistics=3"]) == 0
    assert UserProfile.load(tmp_path / "u.json").residual_prior[1:] == (("relevance", H, 0.1),
                                                                         ("statistics", F - 2 * H, 3.0))
    with pytest.raises(SystemExit):
        main([*args, "-o", str(tmp_path / "v.json"), "--residual-prior", "statistics:3"])
