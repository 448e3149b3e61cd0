"""Train-step time and memory, ours (JAX) vs a PyTorch reference train step of the same model and
losses, same run; and the cost of the spatial attention loss (on vs off).

    python experiments/bench_train.py --preset tiny      # CPU
    python experiments/bench_train.py --preset medium    # CPU, a wider/deeper LLM and 256 px
    python experiments/bench_train.py --preset lasers    # GPU: the paper's config, batch 4, bf16
    python experiments/bench_train.py --no-torch         # ours only
    python experiments/bench_train.py --spatial paper    # one variant of the spatial loss only
    python experiments/bench_train.py --preset lasers --compile-only  # any machine: compile
        # the full-size step from abstract shapes (Trainer.abstract_init), print its FLOPs (by
        # part; XLA's count beside) and XLA's memory analysis for this backend; nothing is
        # allocated or run
    python experiments/bench_train.py --preset lasers --compile-only --memory-report 20 \
        --json mem.json --config.model.mllm.llm.remat_policy=full   # the memory report

`--config.a.b=value` overrides any field of the preset's config (typed as the field is).
Memory report (`--compile-only`): per device, XLA's memory analysis of the compiled step
(arguments, outputs, temporaries, aliased, generated code; `per_device_bytes` = arguments +
outputs + temporaries - aliased), and with `--memory-report N` the N largest values live at the
memory peak with the op and model part that make them (`experiments/hlo.py`, from the compile's
buffer assignment and live ranges). For 8 simulated devices with fsdp:
`XLA_FLAGS=--xla_force_host_platform_device_count=8 ... --config.mesh.fsdp=8`. On the CPU, also
pass `--xla_disable_hlo_passes=while-loop-invariant-code-motion`: XLA:CPU converts each bf16
scanned stack's per-layer slice to f32 and that pass hoists the convert out of the loop as a
whole-stack f32 copy, which a GPU (native bf16) does not make (experiments/RESULTS.md).
`--json FILE` writes the figures (`devices`, `compile_s`, `per_device_bytes`, `breakdown`, ...).

Random batches with the pipeline's shapes (`segearth_jax.testing.random_batch`); weights are
random (the speed does not depend on them). Ours: `Trainer.step_fn`, the jitted step (median
over `--iters`), with the compiled step's memory (arguments + temporaries, from XLA's memory
analysis) and its FLOPs. The FLOPs are counted from the step's jaxpr (`segearth_jax.flops`:
matmuls and convolutions, a scanned layer stack once per layer): the model FLOPs are those of the
step traced without remat (what autodiff keeps: no backward through the frozen towers, activation
but no weight gradients through frozen Phi), the MFU on a GPU is model FLOPs / step time / the
chip's bf16 dense peak, and the HFU counts the remat's recomputed forward too. Attention is
counted through XLA's path (the full score matrix also when causal), whichever kernel runs.
XLA's own `cost_analysis` count is printed beside it but is not used: it counts the body of a
scanned stack once (lasers: 9.7 TFLOP against 57.9 counted here; RESULTS.md).

The reference is the official code's train step in PyTorch, built from transformers' modules of
the same config (HF-initialized weights, the two sides' weights differ): SigLIP truncated to the
layers that produce `hidden_states[-2]` (as ours; no head, no post-layernorm) -> Linear/GELU/Linear
projector -> embeddings spliced into `PhiForCausalLM`'s at the image-token rows (LoRA Linear
wrappers on the config's targets, PEFT's computation) -> forward with `labels` (transformers'
shifted cross-entropy), `output_hidden_states=True` and, with the spatial loss,
`output_attentions=True` under eager attention (the full [B, H, T, T] maps, as the official code
gets them; sdpa without it) -> last hidden states at the `[SEG]` positions -> `Linear(E -> C)` ->
the queries of HF's `Mask2FormerModel` (all `max_seg` of them, padding included, as ours; a
forward pre-hook on its transformer decoder puts them in place of the learned queries) ->
every decoder prediction -> `Mask2FormerLoss.loss_masks` (point-sampled BCE + Dice, uncertainty
sampling, on the valid `[SEG]`s only) -> the paper's spatial loss over the `[SEG]` rows of the
attention maps -> backward -> global-norm clip -> `torch.optim.AdamW`. Parameters train as the
config's `trainable` regexes say (matched against our path of each tensor; counts printed).
fp32 on the CPU; on a GPU bf16 autocast over fp32 weights (ours keeps frozen weights in bf16).
The references run first, before anything of ours is allocated (on a GPU XLA's preallocation is
turned off so that PyTorch gets the memory). PyTorch peak memory: on a GPU
`torch.cuda.max_memory_allocated`, on the CPU the growth of the process's peak resident set
(VmHWM reset before the models are built), both over what was allocated before the build: its
weights, gradients, AdamW state and activations (ours: `args` + `temp`).
PyTorch runs at each of `--torch-threads` (default: 1 and all cores). Prints median ms per step
and the ratio PyTorch / ours against the fastest PyTorch setting (> 1: we are faster).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import dataclasses
import gc
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss  # noqa: E402

from configs import segearth_r2, tiny  # noqa: E402
from experiments.bench_infer import hf_mask2former  # noqa: E402
from experiments.timing import cpu_memory_peak, cpu_memory_reset, timeit  # noqa: E402
from segearth_jax.flops import count_flops  # noqa: E402
from segearth_jax.models.lora import LoRAConfig  # noqa: E402
from segearth_jax.models.segearth_r2 import SegEarthR2Config  # noqa: E402
from segearth_jax.testing import random_batch  # noqa: E402
from segearth_jax.train import Trainer, abstract_batch  # noqa: E402

# bf16 dense peak FLOP/s, for MFU.
PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
GIB = 2**30


def apply_overrides(config, overrides: list[str]):
    """`--config.a.b=value` arguments -> `config` with those fields set, each value parsed as
    the type the field has (as ml_collections' `config_flags` does for the training program)."""
    for arg in overrides:
        m = re.fullmatch(r"--config\.([\w.]+)=(.*)", arg)
        if not m:
            raise SystemExit(f"unknown argument {arg!r} (config overrides: --config.a.b=value)")
        path, text = m.groups()
        parent, _, key = path.rpartition(".")
        node = config
        for part in filter(None, parent.split(".")):
            node = node[part]
        if key not in node:
            raise SystemExit(f"--config.{path}: no such config field")
        old = node[key]
        if isinstance(old, bool):
            if text.lower() not in ("true", "false"):
                raise SystemExit(f"--config.{path}: expected true or false, got {text!r}")
            value = text.lower() == "true"
        elif isinstance(old, int | float):
            value = type(old)(text)
        elif isinstance(old, str) or old is None:
            value = text
        else:
            value = type(old)(ast.literal_eval(text))
        with node.unlocked() if hasattr(node, "unlocked") else contextlib.nullcontext():
            node[key] = value
    return config


def preset(name: str, spatial: str, overrides: list[str] = ()):
    """The benchmark's config: `name`'s config, `spatial` loss variant, then `overrides`."""
    if name == "tiny":
        c = tiny.get_config()
    elif name == "medium":
        c = tiny.get_config()
        # Rotary on half of the 64 head dims: 0.4 (Phi-2's, 32 of 80) would rotate an odd 25,
        # which neither ours nor transformers' Phi supports.
        c.model.mllm.llm.update(dict(hidden_size=512, num_layers=8, num_heads=8,
                                     intermediate_size=2048, partial_rotary_factor=0.5))
        c.data.update(dict(image_size=256, max_len=256, batch_size=4))
    elif name == "lasers":
        c = segearth_r2.base()
        c.tokenizer = ""
    else:
        raise SystemExit(f"unknown preset {name}")
    c.loss.spatial_variant = spatial
    return apply_overrides(c, list(overrides))


# ---------------------------------------------------------------------------------------------
# Ours.


def step_flops(config) -> dict[str, Any]:
    """The step's model FLOPs (traced without remat) and hardware FLOPs (with the config's remat),
    counted from its jaxpr with XLA attention (cuDNN's kernel is opaque to the count); and the
    model FLOPs by part and phase ('flops_by_part')."""
    out = {}
    for key, remat in (("model_flops", False), ("hw_flops", True)):
        c = copy.deepcopy(config)
        for part in (c.model.mllm.vision, c.model.mllm.llm, c.model.seg_head.swin,
                     c.model.seg_head.decoder):
            part.attention_impl = "xla"
        if not remat:
            for part in (c.model.mllm.vision, c.model.mllm.llm, *(
                    c.model.seg_head[k] for k in ("swin", "pixel_decoder", "decoder"))):
                part.remat_policy = "none"
        trainer = Trainer(c)
        state, frozen = trainer.abstract_init()  # before step_fn: it sets the shardings
        count = count_flops(trainer.step_fn, state, frozen, abstract_batch(c))
        if count.while_loops:
            raise RuntimeError(f"{count.while_loops} while loop(s) in the step: FLOPs unknown")
        out[key] = count.total
        if not remat:
            out["flops_by_part"] = count.by_scope
    return out


def print_flops_by_part(by_part: dict[tuple[str, str], float]) -> None:
    total = sum(by_part.values())
    unit, scale = ("TFLOP", 1e12) if total >= 1e12 else ("GFLOP", 1e9)
    parts = sorted({p for p, _ in by_part}, key=lambda p: -sum(
        v for (q, _), v in by_part.items() if q == p))
    print(f"  model {unit} by part{'':<15}{'forward':>10}{'backward':>10}{'share':>8}")
    for p in parts:
        f, b = by_part.get((p, "forward"), 0.0), by_part.get((p, "backward"), 0.0)
        print(f"    {p or '(outside modules)':<30}{f / scale:10.3f}{b / scale:10.3f}"
              f"{100 * (f + b) / total:7.1f}%")


def xla_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost.get("flops", 0.0)) if cost else 0.0


