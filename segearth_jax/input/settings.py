"""The input geometry and prompt format: one definition for training, evaluation and inference.

`Settings` is the preprocessing part of `config.data` (image sizes, token lengths, prompt
template). Training reads it from the config, writes it into the exported `model.json`
("input"), and inference reads it back from there, so a model always sees the inputs it was
trained on. Values that the model also fixes (SigLIP size and patch, image-token id) are checked
against the model config where the two meet (`check_model`), with a message naming the flag.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from segearth_jax import cli, text
from segearth_jax.models.phi import IMAGE_TOKEN_ID

SPATIAL_GT = ("paper", "official")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Image and prompt geometry (defaults: the paper's Mipha-3B + Swin-B at 1024)."""

    siglip_size: int = 384  # SigLIP view (squashed, bicubic)
    image_size: int = 1024  # Swin canvas (long edge, bilinear, pad 128)
    patch_size: int = 14  # SigLIP patch: spatial-loss grid = siglip_size // patch_size
    image_token_id: int = IMAGE_TOKEN_ID  # placeholder id of the image span in input_ids
    max_len: int = 1024  # training sequence (image tokens included)
    max_seg: int = 8  # [SEG] queries per example
    max_prompt_len: int = 960  # generation prompt (image tokens included)
    template: str = "default"  # text.py options
    seg_in_prompt: bool = False
    official_prompt: bool = False
    spatial_gt: str = "paper"  # "paper" | "official" (preprocess.masks_to_grid)

    def __post_init__(self):
        if self.spatial_gt not in SPATIAL_GT:
            raise cli.BadValue(f"--config.data.spatial_gt={self.spatial_gt!r}; expected one of "
                               f"{SPATIAL_GT}")
        if self.template not in text.TEMPLATES:
            raise cli.BadValue(f"--config.data.template={self.template!r}; known: "
                               f"{text.TEMPLATES}")

    @classmethod
    def from_config(cls, config: Any) -> Settings:
        """From a `config.data` (ConfigDict or mapping); absent keys take the defaults."""
        defaults = dataclasses.asdict(cls())
        return cls(**{k: config.get(k, v) for k, v in defaults.items()})

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Settings:
        """From a model directory's `model.json` (its "input" entry, written by `to_spec`)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in spec.get("input", {}).items() if k in known})

    def to_spec(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def grid(self) -> int:
        """Image tokens per side (27 for 384 / 14)."""
        return self.siglip_size // self.patch_size

    @property
    def n_image_tokens(self) -> int:
        return self.grid ** 2

    @property
    def template_kwargs(self) -> dict:
        """The prompt options, for `text.conversation` and `tokens.encode_*`."""
        return dict(template=self.template, seg_in_prompt=self.seg_in_prompt,
                    official_prompt=self.official_prompt)

    def check_model(self, model: Any) -> None:
        """Raises `cli.BadValue`, naming the flag, where the data disagree with the model (a
        `SegEarthR2Config`): SigLIP image size, patch size, image-token id."""
        vision, llm = model.mllm.vision, model.mllm.llm
        for key, data, want in (("siglip_size", self.siglip_size, vision.image_size),
                                ("patch_size", self.patch_size, vision.patch_size),
                                ("image_token_id", self.image_token_id, llm.image_token_id)):
            if data != want:
                raise cli.BadValue(f"--config.data.{key}={data} does not match the model "
                                 f"(its SigLIP/Phi config says {want}); set it to {want}")


def default_data_config() -> ml_collections.ConfigDict:
    """The `config.data` keys the input pipeline reads, with the paper's values: the `Settings`
    fields and the loader's options. Training configs start from it and override."""
    return ml_collections.ConfigDict(dict(
        **dataclasses.asdict(Settings()),
        on_error="raise",  # "raise" | "skip" (pipeline module docstring)
        batch_size=4,  # GLOBAL batch; per process: batch_size // process count
        worker_count=4,  # grain worker processes (0: in the main process)
        prefetch=2,  # per-worker buffer (batches)
        read_threads=16,  # grain ReadOptions.num_threads (per process)
    ))
