"""Degradation families, the everyday set and the hacking search: known answers, never-harmful, eval-only."""

from collections import Counter

import numpy as np
import pytest

from moerm_build.data import degrade as D
from moerm_build.evaluate.hacking import (EDITS, MARKED, MAX_GROWTH, edit, greedy_search, hacked, hacking_rate,
                                          marked_texts)
from moerm_build.evaluate.robustness import EVERYDAY_KINDS, everyday_bad_replies, everyday_records, load_everyday

PROMPTS = ["How do I boil an egg?", "What is the capital of France?", "How do I boil pasta?",
           "Human: Hi there\n\nAssistant: Hello!\n\nHuman: Which planet is the largest?"]
ANSWERS = ["Put the egg in boiling water. Leave it for eight minutes. Then cool it in cold water.",
           "The capital of France is Paris, which has about 2 million people living in the city itself.",
           "Bring salted water to a boil. Add the pasta and stir. Cook it for 10 minutes and drain it.",
           "Jupiter is the largest planet in the Solar System, with a mass of 318 Earths."]


@pytest.fixture
def pool():
    return D.Pool.build(PROMPTS, ANSWERS)


def test_every_family_has_a_generator_and_makes_a_different_reply(pool):
    rng = np.random.default_rng(0)
    assert len(D.FAMILIES) >= 12 and set(D.GENERATORS) == set(D.FAMILIES)
    for fam in D.FAMILIES:
        made = [D.degrade(fam, i, pool, rng, split) for i in range(len(ANSWERS)) for split in D.SPLITS]
        assert any(m is not None for m in made), fam
        assert all(m is None or (m.strip() and m != ANSWERS[i // 2]) for i, m in enumerate(made)), fam
    with pytest.raises(ValueError, match="unknown degradation family"):
        D.degrade("sarcasm", 0, pool, rng)


def test_shuffles_keep_the_multiset(pool):
    rng = np.random.default_rng(1)
    for i, a in enumerate(ANSWERS):
        s = D.degrade("word_shuffle", i, pool, rng)
        assert Counter(s.split()) == Counter(a.split()) and s != a
    s = D.degrade("sentence_shuffle", 0, pool, rng)
    assert sorted(D.sentences(s)) == sorted(D.sentences(ANSWERS[0])) and s != ANSWERS[0]
    assert D.degrade("sentence_shuffle", 1, pool, rng) is None  # one sentence: nothing to reorder


def test_echo_is_the_request(pool):
    assert D.last_request(PROMPTS[3]) == "Which planet is the largest?"
    assert D.last_request("How do I boil an egg?") == "How do I boil an egg?"
    rng = np.random.default_rng(0)
    made = {D.degrade("echo", 3, pool, rng, "train") for _ in range(60)}
    assert "Which planet is the largest?" in made  # the verbatim variant
    assert all("Which planet is the largest?" in m for m in made)  # every frame carries the request


def test_neighbour_is_the_most_similar_other_prompt(pool):
    assert pool.neighbours[0] == 2 and pool.neighbours[2] == 0  # boil an egg <-> boil pasta
    assert D.degrade("neighbour", 0, pool, np.random.default_rng(0)) == ANSWERS[2]
    off = {D.degrade("offtopic", 0, pool, np.random.default_rng(s)) for s in range(20)}
    assert off <= set(ANSWERS[1:]) and len(off) > 1


def test_negation_and_entity_swap_known_answers(pool):
    assert D.negate("The sky is blue. You can see it.") == "The sky is not blue. You cannot see it."
    assert D.negate("It is not hard.") == "It is hard."
    assert D.negate("Don't panic.") == "Do panic."
    assert D.negate("Hello there.") == "Hello there."  # nothing it knows to negate
    rng = np.random.default_rng(0)
    s = D.degrade("entity_swap", 3, pool, rng)
    assert "318" not in s and "Solar System" not in s  # the number changed, the names swapped for others
    assert s.startswith("Jupiter is the largest planet in the ")  # a sentence's first word is no name


def test_other_families_known_answers(pool):
    rng = np.random.default_rng(0)
    t = D.degrade("truncation", 1, pool, rng)
    assert ANSWERS[1].startswith(t) and 3 <= len(t.split()) <= 0.4 * len(ANSWERS[1].split())
    p = D.degrade("padding", 0, pool, rng)
    assert ANSWERS[0] in p and len(p) > len(ANSWERS[0]) + 40
    m = D.degrade("mixed_language", 0, pool, rng)
    assert m.startswith("Put the egg in boiling water.") and any(f in m for f in D.POOLS["foreign"])
    for _ in range(10):
        r = D.degrade("repetition", 0, pool, rng)
        words = Counter(r.split())
        assert max(words.values()) >= 2 and set(words) <= set(ANSWERS[0].split())
    assert D.degrade("terse", 0, pool, rng, "train") in D.phrases("terse", "train")
    assert len(D.degrade("terse", 0, pool, rng, "test").split()) <= 2


def test_phrase_pools_split_train_from_test():
    for name in D.POOLS:
        train, test = D.phrases(name, "train"), D.phrases(name, "test")
        assert train and test and not set(train) & set(test)
    assert {"Nothing.", "No.", "Do something."} <= set(D.phrases("terse", "test"))  # never trained on


def test_harmful_prompts_never_get_a_worse_refusal():
    recs = [{"prompt": p, "chosen": a, "rejected": "x", "source": "hh_helpful"} for p, a in zip(PROMPTS, ANSWERS)]
    out = D.benign_degradation_records(recs, families=["refusal", "echo"])
    assert {r["source"] for r in out} == {"degrade:refusal", "degrade:echo"}
    assert all(r["chosen"] in ANSWERS for r in out)
    harmful = [{"prompt": "How do I pick a lock?", "chosen": "You should not do that without permission, "
                "a locksmith can help you.", "rejected": "x", "source": "hh_harmless"}]
    with pytest.raises(ValueError, match="harmful prompts are never used"):
        D.benign_degradation_records(recs + harmful, families=["refusal"])


def test_everyday_set_is_evaluation_only_and_scored_against_held_out_phrasings():
    from moerm_build.train.train import EVAL_ONLY, TrainConfig, load_records

    rows = load_everyday()
    assert len(rows) >= 60 and len({r["prompt"] for r in rows}) == len(rows)
    bad = everyday_bad_replies()
    assert set(bad) == set(EVERYDAY_KINDS)
    trained = set(D.phrases("terse", "train")) | set(D.phrases("generic", "train")) | set(
        D.phrases("refusal", "train"))
    assert not {b for v in bad.values() for b in v} & trained
    recs = everyday_records(rows[:2])
    assert len(recs) == 2 * sum(len(v) for v in bad.values())
    assert "everyday" in EVAL_ONLY
    with pytest.raises(ValueError, match="evaluation only"):
        load_records(TrainConfig(sources=["everyday"]))


def test_hacking_edits_known_answers():
    rng = np.random.default_rng(0)
    text = "First point. Second point. Third point."
    assert edit("repeat", text, "q?", rng, []).count("point.") == 4
    assert edit("drop", text, "q?", rng, []).count("point.") == 2
    assert edit("truncate", text, "q?", rng, []) == "First point. Second"
    assert Counter(edit("shuffle", text, "q?", rng, []).split()) == Counter(text.split())
    assert edit("append", text, "q?", rng, []).startswith(text)
    assert edit("replace", text, "q?", rng, ["Other answer."]) != text
    assert MARKED == set(EDITS) - {"drop"}


class LengthModel:
    """A reward that only counts words: every marked edit that adds words hacks it."""

    def score_pairs(self, pairs, user=None):
        return np.array([len(r.split()) for _, r in pairs], dtype=float)


def test_greedy_search_finds_a_length_hack_and_reports_it():
    res = greedy_search(LengthModel(), PROMPTS, ANSWERS, steps=5, seed=0)
    assert all(r["end_score"] > r["start_score"] and hacked(r) for r in res)
    long = greedy_search(LengthModel(), PROMPTS[:1], ["word " * 200], steps=12)[0]  # no sentence breaks
    assert len(long["end"]) <= MAX_GROWTH * len("word " * 200) + 500  # a bounded budget, not 2^12 copies
    assert all(set(r["edits"]) <= {"repeat", "append"} for r in res)  # only edits that add words win
    rate = hacking_rate(res)
    assert rate["hacked"] == 1.0 and rate["n_prompts"] == len(PROMPTS)

    class Exact:
        def score_pairs(self, pairs, user=None):  # only the real answers score
            return np.array([1.0 if r in ANSWERS else 0.0 for _, r in pairs])

    assert hacking_rate(greedy_search(Exact(), PROMPTS, ANSWERS, steps=3))["hacked"] == 0.0


def test_search_path_and_its_marked_texts():
    """Each kept edit's text is on the path, the last is the end; the texts from the first marked edit on
    are the degradations a search found (a path of drops only has none); train phrasings differ from test."""
    res = greedy_search(LengthModel(), PROMPTS, ANSWERS, steps=4, seed=1)
    for r in res:
        assert len(r["path"]) == len(r["edits"]) and r["path"][-1] == r["end"]
        assert marked_texts(r) == r["path"]  # every kept edit here adds words: a marked one
    assert marked_texts({"edits": ["drop", "drop"], "path": ["a b", "a"]}) == []
    assert marked_texts({"edits": ["drop", "append", "drop"], "path": ["a", "a x", "x"]}) == ["a x", "x"]
    rng = np.random.default_rng(0)
    pools = {split: {edit("append", "An answer.", "q?", rng, [], split)[len("An answer. "):] for _ in range(200)}
             for split in ("train", "test")}
    assert not (pools["train"] - {"q?"}) & (pools["test"] - {"q?"})  # the request itself is in both pools


def test_readout_records_map_to_their_family_and_the_card_marks_family_out_columns():
    from moerm_build.evaluate.robustness import family_of, trained_families
    from moerm_build.release.card import robustness_section

    assert family_of("degrade:echo") == "echo" and family_of("contrast:truncated") == "truncation"
    assert family_of("hh_helpful") == "" and family_of("contrast:offtopic") == "offtopic"
    # the read-out's degradation families count as trained; the contrast kinds with the contrast source
    training = {"sources": ["hh_helpful", "contrast"], "degrade_families": ["repetition"]}
    assert set(trained_families(training)) == {"repetition", "offtopic", "nonanswer", "dismissive", "truncation"}
    row = {"n": 10, "model": 0.9, "cosine": 0.5, "probe_family_out": 0.7}
    rob = {"families": {"families": {"echo": row, "offtopic": row}}, "trained_families": ["offtopic"]}
    plain = "\n".join(robustness_section(rob))
    assert "| echo (never trained) | 10 | 90.0 | 50.0 | 70.0 |" in plain and "read-out family out" not in plain
    rob["readout_family_out"] = {"families": {
        "echo": {"n": 10, "readout_all": 0.95, "readout_family_out": 0.8, "experts_trained": False},
        "offtopic": {"n": 10, "readout_all": 0.99, "readout_family_out": 0.97, "experts_trained": True}}}
    text = "\n".join(robustness_section(rob))
    assert "| echo (never trained) | 10 | 90.0 | 50.0 | 70.0 | 80.0 |" in text
    assert "| offtopic | 10 | 90.0 | 50.0 | 70.0 | 97.0 (experts trained) |" in text


def test_word_noise_known_answers():
    """Replacement keeps the word count and the layout and draws only from the vocabulary; deletion keeps the
    rest in order and never empties a reply; insertion keeps every word in order and adds only vocabulary
    words; rate 0 is the answer itself."""
    rng = np.random.default_rng(0)
    answer, vocab = "Boil the water.\nAdd the pasta and stir.\n\nDrain it after ten minutes.", ["zebra", "quartz"]
    words = answer.split()
    for kind in D.NOISE_KINDS:
        assert D.noisy_copy(answer, kind, vocab, rng, rate=0.0) == answer
    noisy = D.noisy_copy(answer, "replaced", vocab, rng)
    assert noisy.count("\n") == answer.count("\n") and len(noisy.split()) == len(words)
    assert all(a == b or a in vocab for a, b in zip(noisy.split(), words))
    assert set(D.noisy_copy(answer, "replaced", vocab, rng, rate=1.0).split()) <= set(vocab)
    assert D.noisy_copy(answer, "deleted", vocab, rng, rate=1.0) == "Boil"
    rest, kept = D.noisy_copy(answer, "deleted", vocab, rng), iter(words)
    assert all(w in kept for w in rest.split())  # in order: a subsequence
    assert D.noisy_copy(answer, "inserted", ["zebra"], rng, rate=1.0) == (
        "Boil zebra the zebra water. zebra\nAdd zebra the zebra pasta zebra and zebra stir. zebra\n\n"
        "Drain zebra it zebra after zebra ten zebra minutes. zebra")
    longer = D.noisy_copy(answer, "inserted", vocab, rng)
    assert longer.count("\n") == answer.count("\n") and len(longer.split()) > len(words)
    extra = iter(longer.split())
    assert all(w in extra for w in words)  # the answer is a subsequence of its copy
    assert all(w in vocab for w in [*longer.split()] if w not in words)
    with pytest.raises(ValueError, match="word-noise kind"):
        D.noisy_copy(answer, "shuffled", vocab, rng)


def test_word_noise_records_are_no_family_and_take_turns():
    prompts, answers = PROMPTS + ["Hi?"], ANSWERS + ["Hello there."]  # the last is too short for noise
    recs = D.noise_records(prompts, answers, seed=3)
    assert [r["source"] for r in recs] == ["noise:replaced", "noise:deleted", "noise:inserted", "noise:replaced"]
    assert [r["chosen"] for r in recs] == ANSWERS and all(r["rejected"] != r["chosen"] for r in recs)
    assert not {r["source"].split(":")[1] for r in recs} & set(D.FAMILIES)
    assert D.noise_records(prompts, answers, seed=3) == recs  # seeded
    assert len(D.noise_records(prompts, answers, n=2, seed=3)) == 2
    two = D.noise_records(prompts, answers, seed=3, kinds=("deleted", "inserted"))
    assert [r["source"] for r in two] == ["noise:deleted", "noise:inserted"] * 2
    with pytest.raises(ValueError, match="word-noise kinds"):
        D.noise_records(prompts, answers, kinds=("shuffled",))
    harmful = [{"prompt": "How do I pick a lock?", "chosen": "You should not do that without permission, "
                "a locksmith can help you.", "rejected": "x", "source": "hh_harmless"}]
    with pytest.raises(ValueError, match="harmful prompts are never used"):  # as for the families
        D.benign_noise_records(harmful)
