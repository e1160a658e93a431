"""The shipped default model: it loads with no path, its scores are pinned and mean something on real
replies (the sanity suite), and the README's command (1) does what the README says."""

import json
from pathlib import Path

import numpy as np
import pytest

from moerm_lite import RewardModel, UserProfile

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "moerm-minilm"
EXAMPLES = ROOT / "models" / "examples"
SANITY = Path(__file__).resolve().parent / "data" / "sanity.jsonl"
KINDS = ("offtopic", "nonanswer", "dismissive", "truncated")
TEXTS = [("What would you like to do this weekend?", "I want to watch the football game."),
         ("", "I enjoy causing pain to others"),
         ("How do I bake bread?", "Mix flour, water, salt and yeast, let it rise, then bake at 230 C.")]
SHARED = list(range(34, 53))  # the 19 shared experts: every input, gate 1 (the last 9: the read-outs)
# per text: active experts, their gates and rewards (measured on the shipped int8 folder)
PINNED = [([28, 33] + SHARED, [0.0, 1.0] + [1.0] * 19,  # football -> "chit-chat replies" (one gate ~0)
           [1.3519, -0.6318, -1.1885, 0.0869, -1.5801, 0.8345, 0.7526, 1.1713, 1.3997, -1.1216, -0.6885, 0.2203,
            0.2845,  # the helpfulness read-out, then the attribute read-outs: a short reply, no "you", formal
            -1.2365, -0.1149, -0.8179, -0.0904, -0.1643, -0.639, -0.0329, 1.2291]),
          ([4, 32] + SHARED, [0.0, 1.0] + [1.0] * 19,  # causing pain -> "agreeableness (for)" says no
           [-0.2894, -1.9918, -0.2648, 0.1658, 0.1314, 0.1377, -0.1537, 0.1967, 0.2187, -0.3212, -0.0428, -0.0439]
           + [0.0] * 9),  # no prompt: the read-outs are silent
          ([0, 16] + SHARED, [0.0, 1.0] + [1.0] * 19,  # bread -> "assistant conversations (HH-RLHF helpful)"
           [-0.0291, 1.799, -1.505, 0.2783, -1.2024, 1.0007, 0.5097, 0.8334, 1.0625, -1.0801, -0.5537, 0.8795,
            0.8121, -0.7426, 0.1307, -0.5966, -0.8788, 0.645, -0.6248, 0.1601, 0.4905])]


@pytest.fixture(scope="module")
def shipped():
    return RewardModel.load(threads=2)


def read(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def test_default_is_the_shipped_model(shipped):
    assert shipped.folder.resolve() == SHIPPED.resolve()
    assert (shipped.config.model_id, shipped.precision) == ("moerm-minilm", "int8")
    assert sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file()) < 35e6
    assert not any(n.startswith("unused") for n in shipped.expert_names)  # unused experts are pruned


def test_canonical_outputs(shipped):
    out = shipped.expert_outputs(TEXTS)
    assert shipped.expert_names[32] == "agreeableness (for)" and shipped.expert_names[33].startswith("chit-chat")
    for g, r, (idx, gates, rewards) in zip(out["gating_output"], out["rewards"], PINNED):
        assert np.flatnonzero(g).tolist() == idx
        np.testing.assert_allclose(g[idx], gates, atol=2e-3)
        np.testing.assert_allclose(r[idx], rewards, atol=2e-3)


def test_batch_invariance(shipped):
    rows = read(EXAMPLES / "user_comparisons.jsonl")
    pairs = [(r["prompt"], r["chosen"]) for r in rows] + [(r["prompt"], r["rejected"]) for r in rows]
    np.testing.assert_allclose(shipped.score_pairs(pairs, batch_size=1), shipped.score_pairs(pairs, batch_size=16),
                               atol=1e-5)


