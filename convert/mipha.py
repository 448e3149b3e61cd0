"""Mipha-3B (HF layout, as published) -> our `Mipha` parameters.

    python -m convert.mipha --src MIPHA_DIR --out OUT_DIR [--variant mipha3b] [--dtype bfloat16]

The sizes come from the source (`infer_config`: config.json and the tensor shapes, checked
against each other), so a Mipha of any size converts; `--variant` names the preset that gives
what no shape shows (SigLIP's head count; default: the preset of the same widths). model.json
stores every size (`MiphaConfig.to_config`), so the model rebuilds from it alone.

Reads `model.safetensors[.index.json]` or `pytorch_model.bin[.index.json]` one tensor at a time,
renames by the table below (strict both ways), writes an orbax checkpoint, `model.json`, and the
tokenizer files. Key layout: tests/reference/mipha3b_keys.tsv.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from convert.common import (
    ConversionError,
    Gap,
    Progress,
    Rule,
    check_sizes,
    conv2d,
    convert_tensors,
    converter_parser,
    count_layers,
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
from segearth_jax.models.mipha import VARIANTS, Mipha, MiphaConfig

TOKENIZER_FILES = ("vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json",
                   "tokenizer_config.json", "tokenizer.json")

_V = r"model\.vision_tower\.vision_model"
_VL = _V + r"\.encoder\.layers\.(?P<layer>\d+)"
_LL = r"model\.layers\.(?P<layer>\d+)"


def rules() -> list[Rule]:
    """Mipha key -> our path. `{layer}` rows fill stacked (scanned) layers."""
    return [
        # Phi-2.
        Rule(r"model\.embed_tokens\.weight", "llm/model/embed_tokens/embedding"),
        *linear_rules(_LL + r"\.self_attn\.(?P<p>q_proj|k_proj|v_proj|dense)",
                      "llm/model/layers/self_attn/{p}"),
        *linear_rules(_LL + r"\.mlp\.(?P<p>fc1|fc2)", "llm/model/layers/mlp/{p}"),
        *norm_rules(_LL + r"\.input_layernorm", "llm/model/layers/input_layernorm"),
        *norm_rules(r"model\.final_layernorm", "llm/model/final_layernorm"),
        *linear_rules(r"lm_head", "llm/lm_head"),
        # SigLIP tower.
        Rule(_V + r"\.embeddings\.patch_embedding\.weight", "vision_tower/patch_embedding/kernel",
             conv2d),
        Rule(_V + r"\.embeddings\.patch_embedding\.bias", "vision_tower/patch_embedding/bias"),
        Rule(_V + r"\.embeddings\.position_embedding\.weight", "vision_tower/position_embedding"),
        *norm_rules(_VL + r"\.(?P<n>layer_norm1|layer_norm2)", "vision_tower/layers/{n}"),
        *linear_rules(_VL + r"\.self_attn\.(?P<p>q_proj|k_proj|v_proj|out_proj)",
                      "vision_tower/layers/self_attn/{p}"),
        *linear_rules(_VL + r"\.mlp\.(?P<p>fc1|fc2)", "vision_tower/layers/{p}"),
        *norm_rules(_V + r"\.post_layernorm", "vision_tower/post_layernorm"),
        # mlp2x_gelu projector: Sequential(Linear, GELU, Linear).
        *linear_rules(r"model\.mm_projector\.0", "mm_projector/fc1"),
        *linear_rules(r"model\.mm_projector\.2", "mm_projector/fc2"),
    ]


def gaps(cfg: MiphaConfig) -> tuple[list[Gap], list[Gap]]:
    """(unused checkpoint keys, our parameters not in the checkpoint) for this config."""
    unused = [Gap(_V + r"\.head\..*", "SigLIP attention-pooling head: Mipha uses patch tokens")]
    kept = cfg.vision_layers
    if kept < cfg.vision.depth:
        dropped = "|".join(str(i) for i in range(kept, cfg.vision.depth))
        unused += [
            Gap(_V + rf"\.encoder\.layers\.({dropped})\..*",
                f"select_layer={cfg.select_layer}: layers after hidden_states"
                f"[{cfg.select_layer}] are never computed"),
            Gap(_V + r"\.post_layernorm\..*", "applies only after the last layer"),
        ]
    if not cfg.llm.lm_head_bias:
        unused.append(Gap(r"lm_head\.bias", "the official SegEarth-R2 rebuilds lm_head as "
                                            "Linear(2560, 51200, bias=False)"))
    not_in_checkpoint = [Gap(r".*/lora_[ab]", "LoRA factors are created at training start")]
    return unused, not_in_checkpoint


def expected_params(cfg: MiphaConfig):
    """Shapes of our parameters, without allocating them."""
    llm = cfg.llm
    ids = jnp.zeros((1, 8), jnp.int32)
    pixels = jnp.zeros((1, cfg.vision.image_size, cfg.vision.image_size, 3), llm.dtype)
    return jax.eval_shape(Mipha(cfg).init, jax.random.key(0), ids, pixels)["params"]


_PATCH = "model.vision_tower.vision_model.embeddings.patch_embedding.weight"  # [D, 3, p, p]
_POSITIONS = "model.vision_tower.vision_model.embeddings.position_embedding.weight"  # [N, D]
_VISION_FC1 = "model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"  # [mlp, D]
_LLM_FC1 = "model.layers.0.mlp.fc1.weight"  # [intermediate, E]
_LM_HEAD = "lm_head.weight"  # [V, E]


def source_sizes(shapes: dict[str, tuple[int, ...]], hf: dict[str, Any], where: str
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(SigLIP sizes, Phi sizes) of a Mipha-layout checkpoint (also the MLLM part of a merged
    SegEarth-R2) from its tensor `shapes` and its config.json `hf` (checked against the shapes;
    the Phi head count and rotary settings come from it where present). The SigLIP sizes hold
    `grid`, patches per side, for `image_size` (which the shapes do not fix: 384 / 14 and
    378 / 14 both give 27)."""
    absent = [k for k in (_PATCH, _POSITIONS, _VISION_FC1, _LLM_FC1, _LM_HEAD) if k not in shapes]
    if absent:
        raise ConversionError(f"{where}: not a Mipha-layout checkpoint (no {absent})")
    width, _, patch, _ = shapes[_PATCH]
    grid = round(shapes[_POSITIONS][0] ** 0.5)
    vision = dict(width=width, patch_size=patch, grid=grid,
                  depth=count_layers(shapes, _VL + r"\..*"), mlp_dim=shapes[_VISION_FC1][0])
    vocab, hidden = shapes[_LM_HEAD]
    llm = dict(vocab_size=vocab, hidden_size=hidden,
               num_layers=count_layers(shapes, _LL + r"\..*"),
               intermediate_size=shapes[_LLM_FC1][0])
    check_sizes(where, {"hidden_size": hidden, "num_hidden_layers": llm["num_layers"],
                        "intermediate_size": llm["intermediate_size"]}, hf)
    llm.update({ours: hf[theirs] for ours, theirs in (
        ("num_heads", "num_attention_heads"), ("partial_rotary_factor", "partial_rotary_factor"),
        ("rope_theta", "rope_theta"), ("layer_norm_eps", "layer_norm_eps")) if theirs in hf})
    return vision, llm


