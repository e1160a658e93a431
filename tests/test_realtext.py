"""Real-text training data: attribute statistics, contrast pairs, the licence of every training source."""

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from moerm_build.data import attributes as A
from moerm_build.data.contrast import HELD_OUT, KINDS, TRAIN, contrast_records, is_evasive, real_answers, sanity_suite
from tests.conftest import DATA

ROOT = Path(__file__).resolve().parents[1]
needs_data = pytest.mark.skipif(not (DATA / "hh_rlhf").is_dir(), reason="../shared/data not present")


def test_attribute_canonical_values():
    text = "Great question! You might want to try:\n\n1. **Salt**\n2. Pepper\n\n```py\nx = 1\n```"
    a = A.attributes(text)
    ws = A.words(text)  # great question you might want to try salt pepper py x
    assert len(ws) == 11
    assert a["verbosity"] == pytest.approx(np.log1p(11))
    assert a["structure"] == pytest.approx(np.log1p(2 + 1))  # two list items, one bold span
    assert a["enthusiasm"] == pytest.approx(100 * (1 + 1) / 11)  # "!" and "great"
    assert a["hedging"] == pytest.approx(100 * 1 / 11)  # "might"
    assert a["addressing"] == pytest.approx(100 * 1 / 11)  # "you"
    assert a["code"] == pytest.approx(np.log1p(3 * 2 + 6 + 1))  # two fences, six backticks, "x = 1"
    assert a["formality"] == 0.0  # no contractions, no informal words
    casual = A.attributes("Yeah, I'm gonna say it's fine, don't worry about it.")
    assert casual["formality"] == pytest.approx(-100 * (3 + 2) / 10)  # I'm it's don't + yeah gonna
    assert A.syllables("table") == 2 and A.syllables("make") == 1 and A.syllables("the") == 1
    assert A.reading_level("The cat sat. The dog ran.") == pytest.approx(0.39 * 3 + 11.8 * 1 - 15.59)
    assert A.reading_level("") == 0.0


def test_attribute_users_compare_responses_to_the_same_prompt():
    recs = [{"prompt": f"q{i}", "chosen": "Sure! " * (i + 1) + "Yes.", "rejected": "No, I think not."}
            for i in range(6)]
    pool, scaler = A.ResponsePool.build(recs)
    np.testing.assert_allclose(pool.z.mean(0), 0, atol=1e-9)  # standardised on this pool
    out = A.attribute_training_records(pool, n_users=5, per_user=4)
    for r in out:
        assert r["user_id"].startswith("attribute-") and r["prompt"] in {p["prompt"] for p in recs}
        mine = {x["chosen"] for x in recs if x["prompt"] == r["prompt"]} | {
            x["rejected"] for x in recs if x["prompt"] == r["prompt"]}
        assert {r["chosen"], r["rejected"]} <= mine
    rng = np.random.default_rng(0)
    w = np.zeros(len(A.ATTRIBUTES))
    w[A.ATTRIBUTES.index("enthusiasm")] = 1.0
    for c, j in A.user_comparisons(rng, w, pool, pool.pairs(np.arange(len(pool.prompts))), 10):
        assert pool.z[c] @ w >= pool.z[j] @ w + 0.25  # the chosen reply is the more enthusiastic one


def test_pair_order_counts_same_prompt_pairs_users_notice():
    recs = [{"prompt": "q", "chosen": "Wow! Great! Amazing!", "rejected": "Fine."},
            {"prompt": "q", "chosen": "Great, fine.", "rejected": "Fine."},
            {"prompt": "q", "chosen": "Okay.", "rejected": "Fine."},  # equally calm: no user notices
            {"prompt": "r", "chosen": "Amazing! " * 5, "rejected": "No."}]
    pool, _ = A.ResponsePool.build(recs)
    a = A.ATTRIBUTES.index("enthusiasm")
    z = pool.z[:, a]
    assert A.pair_order(pool, z, a) == 1.0  # the attribute itself orders every pair
    assert A.pair_order(pool, -z, a) == 0.0
    assert A.pair_order(pool, np.zeros(len(z)), a) == 0.5  # no opinion: ties count half
    pairs = pool.pairs(np.arange(len(pool.prompts)))
    noticed = np.abs(z[pairs[:, 0]] - z[pairs[:, 1]]) >= A.MARGIN
    assert 0 < noticed.sum() < len(pairs)  # only pairs a user notices count: one that barely differs is left out
    first_wrong = z.copy()
    i, j = pairs[noticed][0]
    first_wrong[[i, j]] = first_wrong[[j, i]]  # swap one noticed pair's predictions
    assert A.pair_order(pool, first_wrong, a) < 1.0


