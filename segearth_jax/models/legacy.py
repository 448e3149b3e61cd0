"""model.json files of the version before every size was explicit (before issue 24), expanded
from the named presets they refer to (the presets still exist, with the same sizes).

What those versions wrote:
  kind segearth_r2 (training exports, convert.segearth_r2): "model": {"mllm": {"variant",
      "dtype", "param_dtype", "lora", Phi fields...}, "seg_head": {"variant", "dtype",
      "param_dtype", "swin": {...}, "pixel_decoder": {...}, mask-decoder fields...}}; SigLIP took
      the LLM's `attention_impl`; Swin and the mask decoder spelled rematerialization `remat: bool`,
      the pixel decoder `remat: "none" | "layer" | "sampling"` (or a bool).
  kind mipha (convert.mipha): no "model"; "variant" and "overrides" (Phi fields), float32 compute.
  kind seg_head (convert.mask2former): no "model"; "variant", float32 compute.
A key the old version did not write stays in place, so the explicit form's check
(`from_config`) names it.
"""

from __future__ import annotations

from typing import Any

from segearth_jax.models.mipha import MiphaConfig
from segearth_jax.models.seg_head import SegHeadConfig

# The old `remat` values -> the `remat_policy` every stack spells now.
_REMAT = {False: "none", True: "full", "none": "none", "layer": "full", "sampling": "sampling"}


def is_legacy(spec: dict[str, Any]) -> bool:
    """Whether `spec` (a model.json) names presets instead of holding every size."""
    model = spec.get("model")
    if model is None:
        return spec.get("kind") in ("mipha", "seg_head") and "variant" in spec
    return spec.get("kind") == "segearth_r2" and "variant" in dict(model.get("mllm") or {})


def expand(spec: dict[str, Any]) -> dict[str, Any]:
    """The explicit "model" entry (what a converter or an export writes now) of an old
    model.json `spec` (`is_legacy`)."""
    if spec["kind"] == "mipha":
        return MiphaConfig.preset(spec["variant"], llm=dict(spec.get("overrides") or {}))
    if spec["kind"] == "seg_head":
        return SegHeadConfig.preset(spec["variant"])
    model = spec["model"]
    return {"mllm": _mllm(dict(model["mllm"])), "seg_head": _seg_head(dict(model["seg_head"]))}


def _mllm(old: dict[str, Any]) -> dict[str, Any]:
    variant, dtype, param_dtype = old.pop("variant"), old.pop("dtype"), old.pop("param_dtype")
    vision = {"attention_impl": old.get("attention_impl", "auto")}  # as the old version built it
    return MiphaConfig.preset(variant, dtype=dtype, param_dtype=param_dtype, vision=vision,
                              llm=old)


def _seg_head(old: dict[str, Any]) -> dict[str, Any]:
    variant, dtype, param_dtype = old.pop("variant"), old.pop("dtype"), old.pop("param_dtype")
    parts = {"swin": _remat(old.pop("swin", {})),
             "pixel_decoder": _remat(old.pop("pixel_decoder", {})),
             "decoder": _remat(old)}  # the rest: the old version's mask-decoder overrides
    return SegHeadConfig.preset(variant, dtype=dtype, param_dtype=param_dtype, **parts)


def _remat(part: dict[str, Any]) -> dict[str, Any]:
    """`remat` -> `remat_policy`; an unknown value is kept, so the check names it."""
    part = dict(part)
    if "remat" in part and part["remat"] in _REMAT:
        part["remat_policy"] = _REMAT[part.pop("remat")]
    return part