def bench(config, iters: int) -> dict:
    trainer = Trainer(config)
    state, frozen = trainer.init(0)
    batch = trainer.global_batch(random_batch(config))
    compiled = trainer.step_fn.lower(state, frozen, batch).compile()
    mem = compiled.memory_analysis()
    box = {"state": state}

    def step():
        box["state"], box["metrics"] = compiled(box["state"], frozen, batch)
        jax.block_until_ready(box["metrics"])

    t = timeit(step, iters, warmup=1)
    n_train = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
    out = dict(step_s=t, xla_flops=xla_flops(compiled), **step_flops(config),
               loss=float(box["metrics"]["loss"]), trainable=n_train,
               args_gib=getattr(mem, "argument_size_in_bytes", 0) / GIB if mem else float("nan"),
               temp_gib=getattr(mem, "temp_size_in_bytes", 0) / GIB if mem else float("nan"))
    kind = jax.devices()[0].device_kind
    peak = next((v for k, v in PEAK.items() if k in kind), None)
    if peak and jax.default_backend() == "gpu":
        out["mfu"] = out["model_flops"] / t / (peak * jax.device_count())
        out["hfu"] = out["hw_flops"] / t / (peak * jax.device_count())
    return out


def memory_breakdown(compiled) -> dict[str, int]:
    """Per-device bytes of a compiled executable (XLA's memory analysis) and their total as it
    is held at once: arguments + outputs + temporaries - aliased (donated state shared by
    arguments and outputs)."""
    mem = compiled.memory_analysis()
    get = lambda k: int(getattr(mem, f"{k}_size_in_bytes", 0) or 0) if mem else 0
    out = {k: get(k) for k in ("argument", "output", "temp", "alias", "generated_code")}
    breakdown = {"arguments": out["argument"], "outputs": out["output"],
                 "temporaries": out["temp"], "aliased": out["alias"],
                 "generated_code": out["generated_code"]}
    total = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return {"per_device_bytes": total, "breakdown": breakdown}


