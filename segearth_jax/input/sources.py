"""Where training and evaluation data come from: the TFDS data source of a config, and the
tokenizer (a converted model's, or one trained on the training texts for tiny models)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import ml_collections


def open_source(d: ml_collections.ConfigDict, split: str):
    """The TFDS array_record data source of `d.name` (a `config.data`) in `d.data_dir`, built
    from `d.manual_dir` first when it is not prepared yet."""
    from segearth_jax.input import datasets

    builder = datasets.build(d.name, manual_dir=d.manual_dir or None,
                             data_dir=d.data_dir, on_error=d.on_error,
                             flag="--config.data.manual_dir")
    return builder.as_data_source()[split]


def load_or_make_tokenizer(config: ml_collections.ConfigDict, workdir: Path, source=None):
    """`config.tokenizer`: a tokenizer directory (e.g. `<converted mipha>/tokenizer`), or
    "train" (tiny models: a byte-level BPE trained on the training texts, kept in the workdir)."""
    from segearth_jax import text

    out = workdir / "tokenizer"
    if config.tokenizer != "train":
        return text.load_tokenizer(config.tokenizer)
    if not (out / "vocab.json").exists():
        if jax.process_index() == 0:
            corpus = [text.SYSTEM]
            for i in range(len(source)):
                r = source[i]
                corpus += [_str(r["instruction"]), _str(r["answer"])]
            text.train_tokenizer(out, corpus, vocab_size=config.tokenizer_vocab)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("tokenizer")
    return text.load_tokenizer(out)


def _str(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)
