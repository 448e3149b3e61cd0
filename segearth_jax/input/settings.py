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

from segearth_jax import text
from segearth_jax.errors import BadValue

SPATIAL_GT = ("paper", "official")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Image and prompt geometry. No defaults: the values come from `config.data` (the paper's
    in configs/segearth_r2.py, with what each means) or from a model.json."""

    siglip_size: int  # SigLIP view (squashed, bicubic)
    image_size: int  # Swin canvas (long edge, bilinear, pad 128)
    patch_size: int  # SigLIP patch: spatial-loss grid = siglip_size // patch_size
    image_token_id: int  # placeholder id of the image span in input_ids
    max_len: int  # training sequence (image tokens included)
    max_seg: int  # [SEG] queries per example
    max_prompt_len: int  # generation prompt (image tokens included)
    template: str  # text.TEMPLATES
    seg_in_prompt: bool
    official_prompt: bool
    spatial_gt: str  # "paper" | "official" (preprocess.masks_to_grid)

    def __post_init__(self):
        if self.spatial_gt not in SPATIAL_GT:
            raise BadValue(f"--config.data.spatial_gt={self.spatial_gt!r}; expected one of "
                               f"{SPATIAL_GT}")
        if self.template not in text.TEMPLATES:
            raise BadValue(f"--config.data.template={self.template!r}; known: "
                               f"{text.TEMPLATES}")

    @classmethod
    def from_config(cls, config: Any) -> Settings:
        """From a `config.data` (ConfigDict or mapping), which has every field (and more)."""
        return cls(**{f.name: config[f.name] for f in dataclasses.fields(cls)})

    @classmethod
    def from_spec(cls, spec: dict[str, Any], where: str = "model.json") -> Settings:
        """From a model directory's `model.json` (its "input" entry, written by `to_spec`);
        a missing entry or field raises `BadValue` naming it."""
        entry = spec.get("input")
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in (entry or {})]
        if missing:
            raise BadValue(f"{where}: its \"input\" entry lacks {missing} (a model.json from an "
                           "older version: re-export or re-convert the model)")
        return cls(**{f.name: entry[f.name] for f in dataclasses.fields(cls)})

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
        """Raises `BadValue`, naming the flag, where the data disagree with the model (a
        `SegEarthR2Config`): SigLIP image size, patch size, image-token id."""
        vision, llm = model.mllm.vision, model.mllm.llm
        for key, data, want in (("siglip_size", self.siglip_size, vision.image_size),
                                ("patch_size", self.patch_size, vision.patch_size),
                                ("image_token_id", self.image_token_id, llm.image_token_id)):
            if data != want:
                raise BadValue(f"--config.data.{key}={data} does not match the model "
                                 f"(its SigLIP/Phi config says {want}); set it to {want}")