def compile_only(config, memory_report: int = 0, flops: bool = True) -> dict:
    """Compiles the step from abstract shapes (no weights allocated, nothing run). With
    `memory_report` > 0, also the values live at the peak (that many, largest first) from the
    compile's buffer assignment (`experiments/hlo.py`)."""
    import time

    from experiments import hlo

    trainer = Trainer(config)
    state, frozen = trainer.abstract_init()
    batch = abstract_batch(config)
    t0 = time.perf_counter()
    lowered = trainer.step_fn.lower(state, frozen, batch)
    t1 = time.perf_counter()
    if memory_report:
        compiled, folder = hlo.compile_with_dump(lowered)
    else:
        compiled = lowered.compile()
    t2 = time.perf_counter()
    mem = memory_breakdown(compiled)
    size = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))
    out = dict(lower_s=t1 - t0, compile_s=t2 - t1, xla_flops=xla_flops(compiled),
               state_gib=size(state) / GIB, frozen_gib=size(frozen) / GIB,
               args_gib=mem["breakdown"]["arguments"] / GIB,
               temp_gib=mem["breakdown"]["temporaries"] / GIB, **mem,
               trainable=sum(x.size for x in jax.tree_util.tree_leaves(state.params)))
    if flops:
        out.update(step_flops(config))
    if memory_report:
        import shutil

        out["peak"] = hlo.peak_buffers(folder, module="jit_step")
        shutil.rmtree(folder, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------
# The PyTorch reference.


class LoRALinear(torch.nn.Module):
    """PEFT's LoRA Linear: `base(x) + lora_b(lora_a(dropout(x))) * alpha / r`, B zero-init."""

    def __init__(self, base: torch.nn.Linear, cfg: LoRAConfig):
        super().__init__()
        self.base = base
        self.lora_a = torch.nn.Linear(base.in_features, cfg.rank, bias=False)
        self.lora_b = torch.nn.Linear(cfg.rank, base.out_features, bias=False)
        torch.nn.init.zeros_(self.lora_b.weight)
        self.dropout = torch.nn.Dropout(cfg.dropout)
        self.scaling = cfg.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_b(self.lora_a(self.dropout(x))) * self.scaling


def our_path(prefix: str, torch_name: str) -> str:
    """Our '/'-joined path for a PyTorch module or parameter name, for the config's regexes:
    layer indices dropped (our layers are scanned), LoRA's `base.` wrapper and `lora_x.weight`
    folded to ours; other leaf names stay PyTorch's (`weight`, not `kernel`)."""
    name = re.sub(r"\.\d+(?=\.|$)", "", torch_name).replace(".base.", ".")
    name = re.sub(r"(lora_[ab])\.weight$", r"\1", name)
    return "/".join([prefix, *name.split(".")]) if name else prefix


@dataclasses.dataclass
class Reference:
    siglip: torch.nn.Module
    projector: torch.nn.Module
    phi: torch.nn.Module
    seg_projector: torch.nn.Module
    m2f: torch.nn.Module

    def groups(self) -> list[tuple[str, torch.nn.Module]]:
        """(our path prefix, module) for every parameter group."""
        pl = self.m2f.pixel_level_module
        return [("mllm/vision_tower", self.siglip), ("mllm/mm_projector", self.projector),
                ("mllm/llm", self.phi), ("seg_projector", self.seg_projector),
                ("seg_head/backbone", pl.encoder), ("seg_head/pixel_decoder", pl.decoder),
                ("seg_head/predictor", self.m2f.transformer_module)]


def build_reference(config) -> Reference:
    """The PyTorch modules of `config.model` (fp32, HF init, train mode), LoRA where the config
    puts it, `requires_grad` from `config.trainable`."""
    cfg = SegEarthR2Config.from_config(config.model)
    llm, vis = cfg.mllm.llm, cfg.mllm.vision
    phi = transformers.PhiForCausalLM(transformers.PhiConfig(
        vocab_size=llm.vocab_size, hidden_size=llm.hidden_size,
        num_hidden_layers=llm.num_layers, num_attention_heads=llm.num_heads,
        intermediate_size=llm.intermediate_size, partial_rotary_factor=llm.partial_rotary_factor,
        rope_theta=llm.rope_theta, layer_norm_eps=llm.layer_norm_eps, hidden_act="gelu_new",
        resid_pdrop=llm.resid_pdrop, embd_pdrop=llm.embd_pdrop, attention_dropout=0.0,
        tie_word_embeddings=False))
    if not llm.lm_head_bias:  # the official SegEarth-R2 rebuilds lm_head without a bias
        phi.lm_head = torch.nn.Linear(llm.hidden_size, llm.vocab_size, bias=False)
    for name, module in list(phi.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, torch.nn.Linear) and llm.lora.is_target(
                    our_path("mllm/llm", full)):
                setattr(module, child_name, LoRALinear(child, llm.lora))
    # Only the layers that produce hidden_states[select_layer], as ours computes.
    siglip = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
        hidden_size=vis.width, num_hidden_layers=cfg.mllm.vision_layers,
        num_attention_heads=vis.num_heads, intermediate_size=vis.mlp_dim,
        patch_size=vis.patch_size, image_size=vis.image_size, layer_norm_eps=vis.layer_norm_eps,
        vision_use_head=False))
    if cfg.mllm.vision_layers < vis.depth:
        getattr(siglip, "vision_model", siglip).post_layernorm = torch.nn.Identity()
    projector = torch.nn.Sequential(torch.nn.Linear(vis.width, llm.hidden_size), torch.nn.GELU(),
                                    torch.nn.Linear(llm.hidden_size, llm.hidden_size))
    seg_projector = torch.nn.Linear(llm.hidden_size, cfg.seg_head.decoder.hidden_dim)
    ref = Reference(siglip, projector, phi, seg_projector, hf_mask2former(cfg.seg_head, False))
    patterns = [re.compile(p) for p in config.trainable]
    for prefix, module in ref.groups():
        module.train()
        for name, p in module.named_parameters():
            p.requires_grad_(any(pat.fullmatch(our_path(prefix, name)) for pat in patterns))
    return ref