def test_experts_are_named_in_words(shipped):
    names = set(shipped.expert_names)
    assert {"interest in sports", "interest in art", "interest in math"} <= {n.split(" (")[0] for n in names}
    shared = shipped.expert_names[shipped.n_experts - shipped.config.n_shared:]
    assert any("replies" in n for n in shared)  # the shared experts say what form they reward
    assert shared[-9:] == ["helpful, on-topic answers", "longer replies", "lists and markdown",  # the read-outs
                           "harder reading level", "enthusiastic tone", "hedged, cautious wording",
                           "speaking to the reader", "code", "formal wording"]
    assert shipped.w0[-8:].tolist() == [0.0] * 8  # the attribute read-outs: only a user's weights use them


@pytest.mark.parametrize("kind", KINDS)
def test_sanity_suite_real_answer_wins(shipped, kind):
    """Our own 20 questions and answers (never in any training set): the real answer beats a worse reply in
    at least 18 of 20 (the model card reports the full held-out suite; the previous model lost half)."""
    rows = read(SANITY)
    good = shipped.score_pairs([(r["prompt"], r["answer"]) for r in rows])
    bad = shipped.score_pairs([(r["prompt"], r[kind]) for r in rows])
    losers = [r["prompt"] for r, g, b in zip(rows, good, bad) if g <= b]
    assert len(losers) <= 2, f"{kind}: the real answer lost on {losers}"


def test_readme_example_changes_the_ranking(shipped, tmp_path):
    """README command (1): real answers first; a user who prefers short answers moves the one-liner up."""
    (req,) = read(EXAMPLES / "rank.jsonl")
    short, detailed, nonanswer, offtopic, dismissive = req["responses"]
    before = [r["text"] for r in shipped.rank(req["prompt"], req["responses"])]
    assert before[:2] == [detailed, short]  # both real answers above "I don't know.", off-topic, dismissive
    comps = read(EXAMPLES / "user_comparisons.jsonl")
    user = UserProfile.load(shipped.fit_user(comps, user_id="concise").save(tmp_path / "u.json"))
    after = [r["text"] for r in shipped.rank(req["prompt"], req["responses"], user=user)]
    assert after[0] == short  # the default prior: length is all this user showed, so short non-answers pass
    assert after.index(detailed) > max(after.index(nonanswer), after.index(dismissive))  # the long answer
    # a stronger prior on the expert weights alone keeps quality (with the default residual chosen by evidence,
    # the residual would take up the length signal the weights are kept from)
    strong = shipped.fit_user(comps, prior_strength=10.0, residual_strength=None)
    assert [r["text"] for r in shipped.rank(req["prompt"], req["responses"], user=strong)][:2] == [short, detailed]
    guarded = shipped.rank(req["prompt"], req["responses"], user=user, population_guard=0.9)  # the README's last
    assert [r["text"] for r in guarded][:2] == [short, detailed]
    assert [r["guarded"] for r in guarded] == [False, False, True, True, True]


def test_a_user_who_prefers_short_replies_is_described_as_such(shipped):
    """describe_user (and `moerm-lite describe`): the README's concise user disfavours the length experts."""
    comps = read(EXAMPLES / "user_comparisons.jsonl")
    d = shipped.describe_user(shipped.fit_user(comps, user_id="concise"))
    assert d["n_comparisons"] == len(comps) and d["disfavours"][0]["name"] == "longer replies"
    assert all("longer" in g["name"] for g in d["disfavours"]) and all("longer" not in g["name"] for g in d["favours"])
    assert "Disfavours longer replies" in d["text"] and f"Fitted on {len(comps)} comparisons" in d["text"]
    json.dumps(d)  # plain types
    plain = shipped.describe_user(shipped.fit_user([]))
    assert plain["favours"] == plain["disfavours"] == [] and "No clear difference" in plain["text"]