def read_hf_config(src: Path) -> dict[str, Any]:
    """The source's config.json ({} when it has none)."""
    path = src / "config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def preset_for(vision: dict[str, Any], llm: dict[str, Any], where: str) -> str:
    """The Mipha preset of the same SigLIP and Phi widths (it gives what no shape shows)."""
    for name in VARIANTS:
        cfg = MiphaConfig.from_variant(name)
        if (cfg.vision.width, cfg.llm.hidden_size) == (vision["width"], llm["hidden_size"]):
            return name
    raise ConversionError(f"{where}: SigLIP width {vision['width']} and Phi width "
                          f"{llm['hidden_size']} match no preset of {sorted(VARIANTS)}; pass "
                          "--variant (the preset that gives the SigLIP head count)")


def with_image_size(vision: dict[str, Any], preset: MiphaConfig) -> dict[str, Any]:
    """`vision` sizes (with `grid`) -> SigLIP fields: the preset's image size where it gives the
    same patch grid (384 for So400m/14), else grid x patch."""
    sizes = {k: v for k, v in vision.items() if k != "grid"}
    grid, patch = vision["grid"], vision["patch_size"]
    same = preset.vision.image_size // patch == grid
    sizes["image_size"] = preset.vision.image_size if same else grid * patch
    return sizes


