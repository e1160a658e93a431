"""Pair features: the head's input, computed the same way at training and at run time."""

import numpy as np
import pytest

from moerm_lite.features import LAYOUTS, SURFACE, feature_dim, pair_features, surface, word_statistics


@pytest.mark.parametrize("kind", sorted(LAYOUTS))
def test_known_values(kind):
    H = 4
    p = np.array([[1.0, 0, 0, 0], [3.0, 0, 0, 0]])
    r = np.array([[2.0, 0, 0, 0], [0, 5.0, 0, 0]])
    x = pair_features(p, r, ["Why?", ""], ["Because it is.", "Yes!\n- one\n- two"], kind)
    assert x.shape == (2, feature_dim(H, kind)) == (2, 2 * H + len(LAYOUTS[kind]))
    col = {name: 2 * H + i for i, name in enumerate(LAYOUTS[kind])}
    assert list(col)[-len(SURFACE):] == list(SURFACE)  # the v1 statistics are the last columns in every layout
    np.testing.assert_allclose(x[0, :H], [1, 0, 0, 0])  # the normalised response embedding
    np.testing.assert_allclose(x[0, H:2 * H], [1, 0, 0, 0])  # prompt * response, both normalised
    assert x[0, col["cosine"]] == pytest.approx(1.0) and x[0, col["has_prompt"]] == 1.0
    assert x[1, col["cosine"]] == 0.0 and x[1, col["has_prompt"]] == 0.0  # an empty prompt adds nothing
    np.testing.assert_allclose(x[1, H:2 * H], 0.0)
    assert x[0, col["log_words"]] == pytest.approx(np.log1p(3))
    assert x[0, col["log_prompt_words"]] == pytest.approx(np.log1p(1))
    assert x[1, col["log_lines"]] == pytest.approx(np.log1p(3))
    assert x[1, col["list_share"]] == pytest.approx(2 / 3)
    assert x[1, col["exclamations"]] == pytest.approx(1 / 3)  # one "!" over three words


def test_layouts_agree_on_shared_columns():
    rng = np.random.default_rng(1)
    p, r = rng.normal(size=(2, 6)), rng.normal(size=(2, 6))
    texts = (["Name a fruit.", "Name a fruit."], ["An apple. An apple. An apple.", "Name a fruit, a pear."])
    v1, v2 = (pair_features(p, r, *texts, kind) for kind in ("prompt_response_v1", "prompt_response_v2"))
    np.testing.assert_array_equal(v2[:, :12], v1[:, :12])  # both embedding parts (2H = 12)
    np.testing.assert_array_equal(v2[:, -len(SURFACE):], v1[:, -len(SURFACE):])
    np.testing.assert_allclose(v2[:, 12:14], [[2 / 4, 0.0], [0.0, 1 / 3]], atol=1e-7)  # 4 and 3 trigrams
    with pytest.raises(ValueError, match="unknown pair-feature layout 'v9'"):
        pair_features(p, r, *texts, "v9")


def test_word_statistics():
    # "an apple an apple an apple": 4 trigrams, 2 distinct -> half repeat an earlier one
    assert word_statistics("", "An apple, an apple; an apple.") == (0.5, 0.0)
    assert word_statistics("What is the capital of France?", "What is the capital of France?") == (0.0, 1.0)
    assert word_statistics("Why?", "Too short") == (0.0, 0.0)  # no trigram
    rep, copied = word_statistics("How do I boil an egg?", "Boil an egg for nine minutes, then cool it.")
    assert rep == 0.0 and copied == pytest.approx(1 / 7)  # "boil an egg" of 7 trigrams
    assert word_statistics("", "It's OK. It's OK. It's OK.") == (0.5, 0.0)  # contractions are one word


def test_surface_statistics():
    lines, items, code, excl, quest, you, contr, wlen, sent = surface(
        "You're right. Do you see?\n```\nx = 1\n```")
    assert code == 1.0 and items == 0.0 and quest > 0 and you > 0 and contr > 0
    assert surface("plain words here")[1:4] == (0.0, 0.0, 0.0)
    assert surface("    a = 1\n    b = 2")[2] == 1.0  # indented code


def test_invariances():
    rng = np.random.default_rng(0)
    p, r = rng.normal(size=(3, 8)), rng.normal(size=(3, 8))
    x = pair_features(p, r, ["a", "b", "c"], ["x", "y", "z"])
    np.testing.assert_allclose(pair_features(5 * p, 0.1 * r, ["a", "b", "c"], ["x", "y", "z"]), x, atol=1e-6)
    with pytest.raises(ValueError, match="shapes"):
        pair_features(p, r[:2], ["a", "b", "c"], ["x", "y"])
