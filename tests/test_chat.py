"""Chat-message prompts are accepted everywhere a prompt is, rendered with the one documented template."""

import io
import json

import numpy as np

from moerm_lite.cli import main
from moerm_lite.text import render_messages

MESSAGES = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "why is the cat nice"}]
TEXT = "system: be kind\n\nuser: why is the cat nice"
RESPONSES = ["the cat is kind and good", "it is rude and bad", "thanks for the question"]


def test_template():
    assert render_messages(MESSAGES) == TEXT


def test_every_entry_point_renders_messages(tiny_fp32):
    m = tiny_fp32
    np.testing.assert_array_equal(m.score(MESSAGES, RESPONSES), m.score(TEXT, RESPONSES))
    assert m.rank(MESSAGES, RESPONSES) == m.rank(TEXT, RESPONSES)
    np.testing.assert_array_equal(m.explain(MESSAGES, RESPONSES[0])["contributions"],
                                  m.explain(TEXT, RESPONSES[0])["contributions"])
    comps = [{"prompt": MESSAGES, "chosen": RESPONSES[0], "rejected": RESPONSES[1]}]
    as_text = [{"prompt": TEXT, "chosen": RESPONSES[0], "rejected": RESPONSES[1]}]
    np.testing.assert_array_equal(m.fit_user(comps).weights_, m.fit_user(as_text).weights_)
    assert m.next_comparison(MESSAGES, RESPONSES) == m.next_comparison(TEXT, RESPONSES)
    # ... and it is not a no-op: the system turn changes the score
    assert not np.allclose(m.score(MESSAGES, RESPONSES), m.score(MESSAGES[1:], RESPONSES))


def test_cli_reads_message_prompts(tiny_folder, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"prompt": MESSAGES, "response": RESPONSES[0]}) + "\n"
                    + json.dumps({"prompt": TEXT, "response": RESPONSES[0]}) + "\n")
    out = io.StringIO()
    assert main(["score", "-i", str(path), "--model", str(tiny_folder), "--threads", "1"], out=out) == 0
    a, b = (json.loads(line)["score"] for line in out.getvalue().splitlines())
    assert a == b
