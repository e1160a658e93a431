"""BatchScorer: what Ray Data's map_batches runs per worker; equal to score_pairs, with and without profiles."""

import numpy as np
import pytest

from moerm_lite import RewardModel
from moerm_lite.batch import BatchScorer
from tests.tiny import WORDS


def rows(n, seed=0, users=("ann", "bob", None)):
    rng = np.random.default_rng(seed)
    return [{"id": i, "prompt": "why " + " ".join(rng.choice(WORDS, 2)),
             "response": " ".join(rng.choice(WORDS, int(rng.integers(1, 8)))),
             "user_id": users[i % len(users)]} for i in range(n)]


@pytest.fixture(scope="module")
def profiles(tiny_folder, tmp_path_factory):
    m = RewardModel.load(tiny_folder, threads=1)
    d = tmp_path_factory.mktemp("profiles")
    for name, seed in (("ann", 1), ("bob", 2)):
        rs = rows(12, seed)
        m.fit_user([{"prompt": a["prompt"], "chosen": a["response"], "rejected": b["response"]}
                    for a, b in zip(rs[::2], rs[1::2])], user_id=name).save(d / f"{name}.json")
    return d


def columns(rs):
    return {k: np.array([r[k] for r in rs], dtype=object) for k in rs[0]}


def test_batch_scorer_equals_score_pairs(tiny_folder, profiles):
    from moerm_lite import UserProfile

    m = RewardModel.load(tiny_folder, threads=1)
    rs = rows(50)
    out = BatchScorer(tiny_folder, profiles=profiles, breakdown=True)(columns(rs))
    for name in ("ann", "bob", None):
        idx = [i for i, r in enumerate(rs) if r["user_id"] == name]
        user = UserProfile.load(profiles / f"{name}.json") if name else None
        want = m.score_pairs([(rs[i]["prompt"], rs[i]["response"]) for i in idx], user=user)
        np.testing.assert_allclose(out["score"][idx], want, rtol=0, atol=1e-9)
    # the profiles' residuals (fit_user's default) are the part of a score no expert carries
    np.testing.assert_allclose(out["contributions"].sum(1) + out["residual"], out["score"], atol=1e-12)
    assert np.abs(out["residual"]).max() > 0
    assert list(out["id"]) == list(range(50))  # input columns are kept


def test_unknown_users(tiny_folder, profiles):
    batch = columns(rows(4, users=("carol",)))
    with pytest.raises(KeyError, match="carol"):
        BatchScorer(tiny_folder, profiles=profiles)(batch)
    pop = BatchScorer(tiny_folder, profiles=profiles, unknown_user="population")(batch)
    plain = BatchScorer(tiny_folder)({k: v for k, v in batch.items() if k != "user_id"})
    np.testing.assert_allclose(pop["score"], plain["score"])


@pytest.mark.slow
def test_ray_data_scores_5000_rows(tiny_folder, profiles):
    ray = pytest.importorskip("ray")
    rs = rows(5000)
    m = RewardModel.load(tiny_folder, threads=1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ds = ray.data.from_items(rs)
        out = ds.map_batches(BatchScorer, fn_constructor_kwargs={"model": str(tiny_folder), "profiles": str(profiles)},
                             batch_size=500, compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1,
                             batch_format="numpy").take_all()
    finally:
        ray.shutdown()
    got = {r["id"]: r["score"] for r in out}
    assert sorted(got) == list(range(5000))
    from moerm_lite import UserProfile

    for name in ("ann", "bob", None):
        idx = [r["id"] for r in rs if r["user_id"] == name]
        user = UserProfile.load(profiles / f"{name}.json") if name else None
        want = m.score_pairs([(rs[i]["prompt"], rs[i]["response"]) for i in idx], user=user)
        np.testing.assert_allclose([got[i] for i in idx], want, rtol=0, atol=1e-6)


def test_catalog_ranker_ranks_each_rows_user(tiny_folder, profiles, tmp_path):
    from moerm_lite import UserProfile
    from moerm_lite.batch import CatalogRanker

    m = RewardModel.load(tiny_folder, threads=1)
    items = rows(30, seed=5)
    m.encode_catalog([(r["prompt"], r["response"]) for r in items], ids=[f"i{r['id']}" for r in items]).save(
        tmp_path / "feed.npz")
    users = np.array(["ann", "bob", None, float("nan")], dtype=object)  # NaN: how Ray passes an empty cell
    out = CatalogRanker(tmp_path / "feed.npz", profiles=profiles, top_k=5)({"user_id": users})
    assert out["top_ids"].shape == (4,) and out["top_scores"].shape == (4, 5)
    for row, u in enumerate(users):
        user = UserProfile.load(profiles / f"{u}.json") if isinstance(u, str) else None
        ranking = m.encode_catalog([(r["prompt"], r["response"]) for r in items]).rank(user, top_k=5)
        assert list(out["top_ids"][row]) == [f"i{t['corpus_id']}" for t in ranking]
        np.testing.assert_allclose(out["top_scores"][row], [t["score"] for t in ranking], atol=1e-12)
    with pytest.raises(KeyError, match="carol"):
        CatalogRanker(tmp_path / "feed.npz", profiles=profiles)({"user_id": np.array(["carol"], dtype=object)})
