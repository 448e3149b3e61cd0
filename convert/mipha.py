"""Mipha-3B (HF layout, as published) -> our `Mipha` parameters.

    python -m convert.mipha --src MIPHA_DIR --out OUT_DIR [--variant mipha3b] [--dtype bfloat16]

Reads `model.safetensors[.index.json]` or `pytorch_model.bin[.index.json]` one tensor at a time,
renames by the table below (strict both ways), writes an orbax checkpoint, `model.json`, and the
tokenizer files. Key layout: tests/reference/mipha3b_keys.tsv.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from convert.common import (
    ConversionError,
    Gap,
    Progress,
    Rule,
    conv2d,
    convert_tensors,
    converter_parser,
    describe_gaps,
    hf_checkpoint_files,
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


def infer_variant(src: Path) -> str:
    config_path = src / "config.json"
    if not config_path.exists():
        raise ConversionError(f"{config_path} is missing; pass --variant")
    hf = json.loads(config_path.read_text())
    for name in VARIANTS:
        llm = MiphaConfig.from_variant(name).llm
        if (hf.get("hidden_size"), hf.get("num_hidden_layers"), hf.get("vocab_size")) == (
                llm.hidden_size, llm.num_layers, llm.vocab_size):
            return name
    raise ConversionError(f"{config_path}: hidden_size={hf.get('hidden_size')}, "
                          f"num_hidden_layers={hf.get('num_hidden_layers')} match no variant of "
                          f"{sorted(VARIANTS)}; pass --variant")


def convert(src: str | Path, out: str | Path, *, variant: str | None = None,
            dtype: str = "bfloat16", lm_head_bias: bool = True) -> Path:
    """Converts the Mipha directory `src` into `out`; returns `out`."""
    src = Path(src)
    if not src.is_dir():
        raise ConversionError(f"--src {src} is not a directory")
    variant = variant or infer_variant(src)
    cfg = MiphaConfig.from_variant(variant, lm_head_bias=lm_head_bias)
    unused, missing_ok = gaps(cfg)
    print(describe_gaps(unused, missing_ok), file=sys.stderr)
    total = sum(f.stat().st_size for f in hf_checkpoint_files(src))
    params = convert_tensors(read_hf_checkpoint(src), rules(), expected_params(cfg),
                             unused=unused, not_in_checkpoint=missing_ok,
                             dtype=np.dtype(dtype), progress=Progress(total))
    out = write_converted(out, params, {"kind": "mipha", "variant": variant, "dtype": dtype,
                                        "overrides": {"lm_head_bias": lm_head_bias},
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
                        help="drop lm_head.bias, as the official SegEarth-R2 does")
    args = parser.parse_args(argv)
    run_converter(convert, args, lm_head_bias=args.lm_head_bias)


if __name__ == "__main__":
    main()
