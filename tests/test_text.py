"""Tokenization: one tokenizer serves prompts and responses; each role truncates its own end, exactly as
the tokenizers library truncates when told to (the training side tokenizes the same way)."""

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from moerm_lite.text import TextTokenizer

SHIPPED_TOKENIZER = Path(__file__).resolve().parents[1] / "models" / "moerm-minilm" / "tokenizer.json"
TEXTS = ["", "Hi.", "one two three four five six seven eight nine ten",
         "How do I reverse a list in Python? " * 12, "word " * 300, "éàü ñ — “quotes” and emoji 🙂 " * 9]


def library_truncation(path: Path, max_length: int, direction: str) -> Tokenizer:
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.enable_truncation(max_length=max_length, direction=direction)
    return tok


@pytest.mark.parametrize("max_length", [8, 24, 256])
@pytest.mark.parametrize("role,direction", [("prompt", "left"), ("response", "right")])
def test_truncation_matches_the_library(role, direction, max_length):
    ours = TextTokenizer(SHIPPED_TOKENIZER, max_length)
    ref = library_truncation(SHIPPED_TOKENIZER, max_length, direction)
    ids, truncated = ours.encode(TEXTS, role)
    for text, got, cut, enc in zip(TEXTS, ids, truncated, ref.encode_batch(TEXTS)):
        assert got.tolist() == enc.ids, (role, max_length, text[:30])
        assert bool(cut) == (len(enc.overflowing) > 0)
        assert len(got) <= max_length


def test_prompt_keeps_its_end_response_its_start():
    tok = TextTokenizer(SHIPPED_TOKENIZER, 6)
    text = "alpha beta gamma delta epsilon zeta eta theta"
    (p,), _ = tok.encode([text], "prompt")
    (r,), _ = tok.encode([text], "response")
    words = Tokenizer.from_file(str(SHIPPED_TOKENIZER)).encode(text, add_special_tokens=False).ids
    assert p[1:-1].tolist() == words[-4:] and r[1:-1].tolist() == words[:4]
    assert p[0] == r[0] == 101 and p[-1] == r[-1] == 102  # [CLS] ... [SEP] kept on both sides


def test_unknown_role():
    with pytest.raises(ValueError, match="role"):
        TextTokenizer(SHIPPED_TOKENIZER, 8).encode(["x"], "system")


def test_padding():
    tok = TextTokenizer(SHIPPED_TOKENIZER, 16)
    feed = tok.pad(tok.encode(["a b c", "a"])[0])
    assert feed["input_ids"].shape == feed["attention_mask"].shape == (2, 5)
    assert feed["attention_mask"].sum(1).tolist() == [5, 3] and not feed["token_type_ids"].any()
    assert (feed["input_ids"][1, 3:] == tok.pad_id).all() and np.issubdtype(feed["input_ids"].dtype, np.int64)


def test_unpaired_surrogates_are_named_not_passed_to_the_tokenizer():
    from moerm_lite.text import check_prompt, check_response

    bad = b"caf\xe9".decode("utf-8", "surrogateescape")  # a valid Python str, no valid Unicode
    with pytest.raises(ValueError, match=r"response of row 3 contains an unpaired surrogate.*U\+DCE9 at character 3"):
        check_response(bad, 100, "response of row 3")
    with pytest.raises(ValueError, match="prompt contains an unpaired surrogate"):
        check_prompt([{"role": "user", "content": bad}], 100)
    assert check_response("café 🙂", 100) == "café 🙂"  # real non-ASCII text passes
