"""Prompt template and tokenization (docs/conventions.md, Prompt and text).

Mipha's `phi-2` conversation (style TWO): system text, roles USER/ASSISTANT, sep " ",
sep2 `<|endoftext|>`. `<image>` in a prompt expands to the image-token span: `n_image_tokens`
copies of `image_token_id`, which the LLM replaces by the projected SigLIP tokens.

Template options (config `data.template`, `data.seg_in_prompt`, `data.official_prompt`; one
template serves training and evaluation):
  * template "default": the conversation above, the only template so far;
  * seg_in_prompt (official training code): the user turn ends with one extra `[SEG]` right after
    the instruction; it is prompt (label -100), not a mask query;
  * official_prompt: the official SegEarth-R2 dataset code (`segearth_r2/datasets/dataset.py`,
    earth-insights/SegEarth-R2 at 3bed2e8, `LaSeRSDataset`; docs/conventions.md): the user turn
    is "This is an image \n<image>\n, please doing Reasoning Segmentation according to the
    following instruction:\n<instruction> <|assistant|>" and the reply "\n<answer>"; with
    seg_in_prompt, its `<refer>`: the instruction's tokens followed by one `[SEG]`.

Tokenization follows the official `tokenizer_special_tokens`: the prompt is a list of pieces
(`prompt_pieces`) encoded one by one and concatenated, `<image>` one piece of its own, and under
official_prompt the instruction and its `[SEG]` separately encoded and spliced (as the official
code encodes `<refer>`'s `token_refer_id`). `<|assistant|>` is plain text: Mipha-3B's tokenizer
(Phi-2's: 50257 BPE tokens and 38 whitespace runs) has no such token, and the official training
adds only `[SEG]`, so both codes encode the same characters with the same tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segearth_jax import errors

SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")
IMAGE = "<image>"
SEG = "[SEG]"
END = "<|endoftext|>"


TEMPLATES = ("default",)
OFFICIAL_PREFIX = ("This is an image \n" + IMAGE + "\n, please doing Reasoning Segmentation "
                   "according to the following instruction:\n")
OFFICIAL_USER_END = " <|assistant|>"  # after the `<refer>` splice, in the official user turn
OFFICIAL_REPLY_START = " \n"  # the turn separator " " + the official answer's leading "\n"


def prompt_pieces(instruction: str, *, template: str = "default", seg_in_prompt: bool = False,
                  official_prompt: bool = False) -> list[str]:
    """The prompt (system to "ASSISTANT:") as the pieces that are tokenized separately; they join
    to the prompt of `conversation_parts`. `IMAGE` is a piece of its own; under official_prompt
    the instruction and its `[SEG]` are pieces of their own (the official `<refer>` splice)."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; known: {TEMPLATES}")
    seg = [SEG] if seg_in_prompt else []
    if official_prompt:
        head, tail = OFFICIAL_PREFIX.split(IMAGE)
        return [f"{SYSTEM} USER: {head}", IMAGE, tail, instruction, *seg,
                f"{OFFICIAL_USER_END} ASSISTANT:"]
    return [f"{SYSTEM} USER: ", IMAGE, f"\n{instruction}{SEG if seg_in_prompt else ''} ASSISTANT:"]


def conversation_parts(instruction: str, answer: str | None = None, *, template: str = "default",
                       seg_in_prompt: bool = False, official_prompt: bool = False
                       ) -> tuple[str, str | None]:
    """(prompt, reply): the prompt ends where the assistant starts to speak ("ASSISTANT:"), the
    reply is " <answer><|endoftext|>" (official_prompt: " \n<answer><|endoftext|>"; None without
    an answer); prompt + reply is the whole turn. Tokenizing the two separately gives an exact
    prompt/answer boundary, the tokens of the whole string: GPT-2's pre-tokenizer splits ":"
    from what follows, and " \n" into " " and "\n" (the official labels start at that " ")."""
    prompt = "".join(prompt_pieces(instruction, template=template, seg_in_prompt=seg_in_prompt,
                                   official_prompt=official_prompt))
    start = OFFICIAL_REPLY_START if official_prompt else " "
    return prompt, (None if answer is None else f"{start}{answer}{END}")


def conversation(instruction: str, answer: str | None = None, **template) -> str:
    """One-turn prompt; with `answer` None it ends where the assistant starts to speak.
    `template`: the keyword options of `conversation_parts`."""
    prompt, reply = conversation_parts(instruction, answer, **template)
    return prompt if reply is None else prompt + reply


def load_tokenizer(directory: str | Path):
    """The tokenizer saved beside converted weights, with `[SEG]` added as a token."""
    from transformers import AutoTokenizer

    if not Path(directory).is_dir():
        raise errors.MissingFile(f"{directory}: no such tokenizer directory (config.tokenizer, or "
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
    return tokenize_pieces(tokenizer, [parts[0], IMAGE, parts[1]], n_image_tokens,
                           image_token_id)


def tokenize_pieces(tokenizer, pieces: list[str], n_image_tokens: int, image_token_id: int
                    ) -> np.ndarray:
    """Token ids [L]: each piece encoded on its own (no special tokens added), the `IMAGE` piece
    as `n_image_tokens` placeholder ids, concatenated (`prompt_pieces`)."""
    ids: list[int] = []
    for piece in pieces:
        if piece == IMAGE:
            ids += [image_token_id] * n_image_tokens
        elif piece:
            ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
    return np.asarray(ids, np.int32)


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
