"""The evaluation's few-shot fit is the runtime's fit."""

import numpy as np
import pytest

from moerm_build import data
from moerm_build.evaluate.metrics import RuntimeFeaturizer, records_phi, few_shot, pair_accuracy
from moerm_lite import fit_map
from tests.conftest import DATA


def test_evaluation_fit_equals_runtime_fit(tiny_folder, tiny_fp32):
    comps = [{"prompt": "why", "chosen": "the cat is good", "rejected": "rude and bad"},
             {"prompt": "", "chosen": "thanks for the help", "rejected": "no"},
             {"prompt": "how", "chosen": "fast and safe", "rejected": "slow danger"}]
    fz = RuntimeFeaturizer(tiny_folder, precision="fp32", threads=1)
    w_eval, _ = fit_map(records_phi(fz, comps), fz.w0, 0.7)
    w_run = tiny_fp32.fit_user(comps, prior_strength=0.7).weights_
    np.testing.assert_allclose(w_eval, w_run, atol=1e-6)


def test_few_shot_on_planted_features():
    """With features that are exactly the persona components, fitting recovers every user."""
    rng = np.random.default_rng(0)
    st = data.Statements(text=[f"s{i}" for i in range(400)], axis=rng.integers(0, 4, 400),
                      y=rng.choice([-1, 1], 400), axes=["a", "b", "c", "d"])
    phi = st.components()  # (S, A)
    users = []
    for _ in range(20):
        w = data.sample_user(rng, 4)
        pool = np.arange(400)
        users.append(data.BenchUser(w, data.sample_comparisons(rng, w, st, pool, 50),
                                 data.sample_comparisons(rng, w, st, pool, 100)))
    res = few_shot(phi, users, np.zeros(4), 1.0, shots=(50,))
    assert res["50"] > 0.97 and abs(res["global"] - 0.5) < 1e-9  # w0 = 0 scores every pair as a tie
    assert pair_accuracy(np.array([1.0, -1.0, 0.0])) == 0.5


@pytest.mark.skipif(not (DATA / "persona").is_dir(), reason="../shared/data not present")
def test_active_curve_on_persona_statements_with_perfect_features():
    """Features = the true persona components (plus noise): both strategies learn the users."""
    from moerm_build.evaluate.active_eval import active_curve

    st = data.load_persona()
    phi = st.components() + 0.05 * np.random.default_rng(0).normal(size=(len(st.text), len(st.axes)))
    res = active_curve(phi, st, np.zeros(len(st.axes)), 1.0, n_users=8, pool_size=60, rounds=10)
    assert res["N"] == list(range(1, 11)) and len(res["active"]) == len(res["random"]) == 10
    assert res["active"][9] > 0.9 and res["random"][9] > 0.75
    assert res["active"][0] < res["active"][9]  # answers help
    assert abs(res["gain_at_10"] - (res["active"][9] - res["random"][9])) < 1e-3
