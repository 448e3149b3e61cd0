"""Prompt template and tokenization (DESIGN.md section 4).

Mipha's `phi-2` conversation (style TWO): system text, roles USER/ASSISTANT, sep " ",
sep2 `<|endoftext|>`. `<image>` in a prompt expands to the image-token span: `n_image_tokens`
copies of `image_token_id`, which the LLM replaces by the projected SigLIP tokens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")
IMAGE = "<image>"
SEG = "[SEG]"
END = "<|endoftext|>"


def conversation(instruction: str, answer: str | None = None) -> str:
    """One-turn prompt; with `answer` None it ends where the assistant starts to speak."""
    prompt = f"{SYSTEM} USER: {IMAGE}\n{instruction} ASSISTANT:"
    return prompt if answer is None else f"{prompt} {answer}{END}"


def load_tokenizer(directory: str | Path):
    """The tokenizer saved beside converted weights, with `[SEG]` added as a token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    tok.add_tokens([SEG])
    return tok


def tokenize_with_image(tokenizer, text: str, n_image_tokens: int, image_token_id: int
                        ) -> np.ndarray:
    """Token ids [L] with `<image>` replaced by `n_image_tokens` placeholder ids."""
    parts = text.split(IMAGE)
    if len(parts) != 2:
        raise ValueError(f"the prompt must contain {IMAGE!r} exactly once: {text!r}")
    before, after = (tokenizer(p, add_special_tokens=False)["input_ids"] for p in parts)
    return np.asarray(before + [image_token_id] * n_image_tokens + after, np.int32)
