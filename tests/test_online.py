"""Online profile updates (== a batch fit on everything so far) and posterior uncertainty."""

import json

import numpy as np
import pytest

from moerm_lite import UserProfile
from moerm_lite.cli import main
from tests.test_personalize import planted

COMPS = [{"prompt": "why", "chosen": "the cat is kind and good", "rejected": "it is rude and bad"},
         {"prompt": "", "chosen": "thanks for the question", "rejected": "no"},
         {"prompt": "how", "chosen": "help and love", "rejected": "harm and hate"},
         {"prompt": "what", "chosen": "math and science", "rejected": "sport and risk"},
         {"prompt": "", "chosen": "please", "rejected": "mean rude awful"}]


def test_streaming_one_at_a_time_equals_batch_fit(tmp_path):
    _, phi = planted(K=8, N=40, seed=2)
    w0 = np.linspace(-0.5, 0.5, 8)
    batch = UserProfile(prior_strength=2.0).fit(phi, w0)
    stream = UserProfile(prior_strength=2.0, model_hash="0" * 16).fit(phi[:0], w0)
    for i in range(len(phi)):  # through the file each time: the JSON round trip must be exact
        stream.partial_fit(phi[i]).save(tmp_path / "p.json")
        stream = UserProfile.load(tmp_path / "p.json")
    np.testing.assert_allclose(stream.weights_, batch.weights_, atol=1e-6)
    np.testing.assert_allclose(stream.covariance_, batch.covariance_, atol=1e-6)
    assert stream.n_comparisons_ == 40
    # and the weights really moved with the data (an update that did nothing would fail here)
    assert np.abs(batch.weights_ - w0).max() > 0.1


def test_update_with_text_comparisons_equals_fit_on_all(tiny_fp32):
    full = tiny_fp32.fit_user(COMPS, user_id="u")
    p = tiny_fp32.fit_user(COMPS[:2], user_id="u")
    tiny_fp32.update_user(tiny_fp32.update_user(p, COMPS[2:4]), COMPS[4:])
    np.testing.assert_allclose(p.weights_, full.weights_, atol=1e-6)
    assert p.n_comparisons_ == 5
    q = tiny_fp32.fit_user(COMPS[:2], user_id="u")
    with pytest.warns(DeprecationWarning, match="update_user"):
        q.update(COMPS[2:], tiny_fp32)  # the old spelling still works
    np.testing.assert_allclose(q.weights_, full.weights_, atol=1e-6)


def test_update_refuses_other_model_and_v1_profiles(tiny_fp32, tiny_int8):
    p = tiny_fp32.fit_user(COMPS[:2])
    p.model_hash = "0" * 16
    with pytest.raises(ValueError, match="refit"):
        tiny_fp32.update_user(p, COMPS[2:])
    d = tiny_fp32.fit_user(COMPS[:2], residual_strength=None).to_dict()  # version 1 had no residual
    d["schema_version"], d["features"] = 1, None
    old = UserProfile.from_dict(d)
    assert tiny_fp32.score("why", "good", user=old) == pytest.approx(tiny_fp32.score("why", "good", user=d["weights"]))
    with pytest.raises(ValueError, match="cannot be updated"):
        tiny_fp32.update_user(old, COMPS[2:])
    with pytest.raises(ValueError, match="shape"):
        tiny_fp32.fit_user(COMPS[:2]).partial_fit(np.zeros((1, 3)))


def test_cli_fit_update_equals_fit_on_all(tiny_folder, tmp_path, capsys):
    for name, rows in (("a.jsonl", COMPS[:3]), ("b.jsonl", COMPS[3:]), ("all.jsonl", COMPS)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = ["--model", str(tiny_folder), "--threads", "1"]
    assert main(["fit", str(tmp_path / "a.jsonl"), "-o", str(tmp_path / "p.json"), *m]) == 0
    assert main(["fit", str(tmp_path / "b.jsonl"), "--update", str(tmp_path / "p.json"), *m]) == 0
    assert main(["fit", str(tmp_path / "all.jsonl"), "-o", str(tmp_path / "all.json"), *m]) == 0
    a, b = UserProfile.load(tmp_path / "p.json"), UserProfile.load(tmp_path / "all.json")
    np.testing.assert_allclose(a.weights_, b.weights_, atol=1e-6)
    assert a.n_comparisons_ == 5


def test_uncertainty_is_the_score_difference_variance():
    _, phi = planted(K=8, N=30, seed=4)
    p = UserProfile(prior_strength=3.0).fit(phi[:0], np.zeros(8))
    x = np.random.default_rng(0).normal(size=(5, 8))
    np.testing.assert_allclose(p.uncertainty(x), (x**2).sum(1) / 3.0)  # the prior: I / lambda
    p.partial_fit(phi)
    np.testing.assert_allclose(p.uncertainty(x), np.einsum("nk,kl,nl->n", x, p.covariance_, x))
    assert (p.uncertainty(x) < (x**2).sum(1) / 3.0).all()  # data only ever shrinks it
    assert p.uncertainty(np.zeros(8)) == 0.0
    with pytest.raises(ValueError, match="n_experts"):
        p.uncertainty(np.zeros(3))
