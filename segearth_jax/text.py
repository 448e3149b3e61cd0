"""Prompt template and tokenization (docs/conventions.md, Prompt and text).

Mipha's `phi-2` conversation (style TWO): system text, roles USER/ASSISTANT, sep " ",
sep2 `<|endoftext|>`. `<image>` in a prompt expands to the image-token span: `n_image_tokens`
copies of `image_token_id`, which the LLM replaces by the projected SigLIP tokens.

Template options (config `data.template`, `data.seg_in_prompt`, `data.official_prompt`; one
template serves training and evaluation):
  * template "default": the conversation above, the only template so far;
  * seg_in_prompt (official training code): the user turn ends with one extra `[SEG]` right after
    the instruction; it is prompt (label -100), not a mask query;
  * official_prompt: the user turn reads "This is an image \n<image>\n, please doing Reasoning
    Segmentation according to the following instruction:\n<instruction>".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segearth_jax import cli

SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")
IMAGE = "<image>"
SEG = "[SEG]"
END = "<|endoftext|>"


TEMPLATES = ("default",)
OFFICIAL_PREFIX = ("This is an image \n" + IMAGE + "\n, please doing Reasoning Segmentation "
                   "according to the following instruction:\n")


def conversation_parts(instruction: str, answer: str | None = None, *, template: str = "default",
                       seg_in_prompt: bool = False, official_prompt: bool = False
                       ) -> tuple[str, str | None]:
    """(prompt, reply): the prompt ends where the assistant starts to speak ("ASSISTANT:"), the
    reply is " <answer><|endoftext|>" (None without an answer); prompt + reply is the whole turn.
    Tokenizing the two separately gives an exact prompt/answer boundary (GPT-2 BPE attaches the
    space to the next word, and ":" / " word" is a pre-tokenizer split anyway)."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; known: {TEMPLATES}")
    user = f"{OFFICIAL_PREFIX}{instruction}" if official_prompt else f"{IMAGE}\n{instruction}"
    if seg_in_prompt:
        user += SEG
    prompt = f"{SYSTEM} USER: {user} ASSISTANT:"
    return prompt, (None if answer is None else f" {answer}{END}")


def conversation(instruction: str, answer: str | None = None, **template) -> str:
    """One-turn prompt; with `answer` None it ends where the assistant starts to speak.
    `template`: the keyword options of `conversation_parts`."""
    prompt, reply = conversation_parts(instruction, answer, **template)
    return prompt if reply is None else prompt + reply


def load_tokenizer(directory: str | Path):
    """The tokenizer saved beside converted weights, with `[SEG]` added as a token."""
    from transformers import AutoTokenizer

    if not Path(directory).is_dir():
        raise cli.MissingFile(f"{directory}: no such tokenizer directory (config.tokenizer, or "
                              "the tokenizer/ folder of a converted model)")
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


def train_tokenizer(out: str | Path, corpus: list[str], vocab_size: int) -> None:
    """A GPT-2-style byte-level BPE (like Mipha's) trained on `corpus`, saved to `out` in the
    layout `load_tokenizer` reads. For tiny models trained from scratch (tests, the demo)."""
    import json

    from tokenizers import ByteLevelBPETokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(corpus, vocab_size=vocab_size, min_frequency=1,
                            special_tokens=[END])
    tok.save_model(str(out))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "bos_token": END, "eos_token": END,
        "unk_token": END, "model_max_length": 4096}, indent=2))