def infer_config(src: Path, variant: str | None = None, **llm: Any) -> MiphaConfig:
    """The MiphaConfig of the checkpoint `src`: its sizes (`source_sizes`) over the preset
    `variant` (default: the one of the same widths), Phi fields updated by `llm`."""
    vision_sizes, llm_sizes = source_sizes(hf_checkpoint_shapes(src), read_hf_config(src),
                                           str(src))
    variant = variant or preset_for(vision_sizes, llm_sizes, str(src))
    vision_sizes = with_image_size(vision_sizes, MiphaConfig.from_variant(variant))
    cfg = MiphaConfig.from_variant(variant, vision=vision_sizes, llm={**llm_sizes, **llm})
    for part, rest in (("SigLIP", cfg.vision.width % cfg.vision.num_heads),
                       ("Phi", cfg.llm.hidden_size % cfg.llm.num_heads)):
        if rest:
            raise ConversionError(f"{src}: the {part} width does not divide by the head count "
                                  f"of preset {variant!r}; pass the --variant it was built as")
    return cfg


def convert(src: str | Path, out: str | Path, *, variant: str | None = None,
            dtype: str = "bfloat16", lm_head_bias: bool = True) -> Path:
    """Converts the Mipha directory `src` into `out`; returns `out`."""
    src = Path(src)
    if not src.is_dir():
        raise ConversionError(f"--src {src} is not a directory")
    cfg = infer_config(src, variant, lm_head_bias=lm_head_bias)
    unused, missing_ok = gaps(cfg)
    print(describe_gaps(unused, missing_ok), file=sys.stderr)
    total = sum(f.stat().st_size for f in hf_checkpoint_files(src))
    params = convert_tensors(read_hf_checkpoint(src), rules(), expected_params(cfg),
                             unused=unused, not_in_checkpoint=missing_ok,
                             dtype=np.dtype(dtype), progress=Progress(total))
    out = write_converted(out, params, {"kind": "mipha", "dtype": dtype,  # as stored
                                        # computed in float32 unless a config says otherwise
                                        "model": cfg.to_config("float32", "float32"),
                                        "source": str(src.absolute())})
    copy_tokenizer(src, out)
    return out


def copy_tokenizer(src: Path, out: Path) -> list[str]:
    """Copies the tokenizer files of `src` (those of `TOKENIZER_FILES` present) into
    `out/tokenizer/`; returns their names."""
    names = [f for f in TOKENIZER_FILES if (src / f).exists()]
    if names:
        (out / "tokenizer").mkdir()
        for f in names:
            shutil.copy2(src / f, out / "tokenizer" / f)
    return names


@cli.entry_point
def main(argv: list[str] | None = None) -> None:
    parser = converter_parser(__doc__, "Mipha-3B checkpoint directory (HF layout)", VARIANTS,
                              None, default_dtype="bfloat16")
    parser.add_argument("--no-lm-head-bias", dest="lm_head_bias", action="store_false",
                        help="Drop lm_head.bias, as the official SegEarth-R2 does.")
    args = parser.parse_args(argv)
    run_converter(convert, args, lm_head_bias=args.lm_head_bias)


if __name__ == "__main__":
    main()