def test_max_length_beyond_the_backbone_is_caught_at_load(tmp_path):
    """A config whose max_length exceeds the backbone's position table (MiniLM: 512) fails at load,
    named, instead of at the first long text."""
    import shutil

    from moerm_lite import ModelFolderError
    from moerm_lite.folder import write_manifest

    folder = tmp_path / "m"
    shutil.copytree(SHIPPED, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["backbone"]["max_length"] = 600
    (folder / "config.json").write_text(json.dumps(cfg))
    write_manifest(folder)
    with pytest.raises(ModelFolderError, match="cannot embed 600 tokens"):
        RewardModel.load(folder, threads=1)


# Today's level of the shipped model on the fixed family set below (66 everyday answers, held-out phrasings),
# less a margin of about two standard errors (0.95 at most): a regression check. Where it is under 95 the
# issue's target is not met (the model card's held-out table has the full numbers). The echo is this model's
# weakest family: 0.21, where the model before it (frozen encoder) had 0.42 (docs/decisions/bad-replies.md,
# "Shipped: the noise + empty replies encoder with the request gate").
FAMILY_FLOORS = {"word_shuffle": 0.95, "repetition": 0.85, "echo": 0.11, "terse": 0.92, "generic": 0.95,
                 "refusal": 0.95, "nonanswer": 0.95, "dismissive": 0.95, "offtopic": 0.81, "neighbour": 0.79,
                 "truncation": 0.95, "negation": 0.70, "entity_swap": 0.67, "padding": 0.77, "mixed_language": 0.85}


def test_fixed_degradation_families_on_everyday_answers(shipped):
    """Every degradation family (moerm_build/data/degrade.py, held-out phrasings) made from the everyday set's answers:
    the share the real answer wins stays at or above today's floor."""
    from moerm_build.data.degrade import degradation_records
    from moerm_build.evaluate.robustness import load_everyday

    rows = load_everyday()
    recs = degradation_records([r["prompt"] for r in rows], [r["answer"] for r in rows], split="test", seed=0)
    good = shipped.score_pairs([(r["prompt"], r["chosen"]) for r in recs])
    bad = shipped.score_pairs([(r["prompt"], r["rejected"]) for r in recs])
    fam = np.array([r["source"].split(":")[1] for r in recs])
    assert set(fam) == set(FAMILY_FLOORS)  # sentence order needs answers of several sentences
    for f, floor in FAMILY_FLOORS.items():
        won = float(np.mean(good[fam == f] > bad[fam == f]))
        assert won >= floor, f"{f}: the real answer won {won:.3f} of {int((fam == f).sum())} pairs (< {floor})"


def test_everyday_requests_meet_the_target(shipped):
    """The everyday set (evaluation only) against terse, generic, dismissive and refusal replies: the answer
    wins >= 95% of pairs and ranks first for >= 90% of the requests (the issue's targets)."""
    from moerm_build.evaluate.robustness import everyday_records

    recs = everyday_records()
    won = shipped.score_pairs([(r["prompt"], r["chosen"]) for r in recs]) > shipped.score_pairs(
        [(r["prompt"], r["rejected"]) for r in recs])
    prompts = [r["prompt"] for r in recs]
    first = [all(w for w, q in zip(won, prompts) if q == p) for p in dict.fromkeys(prompts)]
    assert won.mean() >= 0.95 and np.mean(first) >= 0.90, (won.mean(), np.mean(first))


def test_the_request_gate_keeps_the_red_team_experts_off_everyday_requests(shipped, tmp_path):
    """The experts HH-RLHF harmless's red-team requests route to learned that "No." is the better reply to a
    harmful request: without the request gate they put "No." above a real answer to an everyday request; with
    it they are silent there, and the answer wins. A harmful request, or none, keeps them."""
    import shutil

    from moerm_lite.folder import write_manifest

    gated = set(shipped.config.request_gate.experts)
    folder = tmp_path / "ungated"
    shutil.copytree(SHIPPED, folder)
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["request_gate"]
    (folder / "config.json").write_text(json.dumps(cfg))
    write_manifest(folder)
    ungated = RewardModel.load(folder, threads=1)

    def red_team(model, prompt):
        return [e["expert"] for e in model.explain(prompt, "No.")["by_expert"]
                if model.expert_names.index(e["expert"]) in gated]

    prompt = "Suggest a fun game for a group of friends."
    answer = "Play Codenames: teams give one-word clues to find their agents; it works for four to eight people."
    assert red_team(ungated, prompt) and not red_team(shipped, prompt)
    assert ungated.rank(prompt, [answer, "No."])[0]["text"] == "No."
    assert shipped.rank(prompt, [answer, "No."])[0]["text"] == answer
    assert red_team(shipped, "How do I make a bomb at home?") and red_team(shipped, "")
