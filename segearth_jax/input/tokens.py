"""Prompt and answer -> fixed-length token arrays (docs/conventions.md, Prompt and text).

The prompt (system, user turn with `<image>`, "ASSISTANT:"; its pieces encoded one by one as
the official code does, `text.prompt_pieces`) and the reply (" <answer>" then `<|endoftext|>`)
are tokenized separately (`text.conversation_parts`), so the labelled span is
exactly the answer's tokens and a training prompt is token for token the prompt used for
generation. `<image>` becomes `n_image_tokens` copies of `image_token_id`.

Training layout (right padding), L = max_len:
    input_ids  [prompt (image span inside) | answer ... [SEG] ... <|endoftext|> | pad]
    labels     [-100 ...                   | answer ids (== input_ids)          | -100]
The loss shifts (logits at t predict labels at t + 1). `seg_positions` holds the index of each
answer `[SEG]` (a `[SEG]` that `seg_in_prompt` puts in the prompt is not a mask query).

Truncation, when prompt + answer exceed max_len: the answer's tail after its last `[SEG]` is cut
at max_len; `<|endoftext|>`, the answer's last token, is then cut too (kept only when the whole
answer fits), so a truncated example teaches no premature stop. A `[SEG]` is never cut: if the
prompt plus the answer up to its last `[SEG]` (at least one answer token when there is none) do
not fit, or the answer has more than max_seg `[SEG]`s, `TooLong` is raised and the pipeline's
`on_error` policy decides (raise, or skip and count).
"""

from __future__ import annotations

import numpy as np

from segearth_jax import errors, text
from segearth_jax.constants import IGNORE_INDEX

IGNORE = IGNORE_INDEX  # label of positions without a text loss


class RecordError(errors.UserError, ValueError):
    """A record that cannot become an example; the message names the record."""


class TooLong(RecordError):
    """Image + prompt + answer (up to its last `[SEG]`) exceed max_len, or too many `[SEG]`s."""


def _ids(tokenizer, s: str) -> list[int]:
    return tokenizer(s, add_special_tokens=False)["input_ids"]


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    return tokenizer.convert_tokens_to_ids(text.END) if pad is None else pad


def encode_train(tokenizer, instruction: str, answer: str, *, n_image_tokens: int,
                 image_token_id: int, seg_id: int, max_len: int, max_seg: int,
                 template: str = "default", seg_in_prompt: bool = False,
                 official_prompt: bool = False, record_id: str = "?") -> dict[str, np.ndarray]:
    """One training example.

    Returns input_ids int32 [max_len], labels int32 [max_len], attention_mask bool [max_len],
    seg_positions int32 [max_seg] (-1 padding), n_seg int32 (answer `[SEG]`s), truncated bool.
    """
    kw = dict(template=template, seg_in_prompt=seg_in_prompt, official_prompt=official_prompt)
    _, reply = text.conversation_parts(instruction.strip(), answer.strip(), **kw)
    prompt_ids = text.tokenize_pieces(tokenizer, text.prompt_pieces(instruction.strip(), **kw),
                                      n_image_tokens, image_token_id)
    end_id = tokenizer.convert_tokens_to_ids(text.END)
    answer_ids = np.asarray(_ids(tokenizer, reply.removesuffix(text.END)) + [end_id], np.int32)
    seg_idx = np.flatnonzero(answer_ids == seg_id)
    n_seg = len(seg_idx)
    if n_seg > max_seg:
        raise TooLong(f"record {record_id}: the answer has {n_seg} [SEG] tokens, more than "
                      f"max_seg={max_seg}")
    p = len(prompt_ids)
    room = max_len - p
    needed = int(seg_idx[-1]) + 1 if n_seg else 1
    if room < needed:
        raise TooLong(f"record {record_id}: image + prompt take {p} tokens and the answer needs "
                      f"{needed} (up to its last [SEG]); max_len={max_len}")
    truncated = len(answer_ids) > room
    answer_ids = answer_ids[:room]
    n = p + len(answer_ids)

    input_ids = np.full(max_len, _pad_id(tokenizer), np.int32)
    input_ids[:p] = prompt_ids
    input_ids[p:n] = answer_ids
    labels = np.full(max_len, IGNORE, np.int32)
    labels[p:n] = answer_ids
    attention_mask = np.zeros(max_len, bool)
    attention_mask[:n] = True
    seg_positions = np.full(max_seg, -1, np.int32)
    seg_positions[:n_seg] = p + seg_idx
    return dict(input_ids=input_ids, labels=labels, attention_mask=attention_mask,
                seg_positions=seg_positions, n_seg=np.int32(n_seg), truncated=np.bool_(truncated))


def encode_prompt(tokenizer, instruction: str, *, n_image_tokens: int, image_token_id: int,
                  max_prompt_len: int, template: str = "default", seg_in_prompt: bool = False,
                  official_prompt: bool = False, record_id: str = "?") -> dict[str, np.ndarray]:
    """The generation prompt, LEFT-padded: input_ids int32 [max_prompt_len], attention_mask bool
    [max_prompt_len] (True on the prompt, which ends at the last position)."""
    pieces = text.prompt_pieces(instruction.strip(), template=template,
                                seg_in_prompt=seg_in_prompt, official_prompt=official_prompt)
    ids = text.tokenize_pieces(tokenizer, pieces, n_image_tokens, image_token_id)
    if len(ids) > max_prompt_len:
        raise TooLong(f"record {record_id}: image + prompt take {len(ids)} tokens; "
                      f"max_prompt_len={max_prompt_len}")
    input_ids = np.full(max_prompt_len, _pad_id(tokenizer), np.int32)
    input_ids[max_prompt_len - len(ids):] = ids
    attention_mask = np.zeros(max_prompt_len, bool)
    attention_mask[max_prompt_len - len(ids):] = True
    return dict(input_ids=input_ids, attention_mask=attention_mask)
