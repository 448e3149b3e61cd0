"""A tiny random Mipha checkpoint in the published HF layout, built from transformers' PyTorch
modules (for the parity tests and the quick-start demo; nothing is downloaded).

    python -m convert.tiny_mipha --out DIR [--format safetensors|sharded|bin] [--seed 0]

The PyTorch modules match our `tiny` variant: `PhiForCausalLM` (Phi-2 architecture),
`SiglipVisionModel` and the `mlp2x_gelu` projector, saved under Mipha's key names
(`model.vision_tower.vision_model.*`, `model.mm_projector.{0,2}.*`, Phi keys as is).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import transformers

from segearth_jax import cli
from segearth_jax.models.mipha import MiphaConfig

FORMATS = ("safetensors", "sharded", "bin")


def torch_modules(seed: int = 0, variant: str = "tiny", randomize: bool = True,
                  config: MiphaConfig | None = None):
    """(PhiForCausalLM, SiglipVisionModel, projector) with random weights, fp32, eval mode.

    randomize: redraw every tensor from N(0, 0.2) (tests); False keeps HF's initialization.
    config: the sizes (any; default: the preset `variant`'s).
    """
    cfg = config or MiphaConfig.from_variant(variant)
    torch.manual_seed(seed)
    llm, vis = cfg.llm, cfg.vision
    phi = transformers.PhiForCausalLM(transformers.PhiConfig(
        vocab_size=llm.vocab_size, hidden_size=llm.hidden_size,
        num_hidden_layers=llm.num_layers, num_attention_heads=llm.num_heads,
        intermediate_size=llm.intermediate_size, partial_rotary_factor=llm.partial_rotary_factor,
        rope_theta=llm.rope_theta, layer_norm_eps=llm.layer_norm_eps, hidden_act="gelu_new",
        resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, tie_word_embeddings=False,
        attn_implementation="eager"))
    siglip = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
        hidden_size=vis.width, num_hidden_layers=vis.depth, num_attention_heads=vis.num_heads,
        intermediate_size=vis.mlp_dim, patch_size=vis.patch_size, image_size=vis.image_size,
        layer_norm_eps=vis.layer_norm_eps, attn_implementation="eager"))
    projector = torch.nn.Sequential(torch.nn.Linear(vis.width, llm.hidden_size), torch.nn.GELU(),
                                    torch.nn.Linear(llm.hidden_size, llm.hidden_size))
    # HF init leaves some tensors (biases, LayerNorms) at 0/1; randomize everything so that a
    # wrong rename or transpose cannot hide behind a constant.
    with torch.no_grad():
        for module in (phi, siglip, projector) if randomize else ():
            for p in module.parameters():
                p.copy_(torch.randn_like(p) * 0.2)
    return phi.eval(), siglip.eval(), projector.eval()


def mipha_state_dict(phi, siglip, projector) -> dict[str, torch.Tensor]:
    """The modules' weights under Mipha-3B's key names."""
    sd = {k: v for k, v in phi.state_dict().items()}
    for k, v in siglip.state_dict().items():
        k = k.removeprefix("vision_model.")
        sd[f"model.vision_tower.vision_model.{k}"] = v
    for k, v in projector.state_dict().items():
        sd[f"model.mm_projector.{k}"] = v
    return {k: v.contiguous() for k, v in sd.items()}


def write_tokenizer(out: Path, vocab_size: int) -> None:
    """A byte-level BPE (GPT-2 style, like Mipha's) trained on a few sentences."""
    from segearth_jax.text import train_tokenizer

    text = ["A chat between a curious user and an artificial intelligence assistant.",
            "USER: <image> Please segment the airplane and the tennis court. ASSISTANT: "
            "Sure, it is <p>airplane</p>[SEG] and <p>tennis court</p>[SEG].",
            "buildings, roads, water, trees, ships, harbours, runways, storage tanks"] * 4
    train_tokenizer(out, text, vocab_size=min(vocab_size - 8, 400))


def write_checkpoint(out: str | Path, fmt: str = "safetensors", seed: int = 0,
                     variant: str = "tiny", config: MiphaConfig | None = None) -> Path:
    """Writes a random Mipha-layout checkpoint (weights, config.json, tokenizer) to `out`, of
    the sizes of `config` (default: the preset `variant`)."""
    from safetensors.torch import save_file

    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} not in {FORMATS}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    phi, siglip, projector = torch_modules(seed, variant, config=config)
    sd = mipha_state_dict(phi, siglip, projector)
    if fmt == "safetensors":
        save_file(sd, out / "model.safetensors", metadata={"format": "pt"})
    elif fmt == "bin":
        torch.save(sd, out / "pytorch_model.bin")
    else:  # two shards and an index, as save_pretrained writes them.
        keys = list(sd)
        shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
                  "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
        for name, ks in shards.items():
            save_file({k: sd[k] for k in ks}, out / name, metadata={"format": "pt"})
        (out / "model.safetensors.index.json").write_text(json.dumps({
            "metadata": {"total_size": sum(v.numel() * v.element_size() for v in sd.values())},
            "weight_map": {k: name for name, ks in shards.items() for k in ks}}, indent=2))
    llm = (config or MiphaConfig.from_variant(variant)).llm
    (out / "config.json").write_text(json.dumps({
        "model_type": "mipha_phi", "architectures": ["MiphaPhiForCausalLM"],
        "hidden_size": llm.hidden_size, "num_hidden_layers": llm.num_layers,
        "num_attention_heads": llm.num_heads, "intermediate_size": llm.intermediate_size,
        "partial_rotary_factor": llm.partial_rotary_factor, "vocab_size": llm.vocab_size,
        "mm_projector_type": "mlp2x_gelu", "torch_dtype": "float32"}, indent=2))
    write_tokenizer(out, llm.vocab_size)
    return out


@cli.entry_point
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--out", required=True,
                        help="Required: the output directory (new, or empty).")
    parser.add_argument("--format", choices=FORMATS, default="safetensors",
                        help="The weight file layout (default: %(default)s).")
    parser.add_argument("--seed", type=int, default=0,
                        help="The seed of the random weights (default: %(default)s).")
    args = parser.parse_args(argv)
    cli.check_new_dir(args.out)
    print(f"wrote {write_checkpoint(args.out, args.format, args.seed)}")


if __name__ == "__main__":
    main()
