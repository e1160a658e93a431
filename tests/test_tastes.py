"""Taste families: canonical member values, users who prefer what their member measures."""

import numpy as np
import pytest

from moerm_build.data import tastes as T
from moerm_build.data.attributes import ResponsePool


def value(text, family, member):
    return T.taste_matrix([text])[0, T.MEMBERS.index((family, member))]


def test_canonical_values():
    text = "I cook rice for dinner. Thanks, I hope you enjoy it! Do you like bread?"  # 15 words
    assert value(text, "topic", "food") == pytest.approx(100 * 4 / 15)  # cook rice dinner bread
    assert value(text, "rhetoric", "questions") == pytest.approx(100 * 1 / 15)
    assert value(text, "rhetoric", "first_person") == pytest.approx(100 * 2 / 15)  # I, I
    assert value(text, "courtesy", "thanks_apologies") == pytest.approx(100 * 1 / 15)
    assert value(text, "courtesy", "wishes") == pytest.approx(100 * 2 / 15)  # hope enjoy
    # words are runs of letters: numbers count as amounts, not as words (6 words here)
    assert value("Bake it for 45 minutes at 180 degrees.", "specificity", "amounts") == pytest.approx(100 * 2 / 6)
    assert value("We went to Paris with Anna.", "specificity", "names") == pytest.approx(100 * 2 / 6)
    assert value("One.\n\nTwo.\n\nThree.", "structure", "paragraphs") == pytest.approx(np.log1p(3))
    assert value("", "topic", "money") == 0.0  # no words: no division by zero
    assert len(T.TASTE_FAMILIES) >= 5 and all(len(m) >= 4 for m in T.TASTE_FAMILIES.values())


def test_a_user_prefers_more_of_its_member_within_a_prompt():
    recs = [{"prompt": f"q{i}", "chosen": "We cook rice and bread for dinner. " * (1 + i % 3),
             "rejected": "The computer runs the software online."} for i in range(40)]
    recs += [{"prompt": f"q{i}", "chosen": "Eat the cheese and the meat.", "rejected": "Sleep well."}
             for i in range(40)]
    pool = T.taste_pool(ResponsePool.build(recs)[0])
    np.testing.assert_allclose(pool.z.mean(0), 0, atol=1e-9)
    users = T.taste_benchmark(pool, "topic", n_users=5, n_adapt=5, n_eval=10)
    food = T.MEMBERS.index(("topic", "food"))
    for u in users:
        k = int(np.flatnonzero(u.w)[0])
        assert T.MEMBERS[k][0] == "topic"
        for c, r in u.adapt + u.eval:
            assert u.w[k] * (pool.z[c, k] - pool.z[r, k]) >= 0.25  # the chosen reply has more of it (or less)
    assert any(u.w[food] for u in users) or users  # users were drawn
    with pytest.raises(ValueError, match="unknown taste family"):
        T.taste_benchmark(pool, "humour")
