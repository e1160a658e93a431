"""The experiments' own checks (experiments/ is research, not product: no product module or product test
imports it; tests/test_layers.py enforces that, and this file is the one place that loads it)."""

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]


def test_style_tuned_encoder_round_trips_as_a_folder(tiny_bert, tmp_path):
    """finetune_probe.py --save: the written folder is the base encoder with the tuned top layer, and embeds
    exactly as the tuned layer did on the cached inputs of the layers below."""
    import importlib.util

    from moerm_build.model import Backbone
    from moerm_build.train.embed import embed_texts, text_tokenizer

    spec = importlib.util.spec_from_file_location("finetune_probe", ROOT / "experiments" / "finetune_probe.py")
    fp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fp)
    base = Backbone(tiny_bert).eval()
    tok = text_tokenizer(tiny_bert, 32, tmp_path / "tok")
    texts = [f"reply number {i} " + "word " * (i % 7) for i in range(24)]
    cache = fp.Cached(base, tok, texts, "response")
    z = np.random.default_rng(0).normal(size=(len(texts), 3))  # (N, A) attributes to predict
    frozen_top = base.encoder.encoder.layer[-1]
    top = fp.finetune_attributes(cache, z, frozen_top, preserve=0.1, epochs=2)
    assert any(not torch.equal(a, b) for a, b in zip(top.state_dict().values(), frozen_top.state_dict().values()))
    fp.save_encoder(base, top, tmp_path / "tuned")
    assert (tmp_path / "tuned" / "tokenizer.json").is_file()
    tuned = Backbone(tmp_path / "tuned").eval()
    for name, w in base.encoder.state_dict().items():  # everything below the top layer is the base's
        same = torch.equal(w, tuned.encoder.state_dict()[name])
        assert same or name.startswith("encoder.layer.1."), name
    got = embed_texts(tuned, tok, texts, "response")  # (N, H) through the saved folder
    want = fp.pooled(top, cache).numpy()  # (N, H) the tuned layer on the cached inputs
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(got, embed_texts(base, tok, texts, "response"), atol=1e-5)


def test_per_channel_requantization_keeps_each_weight_within_half_a_step():
    """openvino_variants.py's int8 variant: each weight column's 8-bit levels reproduce it within half a
    step of that column's scale, through OpenVINO's compressed-weight pattern computed in fp32."""
    ov = pytest.importorskip("openvino")
    import openvino.opset13 as ops

    from experiments.openvino_variants import requantize_per_channel

    rng = np.random.default_rng(0)
    W = rng.normal(size=(16, 5)).astype(np.float32) * np.array([1, 10, 0.1, 3, 0.5], np.float32)  # (K, N)
    W[:, 3] += 4.0  # a column that never crosses zero
    x = ops.parameter([2, 16], np.float32, name="x")
    model = ov.Model([ops.matmul(x, ops.constant(W), False, False)], [x], "m")
    requantize_per_channel(model)
    eye = np.eye(16, dtype=np.float32)[:2]  # rows 0 and 1 of W come back
    got = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({"x": eye})[0]  # (2, N)
    step = (W.max(0) - W.min(0)) / 255  # (N,)
    assert np.all(np.abs(got - W[:2]) <= step / 2 * 1.01 + 1e-6)
    assert not np.allclose(got, W[:2], atol=1e-7)  # it really was quantized


def test_sentence_statistics_known_answers():
    """sentence_features_probe.py's statistics on planted unit vectors: a sentence said twice has duplicate
    cosine 1 and does not count as distinct; relevance is each sentence's cosine to the prompt."""
    from experiments.sentence_features_probe import sentence_statistics

    e = np.eye(4)
    p = e[0]
    S = np.stack([e[0], e[1], e[1]])  # (3, 4): on topic, then one sentence twice
    dup, distinct, rel_min, rel_max, rel_mean, outlier, adjacent = sentence_statistics(p, S, np.array([2, 1, 1.]))
    assert dup == 1.0 and distinct == np.log1p(2)
    assert (rel_min, rel_max, rel_mean) == (0.0, 1.0, 0.5)
    centre = (e[0] + 2 * e[1]) / np.sqrt(5)
    assert np.isclose(outlier, centre @ e[0]) and adjacent == 0.5
    one = sentence_statistics(np.zeros(4), e[:1], np.array([3.]))
    assert one[0] == 0.0 and one[1] == np.log1p(1) and one[2:5] == [0.0, 0.0, 0.0] and one[6] == 1.0
    assert sentence_statistics(p, np.zeros((0, 4)), np.zeros(0)) == [0.0] * 7