def spatial_loss_paper(attentions: tuple[torch.Tensor, ...], seg_idx: torch.Tensor,
                       img_idx: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                       eps: float, divide_by_all_rows: bool) -> torch.Tensor:
    """`losses.spatial_loss_paper` on the full attention maps: attentions, per layer
    [B, H, T, T]; seg_idx [B, Q] (clamped >= 0); img_idx [B, N]; target [B, Q, N]; valid [B, Q]."""
    b, q = seg_idx.shape
    n = img_idx.shape[1]
    attn = 0.0
    for a in attentions:  # the [SEG] rows, then the image columns; mean over heads
        h, t = a.shape[1], a.shape[-1]
        rows = a.gather(2, seg_idx[:, None, :, None].expand(b, h, q, t))  # [B, H, Q, T]
        attn = attn + rows.gather(3, img_idx[:, None, None, :].expand(b, h, q, n)).float().mean(1)
    attn = attn / len(attentions)  # [B, Q, N], mean over layers
    fg = (target != 0).float()
    bg = 1.0 - fg
    n_fg, n_bg = fg.sum(-1), bg.sum(-1)
    a_bg = (attn * bg).sum(-1) / n_bg.clamp(min=1.0)
    mse = ((attn - a_bg[..., None]) ** 2 * fg).sum(-1) / n_fg.clamp(min=1.0)
    used = valid & (n_fg > 0)
    rows = torch.where(used, -torch.log(mse + eps), torch.zeros_like(mse))
    denom = valid.sum() if divide_by_all_rows else used.sum()
    return rows.sum() / denom.clamp(min=1).float()


