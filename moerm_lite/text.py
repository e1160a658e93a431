"""Input checks, the chat template and tokenization of single texts.

Prompt and response are encoded separately, each as ``[CLS] text [SEP]``; the pair's
features are built from the two embeddings (:mod:`moerm_lite.features`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
from tokenizers import Tokenizer

log = logging.getLogger("moerm_lite")

Messages = Sequence[dict[str, str]]
Prompt = Union[str, Messages]


def render_messages(messages: Messages) -> str:
    """Render a TRL-style message list as plain text, one ``role: content`` block a turn.

    ``[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]``
    becomes ``"user: Hi\\n\\nassistant: Hello"``. Training and runtime use this same template.
    """
    parts = []
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        if not isinstance(m, dict) or not (content is None or isinstance(content, str)):
            raise TypeError(f"message {i} must be a dict with a string 'content', got {m!r:.80}")
        parts.append(f"{m.get('role', 'user')}: {content or ''}")  # content None (a tool call) is empty
    return "\n\n".join(parts)


def check_prompt(prompt: Any, max_chars: int, where: str = "prompt") -> str:
    """A prompt as text: a string (may be empty) or a chat message list."""
    if isinstance(prompt, (list, tuple)):
        prompt = render_messages(prompt)
    if not isinstance(prompt, str):
        raise TypeError(f"{where} must be a string or a list of chat messages, got {type(prompt).__name__}")
    if len(prompt) > max_chars:
        raise ValueError(f"{where} has {len(prompt):,} characters, more than the limit of {max_chars:,}")
    check_encodable(prompt, where)
    return prompt


def check_response(response: Any, max_chars: int, where: str = "response", *, allow_empty: bool = True) -> str:
    """A response must be a string within the size limit.

    An empty or whitespace-only response is a text like any other and is scored (an RL policy
    that emits EOS first produces one); ``allow_empty=False`` refuses it instead.
    """
    if not isinstance(response, str):
        raise TypeError(f"{where} must be a string, got {type(response).__name__}")
    if not allow_empty and not response.strip():
        raise ValueError(f"{where} is empty or whitespace only (allow_empty=False)")
    if len(response) > max_chars:
        raise ValueError(f"{where} has {len(response):,} characters, more than the limit of {max_chars:,}")
    check_encodable(response, where)
    return response


def check_encodable(text: str, where: str) -> None:
    """``ValueError`` naming ``where`` for a text that is no valid Unicode (an unpaired surrogate, as
    ``surrogateescape`` decoding leaves them): the tokenizer cannot read it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{where} contains an unpaired surrogate code point (U+{ord(text[e.start]):04X} at "
                         f"character {e.start}); decode the text with errors='replace' first") from None


class TextTokenizer:
    """``tokenizers`` wrapper for single texts: truncation from the model config, padding per batch.

    Prompts and responses are embedded separately. A prompt longer than ``max_length`` tokens
    keeps its end (the latest turns of a conversation); a response keeps its start.
    Truncation is never silent: :meth:`encode` reports which texts were cut.
    """

    SIDES = {"prompt": "left", "response": "right"}  # role -> which end truncation drops

    def __init__(self, path: Path, max_length: int) -> None:
        self.max_length = max_length
        self._tok = Tokenizer.from_file(str(path))
        # tokenizer.json files often hard-code truncation/padding (MiniLM: 128); ours win. Truncation is
        # ours too: one tokenizer serves both roles (each role cuts a different end), see encode().
        self._tok.no_padding()
        self._tok.no_truncation()
        post = self._tok.post_processor
        self._n_special = 0 if post is None else post.num_special_tokens_to_add(False)  # [CLS], [SEP]
        pad = self._tok.token_to_id("[PAD]")
        self.pad_id = 0 if pad is None else pad
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, texts: Sequence[str], role: str = "response") -> tuple[list[np.ndarray], np.ndarray]:
        """Token ids per text (unpadded, at most ``max_length``) and which texts were truncated, (N,) bool.

        A text over the limit is cut as the tokenizers library cuts it (the text's tokens, then the
        special tokens around them): a prompt keeps its end, a response its start."""
        if role not in self.SIDES:
            raise ValueError(f"role must be one of {sorted(self.SIDES)}, got {role!r}")
        texts = list(texts)
        encs = self._tok.encode_batch(texts, add_special_tokens=True)
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encs]
        truncated = np.array([len(x) > self.max_length for x in ids], dtype=bool)  # (N,)
        for i in np.flatnonzero(truncated):  # rare: cut the text's own tokens, then add the special ones
            enc = self._tok.encode(texts[i], add_special_tokens=False)
            enc.truncate(max(self.max_length - self._n_special, 0), direction=self.SIDES[role])
            ids[i] = np.asarray(self._tok.post_process(enc).ids, dtype=np.int64)
        return ids, truncated

    def pad(self, ids: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Pad a batch to its longest member: input_ids, attention_mask, token_type_ids, each (B, L)."""
        L = max(len(x) for x in ids)
        B = len(ids)
        input_ids = np.full((B, L), self.pad_id, dtype=np.int64)  # (B, L)
        mask = np.zeros((B, L), dtype=np.int64)  # (B, L)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)] = x
            mask[i, : len(x)] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(mask)}
