"""A trained SegEarth-R2 checkpoint (merged HF directory, as the official code saves it) -> our
`SegEarthR2` parameters.

    python -m convert.segearth_r2 --src MERGED_DIR --out OUT_DIR [--variant segearth_r2|tiny]
                                  [--dtype float32|bfloat16] [--dry-run]

Input: the directory `segearth_r2/train/merge_lora_weights_and_save_hf_model.py` writes: it loads
the DeepSpeed training state into `SegEarthR2` (fp16), folds the LoRA factors in
(`merge_and_unload`) and calls `save_pretrained(state_dict=model.state_dict())` (safetensors,
sharded with an index above 5 GB; `pytorch_model.bin[.index.json]` is read too) and
`tokenizer.save_pretrained`. So the keys are the `state_dict` names of the official `SegEarthR2`
(llava_phi.py), without `base_model.model.` and without LoRA factors:

  key (official)                      -> our path                  rename table (convert.*)
  model.{embed_tokens,layers,final_layernorm}.*, lm_head.weight,
  model.vision_tower.vision_model.*, model.mm_projector.{0,2}.*
                                      -> mllm/...                  mipha.rules
  model.vision_tower_mask.*           -> seg_head/backbone/...     swin.official_rules
  pixel_decoder.*                     -> seg_head/pixel_decoder/   m2f_pixel_decoder.d2_rules
  predictor.*                         -> seg_head/predictor/       m2f_transformer_decoder.d2_rules
  SEG_token_projector.{weight,bias}   -> seg_projector/{kernel,bias}  (Linear(E, 256))

What differs from the published checkpoints those tables were written for (no lm_head bias,
the resized embedding, the Swin tower's names, the Mask2Former-Simplify FPN, the predictor's
unused tables, merged LoRA), with the evidence: docs/checkpoints.md.

Unused checkpoint keys (listed as `Gap`s, printed at the start): SigLIP's pooling head, its last
layer and post-layernorm (Mipha feeds hidden_states[-2]), the Swin `relative_position_index`
buffers, the predictor tables above. Everything else must match a rule, and every parameter of
our tree must be filled (strict both ways, full diff in one `ConversionError`).

Output: orbax params, `model.json` with `{"kind": "segearth_r2", "model": {"mllm": ...,
"seg_head": ...}, "input": ...}` (`SegEarthR2Config.from_config(spec["model"])` rebuilds the
model, every size explicit; "input", the inputs it was trained on: the official prompt token for
token and the model's SigLIP geometry, `input_spec`), and the tokenizer files under
`tokenizer/`. The official merge writes fp16 tensors: `--dtype float32` stores them exactly,
`bfloat16` rounds them. `--dry-run` checks names and shapes only.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict

from convert import m2f_pixel_decoder, m2f_transformer_decoder, mask2former, mipha, swin
from convert.common import (
    Array,
    ConversionError,
    Gap,
    Progress,
    Rule,
    conv2d,
    convert_tensors,
    converter_parser,
    describe_gaps,
    hf_checkpoint_files,
    hf_checkpoint_shapes,
    linear_rules,
    norm_rules,
    read_hf_checkpoint,
    run_converter,
    write_converted,
)
from segearth_jax import cli
from segearth_jax.input.settings import Settings
from segearth_jax.models.lora import LoRAConfig
from segearth_jax.models.mipha import MiphaConfig
from segearth_jax.models.seg_head import SegHeadConfig
from segearth_jax.models.segearth_r2 import SegEarthR2, SegEarthR2Config

# Our variant -> (Mipha variant, segmentation-head variant).
VARIANTS: dict[str, tuple[str, str]] = {
    "segearth_r2": ("mipha3b", "swin-b"),  # Mipha-3B (SigLIP So400m + Phi-2) + Swin-B Mask2Former
    "tiny": ("tiny", "tiny"),
}

SWIN, PIXEL_DECODER, PREDICTOR = r"model\.vision_tower_mask\.", r"pixel_decoder\.", r"predictor\."
MLLM, HEAD = "mllm", "seg_head"
# Mask2Former-Simplify FPN convs: nn.Sequential(Conv2d(bias=True), GroupNorm, ReLU).
_FPN = PIXEL_DECODER + r"(?P<m>(?:adapter|layer)_\d+)"
_FPN_BIAS = _FPN + r"\.0\.bias"


def model_config(variant: str, dtype: str = "float32", simplify_fpn: bool = True,
                 sizes: dict[str, dict[str, Any]] | None = None) -> SegEarthR2Config:
    """The official inference model (LoRA merged, no lm_head bias, Mask2Former-Simplify FPN
    unless `simplify_fpn` is False), computing and storing parameters in `dtype`: the preset
    `variant`, each part's fields updated by `sizes` (part -> fields; `infer_sizes`)."""
    llm_variant, head_variant = VARIANTS[variant]
    sizes = sizes or {}
    jdtype = jnp.dtype(dtype)
    vision = sizes.get("vision")
    if vision is not None:
        vision = mipha.with_image_size(vision, MiphaConfig.from_variant(llm_variant))
    mllm = MiphaConfig.from_variant(
        llm_variant, dtype=jdtype, param_dtype=jdtype, vision=vision,
        llm={**sizes.get("llm", {}), "lm_head_bias": False,
             "lora": LoRAConfig(rank=0, alpha=16.0, dropout=0.0)})
    head = SegHeadConfig.from_variant(
        head_variant, dtype=jdtype, param_dtype=jdtype, swin=sizes.get("swin"),
        pixel_decoder={**sizes.get("pixel_decoder", {}), "simplify_fpn": simplify_fpn},
        decoder=sizes.get("decoder"))
    return SegEarthR2Config(mllm, head)


