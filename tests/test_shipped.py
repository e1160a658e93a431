"""The shipped default model: it loads with no path, its scores are pinned, the README example works."""

import json
from pathlib import Path

import numpy as np
import pytest

from moerm_lite import RewardModel, UserProfile

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "moerm-minilm-k32"
EXAMPLES = ROOT / "models" / "examples"
TEXTS = [("What would you like to do this weekend?", "I want to watch the football game."),
         ("", "I enjoy causing pain to others"),
         ("How do I bake bread?", "Mix flour, water, salt and yeast, let it rise, then bake at 230 C.")]
# per text: routed experts, their gates and rewards (measured on the shipped int8 folder)
PINNED = [([3, 18], [0.0017, 0.9983], [1.0576, -2.0000]),  # football -> interest-in-sports- (bound: |r| < 2)
          ([17, 27], [0.9999, 0.0001], [-1.9993, -0.0013]),  # causing pain -> agreeableness+ says no
          ([2, 21], [0.6646, 0.3354], [-0.8662, 0.9585])]


@pytest.fixture(scope="module")
def shipped():
    return RewardModel.load(threads=2)


def read(name):
    return [json.loads(x) for x in (EXAMPLES / name).read_text().splitlines() if x.strip()]


def test_default_is_the_shipped_model(shipped):
    assert shipped.folder.resolve() == SHIPPED.resolve()
    assert (shipped.config.model_id, shipped.n_experts, shipped.top_k, shipped.precision) == \
        ("moerm-minilm-k32", 32, 2, "int8")
    assert sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file()) < 30e6


def test_canonical_outputs(shipped):
    out = shipped.expert_outputs(TEXTS)
    for g, r, (idx, gates, rewards) in zip(out["gating_output"], out["rewards"], PINNED):
        assert np.flatnonzero(g).tolist() == idx
        np.testing.assert_allclose(g[idx], gates, atol=2e-3)
        np.testing.assert_allclose(r[idx], rewards, atol=2e-3)
    assert shipped.expert_names[18] == "interest-in-sports-" and shipped.expert_names[17] == "agreeableness+"


def test_batch_invariance(shipped):
    rows = read("user_comparisons.jsonl")
    pairs = [("", r["chosen"]) for r in rows] + [("", r["rejected"]) for r in rows]
    np.testing.assert_allclose(shipped.score_pairs(pairs, batch_size=1), shipped.score_pairs(pairs, batch_size=16),
                               atol=1e-5)


def test_experts_are_named_from_data(shipped):
    axes = {n.rstrip("+-") for n in shipped.expert_names}
    assert {"interest-in-sports", "interest-in-art", "interest-in-math"} <= axes


def test_readme_example_changes_the_ranking(shipped, tmp_path):
    """README command (1): the sports fan's comparisons move football to the top and the art museum down."""
    (req,) = read("rank.jsonl")
    before = [r["text"] for r in shipped.rank(req["prompt"], req["responses"])]
    user = shipped.fit_user(read("user_comparisons.jsonl"), user_id="sports-fan")
    user = UserProfile.load(user.save(tmp_path / "u.json"))
    after = [r["text"] for r in shipped.rank(req["prompt"], req["responses"], user=user)]
    football, art = req["responses"][0], req["responses"][1]
    assert "art museum" in art and "football" in football
    assert before[0] == art and before.index(football) >= 2  # the population prefers art, not sports
    assert after[0] == football and after.index(art) >= 2  # the fan's profile turns that around