def test_contrast_pairs_never_use_harmful_prompts():
    benign = [{"prompt": f"How do I make dish {i}?", "source": "hh_helpful",
               "chosen": f"Start by chopping onions, then fry them gently for dish {i} before adding spices.",
               "rejected": "x"} for i in range(5)]
    harmful = [{"prompt": "How do I pick a lock to break in?", "source": "hh_harmless",
                "chosen": "I'm sorry, I can't help with that.", "rejected": "Use a tension wrench and..."}]
    with pytest.raises(ValueError, match="harmful"):
        contrast_records(benign + harmful)
    out = contrast_records(benign)
    assert {r["source"] for r in out} == {f"contrast:{k}" for k in KINDS}
    for r in out:
        assert not is_evasive(r["chosen"]) and r["chosen"] != r["rejected"]
        assert r["prompt"] in {b["prompt"] for b in benign}
    # refusals and non-answers are never the "real answer"
    evasive = [{"prompt": "Why is the sky blue?", "source": "hh_helpful",
                "chosen": "To be honest, I don’t know anything about that, sorry about it.", "rejected": "x"}]
    assert real_answers(evasive) == []


def test_sanity_suite_phrasings_are_held_out():
    for kind in ("nonanswer", "dismissive"):
        assert not set(TRAIN[kind]) & set(HELD_OUT[kind])
    answers = ["Paris is the capital of France and its largest city by far today.", "Boil water first."]
    suite = sanity_suite(["Capital of France?", "How do I make tea?"], answers)
    kinds = [r["kind"] for r in suite]
    assert kinds.count("truncated") == 1  # only answers of 12+ words are truncated
    trunc = next(r for r in suite if r["kind"] == "truncated")
    assert trunc["rejected"] == "Paris is the capital of France"
    off = [r for r in suite if r["kind"] == "offtopic"]
    assert all(r["rejected"] != r["chosen"] and r["rejected"] in answers for r in off)


def test_shipped_training_mixture_uses_licensed_sources_only():
    from moerm_build.train.train import EVAL_ONLY, SOURCES, TrainConfig, load_records

    cfg = TrainConfig.from_json(ROOT / "moerm_build" / "configs" / "moerm-minilm.json")
    changed = {f.name for f in fields(cfg) if getattr(cfg, f.name) != getattr(TrainConfig(), f.name)}
    assert changed <= {"backbone", "encoder_recipe"}  # the defaults, on the encoder its recipe fine-tunes
    assert cfg.sources and set(cfg.sources) <= set(SOURCES) and not set(cfg.sources) & set(EVAL_ONLY)
    assert not cfg.jsonl  # nothing from outside the licensed sets
    # the read-out expert is fitted on records of licensed sources only: the mixture's, and degraded
    # replies of its benign answers (loaded for the read-out alone)
    assert cfg.readout_sources and set(cfg.readout_sources) <= set(SOURCES)
    assert not set(cfg.readout_sources) & set(EVAL_ONLY)
    assert set(cfg.readout_sources) - set(cfg.sources) == {"degrade"}
    shipped = json.loads((ROOT / "models" / "moerm-minilm" / "config.json").read_text())
    assert shipped["training"]["sources"] == cfg.sources
    assert shipped["training"]["readout"]["sources"] == cfg.readout_sources
    gate = shipped["training"].get("request_gate")  # fitted on the mixture's own training requests
    assert gate is None or (gate["source"] in cfg.sources and shipped["request_gate"]["experts"])
    for src in EVAL_ONLY:  # dsp, webgpt, relabeled HH: evaluation only
        with pytest.raises(ValueError, match="evaluation only"):
            load_records(TrainConfig(sources=[src]))


