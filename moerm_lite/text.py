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
    return response


class TextTokenizer:
    """``tokenizers`` wrapper for single texts: truncation from the model config, padding per batch.

    Prompts and responses are embedded separately. A prompt longer than ``max_length`` tokens
    keeps its end (the latest turns of a conversation); a response keeps its start.
    Truncation is never silent: :meth:`encode` reports which texts were cut.
    """

    SIDES = (("prompt", "left"), ("response", "right"))  # role, truncation direction

    def __init__(self, path: Path, max_length: int) -> None:
        self.max_length = max_length
        self._tok = {}
        for role, direction in self.SIDES:
            tok = Tokenizer.from_file(str(path))
            # tokenizer.json files often hard-code truncation/padding (MiniLM: 128); ours win.
            tok.no_padding()
            tok.enable_truncation(max_length=max_length, direction=direction)
            self._tok[role] = tok
        pad = self._tok["response"].token_to_id("[PAD]")
        self.pad_id = 0 if pad is None else pad
        self.vocab_size = self._tok["response"].get_vocab_size(with_added_tokens=True)

    def encode(self, texts: Sequence[str], role: str = "response") -> tuple[list[np.ndarray], np.ndarray]:
        """Token ids per text (unpadded) and which texts were truncated, (N,) bool."""
        if role not in self._tok:
            raise ValueError(f"role must be one of {sorted(self._tok)}, got {role!r}")
        encs = self._tok[role].encode_batch(list(texts), add_special_tokens=True)
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encs]
        truncated = np.array([len(e.overflowing) > 0 for e in encs], dtype=bool)  # (N,)
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