def bench_torch(config, iters: int, device: str) -> dict:
    """The reference train step: median seconds, peak memory over the pre-build allocation."""
    cuda = device == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = cpu_memory_reset()
    torch.manual_seed(0)
    ref = build_reference(config)
    for _, module in ref.groups():
        module.to(device)
    spatial = config.loss.spatial_variant
    if spatial not in ("none", "paper"):
        raise SystemExit(f"bench_train.py: spatial variant {spatial!r}: the reference does "
                         "'none' and 'paper'")
    # Eager attention returns the full maps for the spatial loss; sdpa is the fast path without.
    ref.phi.set_attn_implementation("eager" if spatial == "paper" else "sdpa")
    ref.siglip.set_attn_implementation("sdpa")

    lc = config.loss
    ref.m2f.config.update(dict(train_num_points=lc.num_points, oversample_ratio=lc.oversample_ratio,
                               importance_sample_ratio=lc.importance_sample_ratio))
    criterion = Mask2FormerLoss(ref.m2f.config, weight_dict={})
    params = [p for _, m in ref.groups() for p in m.parameters() if p.requires_grad]
    o = config.optim
    opt = torch.optim.AdamW(params, lr=o.lr, betas=(o.b1, o.b2), eps=o.eps,
                            weight_decay=o.weight_decay)
    vision_grad = any(p.requires_grad for p in ref.siglip.parameters())

    # The batch, NCHW images; the i-th valid [SEG] of an image pairs with its i-th mask.
    nb = random_batch(config)
    tt = lambda k, **kw: torch.from_numpy(np.ascontiguousarray(nb[k])).to(device, **kw)
    ids, labels = tt("input_ids").long(), tt("labels").long()
    sig_px = tt("siglip_pixels").permute(0, 3, 1, 2).contiguous()
    px = tt("pixels").permute(0, 3, 1, 2).contiguous()
    seg_pos, valid = tt("seg_positions").long(), tt("seg_valid").bool()
    masks = tt("masks").float()
    b, q = seg_pos.shape
    target = tt("masks_grid").reshape(b, q, -1)
    is_image = ids == config.data.image_token_id
    img_idx = is_image.nonzero()[:, 1].reshape(b, -1)  # [B, N] image-token columns
    seg_idx = seg_pos.clamp(min=0)
    mask_labels = [masks[i][valid[i]] for i in range(b)]
    indices = [(valid[i].nonzero()[:, 0], torch.arange(int(valid[i].sum()), device=device))
               for i in range(b)]
    num_masks = valid.sum().clamp(min=1).float()

    # The projected [SEG] states replace HF's learned queries: a forward pre-hook on the
    # transformer decoder swaps its `inputs_embeds` [Q, B, C]; the query position embedding is
    # zero, as ours.
    query = {}

    def inject(module, args, kwargs):
        kwargs["inputs_embeds"] = query["q"].transpose(0, 1)
        kwargs["query_position_embeddings"] = torch.zeros_like(kwargs["inputs_embeds"])
        return args, kwargs

    ref.m2f.transformer_module.decoder.register_forward_pre_hook(inject, with_kwargs=True)

    def loss_fn() -> torch.Tensor:
        with torch.set_grad_enabled(vision_grad):
            feats = ref.siglip(sig_px).last_hidden_state  # = hidden_states[-2] of the full tower
        feats = ref.projector(feats)
        emb = ref.phi.model.embed_tokens(ids.clamp(min=0))
        emb = emb.masked_scatter(is_image[..., None], feats.to(emb.dtype))
        out = ref.phi(inputs_embeds=emb, labels=labels, output_hidden_states=True,
                      output_attentions=spatial == "paper")
        hidden = out.hidden_states[-1]  # [B, T, E]
        seg_hidden = hidden.gather(1, seg_idx[..., None].expand(-1, -1, hidden.shape[-1]))
        query["q"] = ref.seg_projector(seg_hidden)
        bce = dice = 0.0
        for pred in ref.m2f(px).masks_queries_logits:  # P x [B, Q, h, w]
            parts = criterion.loss_masks(pred.float(), mask_labels, indices, num_masks)
            bce, dice = bce + parts["loss_mask"], dice + parts["loss_dice"]
        loss = out.loss + lc.bce_weight * bce + lc.dice_weight * dice
        if spatial == "paper":
            loss = loss + lc.spatial_weight * spatial_loss_paper(
                out.attentions, seg_idx, img_idx, target, valid, lc.spatial_eps,
                lc.spatial_divide_by_all_rows)
        return loss

    box = {}

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
            loss = loss_fn()
        loss.backward()
        if o.grad_clip and o.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, o.grad_clip)
        opt.step()
        box["loss"] = loss.detach()
        if cuda:
            torch.cuda.synchronize()

    t = timeit(step, iters, warmup=1)
    peak = ((torch.cuda.max_memory_allocated() - base) if cuda else cpu_memory_peak(base)) / GIB
    # Trainable tensors that got a gradient (HF's unused learned queries get none).
    return dict(step_s=t, peak_gib=peak, loss=float(box["loss"]),
                trainable=sum(p.numel() for p in params if p.grad is not None))