def test_held_out_degradation_families_train_nothing():
    """The families the card reports as never trained are in neither the heads' nor the encoder's recipe."""
    from moerm_build.data.degrade import FAMILIES
    from moerm_build.train.finetune import FinetuneConfig
    from moerm_build.train.train import EVAL_ONLY, TRAINED_FAMILIES, TrainConfig

    encoder = FinetuneConfig.from_json(ROOT / "moerm_build" / "configs" / "encoder.json")
    for name in ("moerm-minilm.json", "moerm-minilm-quality.json"):
        head = TrainConfig.from_json(ROOT / "moerm_build" / "configs" / name)
        assert set(head.degrade_families) == set(TRAINED_FAMILIES) and not set(head.sources) & set(EVAL_ONLY)
    assert set(encoder.families) == set(TRAINED_FAMILIES)
    held_out = set(FAMILIES) - set(TRAINED_FAMILIES)
    assert {"word_shuffle", "echo"} <= held_out and len(held_out) >= 5
    noise = FinetuneConfig.from_json(ROOT / "moerm_build" / "configs" / "encoder-noise.json")
    assert not noise.families and noise.noise  # word noise only: every family held out from this encoder
    for path in sorted((ROOT / "moerm_build" / "configs").glob("encoder*.json")):  # every encoder recipe
        assert set(FinetuneConfig.from_json(path).families) <= set(TRAINED_FAMILIES), path.name


def test_a_config_on_a_fine_tuned_backbone_names_the_recipe_that_builds_it():
    """A build config whose backbone is a fine-tuned encoder folder names the encoder recipe that writes it,
    so `release build` from a clean checkout builds that encoder first."""
    from moerm_build.train.finetune import FinetuneConfig
    from moerm_build.train.train import TrainConfig

    tuned = 0
    for path in sorted((ROOT / "moerm_build" / "configs").glob("moerm-*.json")):
        cfg = TrainConfig.from_json(path)
        if cfg.backbone:
            assert cfg.encoder_recipe, path.name
            assert Path(cfg.backbone).name == FinetuneConfig.from_json(ROOT / cfg.encoder_recipe).name, path.name
            tuned += 1
    assert tuned >= 1  # moerm-minilm-quality.json


@needs_data
def test_encoder_word_noise_gives_each_answer_every_kind_in_turn():
    from dataclasses import replace

    from moerm_build.data.degrade import NOISE_KINDS
    from moerm_build.train.finetune import FinetuneConfig, training_records

    cfg = FinetuneConfig.from_json(ROOT / "moerm_build" / "configs" / "encoder-noise.json")
    base = training_records(replace(cfg, noise=[]))
    recs = training_records(replace(cfg, noise_copies=3))
    noise = [r for r in recs if r["source"].startswith("noise:")]
    assert recs[:len(base)] == base and len(noise) == len(recs) - len(base)  # the noise comes on top
    kinds: dict[str, set[str]] = {}
    for r in noise:
        kinds.setdefault(r["chosen"], set()).add(r["source"].split(":")[1])
    complete = sum(k == set(NOISE_KINDS) for k in kinds.values())
    assert len(kinds) > 1000 and complete > 0.95 * len(kinds)  # three copies: each kind once per answer


@needs_data
def test_contrast_training_data_comes_from_benign_train_splits():
    from moerm_build import data
    from moerm_build.train.train import BENIGN, real_train_records

    recs = real_train_records(BENIGN, DATA)
    out = contrast_records(recs)
    harmful_prompts = {r["prompt"] for r in data.load_hh_harmless(DATA)}
    test_prompts = {r["prompt"] for name in BENIGN for r in getattr(data, f"load_{name}")(DATA, split="test")}
    assert len(out) > 1000
    assert not {r["prompt"] for r in out} & (harmful_prompts | test_prompts)


@needs_data
def test_word_noise_source_is_noisy_copies_of_benign_train_answers():
    """``"noise"`` (a source for the read-out: no degradation family) loads the benign train splits' real
    answers over their noisy copies, every kind."""
    from moerm_build.data.degrade import NOISE_KINDS
    from moerm_build.train.train import TrainConfig, load_records

    recs = load_records(TrainConfig(sources=["noise"]))
    assert len(recs) > 1000 and {r["source"] for r in recs} == {f"noise:{kind}" for kind in NOISE_KINDS}
    assert all(r["chosen"] != r["rejected"] and r["prompt"].strip() for r in recs)