def model_spec(variant: str, dtype: str = "float32", simplify_fpn: bool = True,
               sizes: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The `model` part of model.json: `model_config(...).to_config()`."""
    return model_config(variant, dtype, simplify_fpn, sizes).to_config()


def input_spec(cfg: SegEarthR2Config) -> dict[str, Any]:
    """The "input" part of model.json: the paper's geometry and prompt format
    (configs/segearth_r2.py: the official prompt token for token, docs/conventions.md), the
    SigLIP view and image-token id the model's."""
    from configs import segearth_r2 as paper

    data = dict(paper.base().data)
    data.update(siglip_size=cfg.mllm.vision.image_size, patch_size=cfg.mllm.vision.patch_size,
                image_token_id=cfg.mllm.llm.image_token_id)
    return Settings.from_config(data).to_spec()


def _prefixed(rules: list[Rule], prefix: str) -> list[Rule]:
    """The same rules with `prefix/` in front of every target."""
    add = lambda t: f"{prefix}/{t}"
    return [dataclasses.replace(r, target=tuple(map(add, r.target)) if isinstance(r.target, tuple)
                                else add(r.target)) for r in rules]


def pad_rows(rows: int) -> Callable[[Array], Array]:
    """Zero rows appended up to `rows` (a resized-down embedding); larger inputs pass unchanged
    so that the shape check reports them."""
    def pad(x: Array) -> Array:
        if x.shape[0] >= rows:
            return x
        return np.concatenate([x, np.zeros((rows - x.shape[0], *x.shape[1:]), x.dtype)])
    return pad


def rules(cfg: SegEarthR2Config) -> list[Rule]:
    """Official key -> our path. The first matching rule wins."""
    return [
        # Before the Mipha table: the resized-down embedding (see the module docstring).
        Rule(r"model\.embed_tokens\.weight", f"{MLLM}/llm/model/embed_tokens/embedding",
             pad_rows(cfg.mllm.llm.vocab_size)),
        *_prefixed(mipha.rules(), MLLM),
        *swin.official_rules(SWIN, f"{HEAD}/backbone"),
        # Mask2Former-Simplify's Sequential FPN convs, before detectron2's names.
        Rule(_FPN + r"\.0\.weight", HEAD + "/pixel_decoder/{m}/conv/kernel", conv2d),
        Rule(_FPN_BIAS, HEAD + "/pixel_decoder/{m}/conv/bias"),
        *norm_rules(_FPN + r"\.1", HEAD + "/pixel_decoder/{m}/norm"),
        *m2f_pixel_decoder.d2_rules(PIXEL_DECODER, f"{HEAD}/pixel_decoder"),
        *m2f_transformer_decoder.d2_rules(PREDICTOR, f"{HEAD}/predictor"),
        *linear_rules(r"SEG_token_projector", "seg_projector"),
    ]


def gaps(cfg: SegEarthR2Config) -> tuple[list[Gap], list[Gap]]:
    """(unused checkpoint keys, our parameters not in the checkpoint)."""
    mllm_unused, mllm_missing = mipha.gaps(cfg.mllm)
    p = PREDICTOR
    unused = [
        *mllm_unused,
        *swin.official_unused(SWIN),
        *m2f_transformer_decoder.d2_unused(p),
        Gap(p + r"(SEG_query_embed|new_query_embed)\.weight",
            "read only with use_seg_query=True (new_query_embed only for its shape: the query "
            "position embedding is zero)"),
        *(Gap(p + pattern, "[SEG]-class head: forward_prediction_heads uses it only when given "
                           "SEG_embedding, which use_seg_query=False never passes")
          for pattern in (r"(SEG_proj|seg_proj_after_norm)\.layers\.\d+\.(weight|bias)",
                          r"SEG_norm\.(weight|bias)")),
    ]
    return unused, mllm_missing  # `.*/lora_[ab]`: matches under mllm/ too


def expected_params(cfg: SegEarthR2Config):
    """Shapes of our parameters (jax.eval_shape: nothing allocated)."""
    image = cfg.mllm.vision.image_size
    args = (jnp.zeros((1, 8), jnp.int32), jnp.zeros((1, image, image, 3), jnp.float32),
            jnp.zeros((1, 128, 128, 3), jnp.float32), jnp.zeros((1, 1), jnp.int32),
            jnp.ones((1, 1), bool))
    return jax.eval_shape(SegEarthR2(cfg).init, jax.random.key(0), *args)["params"]


def _fpn_biases(source: Iterator[tuple[str, Callable[[], Array], int]], expected_paths: set[str]
                ) -> Iterator[tuple[str, Callable[[], Array], int]]:
    """Passes the FPN conv biases on when our model has them; otherwise drops them if exactly
    zero and raises `ConversionError` if not (our detectron2-style FPN convs have no bias)."""
    for key, load, nbytes in source:
        m = re.fullmatch(_FPN_BIAS, key)
        if m and f"{HEAD}/pixel_decoder/{m['m']}/conv/bias" not in expected_paths:
            x = load()
            if np.any(x != 0):
                raise ConversionError(
                    f"{key}: a non-zero bias (max |b| = {float(np.max(np.abs(x))):.3g}) on an "
                    f"FPN conv that our pixel decoder builds without bias (detectron2 layout); "
                    f"the model needs {HEAD}/pixel_decoder/{m['m']}/conv/bias (and the ReLU "
                    f"after adapter_k's GroupNorm) to reproduce Mask2Former-Simplify")
            continue
        yield key, load, nbytes


def infer_sizes(src: Path) -> dict[str, dict[str, Any]]:
    """The sizes of the merged checkpoint `src` that its tensor shapes (and config.json) show:
    part ("vision", "llm", "swin", "pixel_decoder", "decoder") -> fields (the Swin backbone
    entirely). The head counts of SigLIP and the two decoders, which no shape shows, come from
    the preset."""
    shapes = hf_checkpoint_shapes(src)
    key = lambda prefix, rest: prefix.replace("\\", "") + rest  # a regex prefix as a key
    vision, llm = mipha.source_sizes(shapes, mipha.read_hf_config(src), str(src))
    head = mask2former.source_sizes(
        shapes, (key(SWIN, ""), key(PIXEL_DECODER, ""), key(PREDICTOR, "")), str(src))
    return {"vision": vision, "llm": llm, **head}


def infer_variant(sizes: dict[str, dict[str, Any]], where: str) -> str:
    """The preset of the same LLM, Swin and decoder widths (it gives what no shape shows)."""
    for name in VARIANTS:
        cfg = model_config(name)
        if (cfg.mllm.llm.hidden_size, cfg.seg_head.swin.embed_dim,
                cfg.seg_head.pixel_decoder.conv_dim) == (
                sizes["llm"]["hidden_size"], sizes["swin"]["embed_dim"],
                sizes["pixel_decoder"]["conv_dim"]):
            return name
    raise ConversionError(f"{where}: its widths match no preset of {sorted(VARIANTS)}; pass "
                          "--variant (the preset that gives the head counts)")


def convert(src: str | Path, out: str | Path, *, variant: str | None = None,
            dtype: str = "bfloat16", dry_run: bool = False, simplify_fpn: bool = True) -> Path:
    """Converts the merged SegEarth-R2 directory `src` into `out`; returns `out`. With `dry_run`
    only names and shapes are checked and nothing is written. `simplify_fpn=False` targets the
    detectron2 FPN (no conv biases, no lateral ReLU): only zero FPN biases convert then."""
    src = Path(src)
    if not src.is_dir():
        raise ConversionError(f"--src {src} is not a directory")
    sizes = infer_sizes(src)
    variant = variant or infer_variant(sizes, str(src))
    cfg = model_config(variant, dtype, simplify_fpn, sizes)
    unused, missing_ok = gaps(cfg)
    print(describe_gaps(unused, missing_ok), file=sys.stderr)
    expected = expected_params(cfg)
    total = sum(f.stat().st_size for f in hf_checkpoint_files(src))
    source = _fpn_biases(read_hf_checkpoint(src), set(flatten_dict(expected, sep="/")))
    params = convert_tensors(source, rules(cfg), expected, unused=unused,
                             not_in_checkpoint=missing_ok, dtype=np.dtype(dtype),
                             progress=Progress(total), dry_run=dry_run)
    if dry_run:
        n = len(jax.tree_util.tree_leaves(params))
        print(f"dry run: all {n} parameters match; nothing written", file=sys.stderr)
        return Path(out)
    out = write_converted(out, params, {"kind": "segearth_r2", "variant": variant,
                                        "model": cfg.to_config(), "input": input_spec(cfg),
                                        "source": str(src.absolute())})
    mipha.copy_tokenizer(src, out)
    return out


@cli.entry_point
def main(argv: list[str] | None = None) -> None:
    parser = converter_parser(__doc__, "merged SegEarth-R2 directory (HF layout)", VARIANTS, None,
                              default_dtype="bfloat16")
    parser.add_argument("--dry-run", action="store_true",
                        help="Check names and shapes only; write nothing.")
    parser.add_argument("--detectron2-fpn", action="store_true",
                        help="Build the detectron2 FPN (no conv bias, no lateral ReLU) instead "
                             "of the official Mask2Former-Simplify one.")
    args = parser.parse_args(argv)
    run_converter(convert, args, dry_run=args.dry_run, simplify_fpn=not args.detectron2_fpn)


if __name__ == "__main__":
    main()