# ---------------------------------------------------------------------------------------------


def compile_only_main(args: argparse.Namespace, overrides: list[str]) -> None:
    from experiments import hlo

    n = jax.device_count()
    print(f"device: {jax.devices()[0].device_kind} x {n} ({jax.default_backend()}); jax "
          f"{jax.__version__}; preset {args.preset} {' '.join(overrides)}; XLA_FLAGS="
          f"{os.environ.get('XLA_FLAGS', '')!r}")
    results = {}
    for s in ("none", "paper") if args.spatial == "both" else (args.spatial,):
        r = compile_only(preset(args.preset, s, overrides), args.memory_report,
                         flops=not args.no_flops)
        results[s] = r
        b = r["breakdown"]
        flops = ("" if args.no_flops else
                 f"{r['model_flops'] / 1e12:.2f} TFLOP per step (model; with remat "
                 f"{r['hw_flops'] / 1e12:.2f}; XLA's count {r['xla_flops'] / 1e12:.2f}), ")
        print(f"spatial {s}: lower {r['lower_s']:.1f} s, compile {r['compile_s']:.1f} s, "
              f"{flops}trainable {r['trainable']:,} params; state {r['state_gib']:.2f} GiB, "
              f"frozen {r['frozen_gib']:.2f} GiB (global)", flush=True)
        print(f"  per device: {r['per_device_bytes'] / GIB:.2f} GiB = arguments "
              f"{b['arguments'] / GIB:.2f} + outputs {b['outputs'] / GIB:.2f} + temporaries "
              f"{b['temporaries'] / GIB:.2f} - aliased {b['aliased'] / GIB:.2f} GiB "
              f"(generated code {b['generated_code'] / GIB:.3f} GiB)", flush=True)
        if not args.no_flops:
            print_flops_by_part(r["flops_by_part"])
        if args.memory_report:
            hlo.print_peak(r["peak"], args.memory_report)
    if args.json:
        keep = lambda r: {k: v for k, v in r.items() if k not in ("peak", "flops_by_part")}
        top = results.get("paper") or next(iter(results.values()))
        doc = {"devices": n, "backend": jax.default_backend(), "preset": args.preset,
               "overrides": overrides, "xla_flags": os.environ.get("XLA_FLAGS", ""),
               **keep(top), "variants": {s: keep(r) for s, r in results.items()}}
        if args.memory_report:
            doc["peak_buffers"] = [dataclasses.asdict(b) for b in
                                   top["peak"].buffers[:args.memory_report]]
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "medium", "lasers"])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    parser.add_argument("--spatial", default="both", choices=["both", "none", "paper"],
                        help="the spatial loss variants to run (default: both, and their ratio)")
    parser.add_argument("--torch-threads", type=int, nargs="+", default=[1, 0],
                        help="PyTorch intra-op thread counts to time, 0: all cores; the ratio "
                             "is taken against the fastest (default: 1 and all cores)")
    parser.add_argument("--compile-only", action="store_true",
                        help="compile ours from abstract shapes; print FLOPs and memory only")
    parser.add_argument("--memory-report", type=int, default=0, metavar="N",
                        help="with --compile-only: the N largest values live at the memory peak "
                             "(op and model part), from the compile's buffer assignment")
    parser.add_argument("--no-flops", action="store_true",
                        help="with --compile-only: skip the FLOP count (two more traces)")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="with --compile-only: write the figures as JSON (for --spatial "
                             "both: the paper variant's at the top, each under 'variants')")
    args, overrides = parser.parse_known_args()
    if args.compile_only:
        compile_only_main(args, overrides)
        return
    if args.json or args.memory_report:
        raise SystemExit("--json and --memory-report go with --compile-only")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not args.no_torch:  # on a GPU, leave PyTorch the memory XLA would preallocate (75%)
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    thread_counts = sorted({n or os.cpu_count() or 1 for n in args.torch_threads})
    c = preset(args.preset, "none", overrides)
    d, cfg = c.data, SegEarthR2Config.from_config(c.model)
    llm = cfg.mllm.llm
    print(f"device: {jax.devices()[0].device_kind} x {jax.device_count()} "
          f"({jax.default_backend()}), torch on {device}; jax {jax.__version__}, torch "
          f"{torch.__version__}, transformers {transformers.__version__}")
    print(f"preset {args.preset}: Phi {llm.num_layers} x {llm.hidden_size} (LoRA rank "
          f"{llm.lora.rank}), SigLIP {cfg.mllm.vision_layers} of {cfg.mllm.vision.depth} layers x "
          f"{cfg.mllm.vision.width}, Swin {cfg.seg_head.swin.embed_dim} x "
          f"{list(cfg.seg_head.swin.depths)}, "
          f"{llm.dtype.name if hasattr(llm.dtype, 'name') else llm.dtype}; batch "
          f"{d.batch_size}, max_len {d.max_len}, canvas "
          f"{d.image_size}, siglip {d.siglip_size}, max_seg {d.max_seg}, {c.loss.num_points} "
          f"points; median of {args.iters} steps after 1 warmup")
    if not args.no_torch:
        mem = ("torch.cuda.max_memory_allocated" if device == "cuda" else
               "peak RSS growth from the build to the last step (VmHWM reset before)")
        print(f"torch: {'bf16 autocast' if device == 'cuda' else 'fp32'}, timed at "
              f"{thread_counts} intra-op thread(s), the ratio against the fastest; memory = "
              f"{mem}")

    # The references first: nothing of ours is allocated yet when their memory is measured.
    variants = ("none", "paper") if args.spatial == "both" else (args.spatial,)
    configs = {s: preset(args.preset, s, overrides) for s in variants}
    res = {}
    for s, c in configs.items():
        runs = {}
        for n_threads in [] if args.no_torch else thread_counts:
            torch.set_num_threads(n_threads)
            runs[n_threads] = bench_torch(c, args.iters, device)
        best = min(runs, key=lambda n: runs[n]["step_s"]) if runs else None
        res[s] = {"torch": runs.get(best), "torch_runs": runs, "torch_threads": best}
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    for s, c in configs.items():
        res[s]["jax"] = bench(c, args.iters)

    print(f"{'spatial':<8}{'ours ms':>10}{'torch ms':>10}{'torch/ours':>12}{'TFLOP':>9}"
          f"{'XLA TF':>8}"
          f"{'args GiB':>10}{'temp GiB':>10}{'torch GiB':>11}")
    for s, r in res.items():
        j, t = r["jax"], r["torch"]
        tcols = (f"{1e3 * t['step_s']:10.1f}{t['step_s'] / j['step_s']:11.2f}x" if t
                 else f"{'-':>10}{'-':>12}")
        mfu = (f"  MFU {100 * j['mfu']:.1f}% (HFU {100 * j['hfu']:.1f}%)" if "mfu" in j
               else "")
        print(f"{s:<8}{1e3 * j['step_s']:10.1f}{tcols}{j['model_flops'] / 1e12:9.3f}"
              f"{j['xla_flops'] / 1e12:8.3f}"
              f"{j['args_gib']:10.2f}{j['temp_gib']:10.2f}"
              + (f"{t['peak_gib']:11.2f}" if t else f"{'-':>11}") + mfu)
    for s, r in res.items():
        if r["torch_runs"]:
            print(f"{s}: torch ms per step by intra-op threads: " + ", ".join(
                f"{n}: {1e3 * t['step_s']:.1f}" for n, t in r["torch_runs"].items())
                + f" (the ratio uses {r['torch_threads']})")
    if len(res) == 2:
        cost = lambda k: res["paper"][k]["step_s"] / res["none"][k]["step_s"]
        print(f"spatial loss cost (paper / none step time): ours {cost('jax'):.3f}x"
              + ("" if args.no_torch else f", torch {cost('torch'):.3f}x"))
    r = res[variants[-1]]
    print(f"spatial {variants[-1]}:")
    print_flops_by_part(r["jax"]["flops_by_part"])
    print(f"trainable parameters: ours {r['jax']['trainable']:,}"
          + ("" if args.no_torch else f", torch {r['torch']['trainable']:,}"))
    print("last-step loss (sanity only: the weights differ): "
          + ", ".join(f"{s}: ours {v['jax']['loss']:.3f}"
                      + ("" if args.no_torch else f" torch {v['torch']['loss']:.3f}")
                      for s, v in res.items()))


if __name__ == "__main__":
    main()