def test_gate_reroute_picks_the_top_k_among_the_other_routed_experts_where_the_gate_is_off():
    """gate_reroute.py: a row the gate turns off routes to its best k experts outside the gate's, with the
    usual top-k softmax; a row it keeps on is routed exactly as the head routes it; shared experts keep 1."""
    from experiments.gate_reroute import rerouted_gates
    from moerm_build.model import ModelArgs, MoEHead

    torch.manual_seed(0)
    head = MoEHead(ModelArgs(n_features=6, n_experts=7, n_shared=2, top_k=2, expert_hidden=3)).eval()
    h = torch.randn(40, 6)
    off = np.arange(40) % 2 == 0
    with torch.no_grad():
        g = rerouted_gates(head, h, off, [0, 1]).numpy()  # (40, 7)
        base = head.gates(h)[0].numpy()  # (40, 7)
        logits = head.router(h).numpy()  # (40, 5)
    np.testing.assert_array_equal(g[~off], base[~off])
    assert (g[off][:, [0, 1]] == 0).all() and (g[:, 5:] == 1).all()
    assert (base[off][:, [0, 1]] > 0).any()  # the gate's experts were picked there before
    for row, lg in zip(g[off], logits[off]):
        pick = 2 + np.argsort(-lg[2:])[:2]  # the two best of the other routed experts
        assert set(np.flatnonzero(row[:5])) == set(pick)
        e = np.exp(lg[pick] - lg[pick].max())
        np.testing.assert_allclose(row[pick], e / e.sum(), rtol=1e-5)


def test_length_neutral_score_subtracts_the_slope_times_log_words():
    """guarded_hacking.py --length: the score less ``length * log(1 + words)``, and with a penalty less that
    times the repeated n-gram share as well."""
    from experiments import guarded_hacking as gh

    class Constant:
        def score_pairs(self, pairs, user=None):
            return np.full(len(pairs), 2.0)

    pairs = [("q", ""), ("q", "one"), ("q", "one two three")]
    got = gh.Guarded(Constant(), 0.0, length=0.5).score_pairs(pairs)
    np.testing.assert_allclose(got, 2.0 - 0.5 * np.log([1.0, 2.0, 4.0]))
    repeated = gh.Guarded(Constant(), 1.0, length=0.5).score_pairs([("q", "a b c a b c")])
    np.testing.assert_allclose(repeated, 2.0 - 0.5 * np.log(7.0) - gh.repeated_share("q", "a b c a b c"))
    assert gh.repeated_share("q", "a b c a b c") == 0.25  # of the four 3-grams, "a b c" the second time


def test_style_free_population_zeroes_the_weighted_shared_experts_but_the_readout():
    """style_free_population.py: of the shared experts (the last n_shared), those with a non-zero population
    weight are set to 0, the helpfulness read-out and the routed experts keep theirs."""
    from types import SimpleNamespace

    from experiments import style_free_population as sf

    model = SimpleNamespace(n_experts=5, config=SimpleNamespace(n_shared=3), w0=np.array([1.0, -2.0, 3.0, 0.0, 4.0]),
                            expert_names=["a", "b", sf.READOUT, "c", "d"])
    w, zeroed = sf.style_free(model)
    np.testing.assert_array_equal(w, [1.0, -2.0, 3.0, 0.0, 0.0])
    assert zeroed == ["d"]
    np.testing.assert_array_equal(model.w0, [1.0, -2.0, 3.0, 0.0, 4.0])  # the model's weights are not changed


def test_student_cosine_is_one_for_the_same_direction_and_zero_for_orthogonal_ones():
    from experiments.student_cosine import cosines

    a = np.array([[1.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [6.0, 8.0], [1.0, -1.0]])  # scaled copies, then an orthogonal row
    np.testing.assert_allclose(cosines(a, b), [1.0, 1.0, 0.0], atol=1e-12)
