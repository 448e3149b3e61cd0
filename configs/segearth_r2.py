"""SegEarth-R2 training configs, one per dataset: `--config configs/segearth_r2.py:VARIANT`.

VARIANT (default `lasers`): `lasers` (the paper's main setup: AdamW lr 1e-4, cosine, 3% warmup,
no weight decay, batch 4, 50k steps, bf16, LoRA r8 on q/v; docs/design.md section 7),
`rrsisd`, `refsegrs`, `risbench`, `earthreason` (the same setup on that dataset; paper test
gIoU 67.9, 74.8, 70.5, 73.5). Override any key with `--config.<key>=<value>`:

  python -m segearth_jax.train --config configs/segearth_r2.py:lasers --workdir runs/lasers \
    --config.init.mllm=/ckpt/mipha3b_flax --config.init.seg_head=/ckpt/m2f_swinb_flax \
    --config.tokenizer=/ckpt/mipha3b_flax/tokenizer --config.data.data_dir=/data/tfds
"""

import dataclasses

import ml_collections

from segearth_jax import losses
from segearth_jax.input import settings
from segearth_jax.models.lora import LoRAConfig

# Trained in the official code: LoRA, lm_head, pixel decoder, transformer decoder, [SEG] projector.
TRAINABLE = (
    r"mllm/llm/.*/lora_[ab]",
    r"mllm/llm/lm_head/.*",
    r"seg_head/pixel_decoder/.*",
    r"seg_head/predictor/.*",
    r"seg_projector/.*",
)


def base() -> ml_collections.ConfigDict:
    """The paper's setup on LaSeRS (the `lasers` variant)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = ml_collections.ConfigDict(dict(
        mllm=dict(variant="mipha3b", dtype="bfloat16", param_dtype="float32",
                  lm_head_bias=False,  # the official SegEarth-R2 lm_head has no bias
                  attention_impl="auto", remat_policy="dots_no_batch", seg_probe_heads="mean",
                  lora=dataclasses.asdict(LoRAConfig(rank=8))),  # r8 on q/v, alpha 16
        seg_head=dict(variant="swin-b", dtype="bfloat16", param_dtype="float32",
                      # remat "layer": recompute each deformable encoder layer in the
                      # backward (at batch 4: 38.3 -> 18.0 GiB of temporaries, and faster
                      # than "none" or "sampling" on the CPU; experiments/RESULTS.md).
                      pixel_decoder=dict(remat="layer")),
    ))
    # Converted weights (convert.mipha / convert.mask2former outputs), or one full SegEarth-R2
    # checkpoint (convert.segearth_r2 output or a previous export).
    c.init = ml_collections.ConfigDict(dict(mllm="", seg_head="", checkpoint=""))
    c.tokenizer = ""  # a tokenizer directory, e.g. <converted mipha>/tokenizer; or "train"
    c.tokenizer_vocab = 0  # vocabulary size when tokenizer == "train"
    c.trainable = TRAINABLE
    c.frozen_dtype = "bfloat16"
    c.data = settings.default_data_config()  # geometry, prompt format, loader (paper values)
    c.data.update(dict(name="lasers", data_dir="", manual_dir="", train_split="train",
                       eval_split="test"))
    c.loss = losses.default_loss_config()  # BCE 5 + Dice 5 on 12544 points, spatial 0.01
    c.optim = ml_collections.ConfigDict(dict(
        lr=1e-4, schedule="cosine", warmup_frac=0.03, weight_decay=0.0, b1=0.9, b2=0.999,
        eps=1e-8, grad_clip=1.0,  # HF Trainer's default max_grad_norm
        # Gradient accumulation: each step's data.batch_size rows run as accum_steps
        # micro-batches (same update, 1/accum_steps of the activation memory).
        accum_steps=1,
        # True: the optimizer works on one flat vector of all trainable leaves (fewer, larger
        # kernels; for small models on a CPU; ignored when mesh.fsdp > 1).
        flatten=False,
    ))
    c.total_steps = 50_000
    c.log_every = 50
    # In-training evaluation every eval_every steps (0: off): teacher-forced on
    # data.eval_split (its first eval.limit records; 0: all), with the live parameters.
    c.eval_every = 0
    # best_metric: an in-training eval metric ("eval/gIoU", "eval/cIoU",
    # "eval/<subset>/gIoU", ...; higher is better) whose best value's model is exported to
    # workdir/best; "" keeps none.
    c.checkpoint = ml_collections.ConfigDict(dict(every=1000, keep=3, async_save=True,
                                                  best_metric="eval/gIoU"))
    # Mesh (data, fsdp; -1 takes the remaining devices), laid out from the topology. dcn_data x
    # dcn_fsdp > 1: a hybrid mesh over that many granules (TPU slices; processes elsewhere),
    # each axis spanning dcn_<axis> of them (sharding.make_mesh).
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, dcn_data=1, dcn_fsdp=1))
    # enabled: jax.distributed.initialize(), which detects the cluster (SLURM, TPU pods,
    # Kubernetes/GKE, Open MPI); the other keys (None: detected) override it.
    c.distributed = ml_collections.ConfigDict(dict(
        enabled=False, coordinator_address=ml_collections.config_dict.placeholder(str),
        num_processes=ml_collections.config_dict.placeholder(int),
        process_id=ml_collections.config_dict.placeholder(int), cpu_collectives="gloo"))
    # mode: "teacher_forced" (prompt + GT answer, the official protocol), "generate", or
    # "auto": teacher-forced for the segearth_r2 preset (the paper's numbers), else generate.
    # questions: "all" (every question of an image), "first" (one per image, the SegEarth-R1
    # EarthReason protocol), or "auto": "first" for the segearth_r1 preset, else "all".
    c.eval = ml_collections.ConfigDict(dict(
        preset="segearth_r2", mode="auto", questions="auto", batch_size=4, max_new_tokens=128,
        temperature=0.0, limit=0))
    return c


# Dataset variants: the TFDS builder name (data/builders.py) of each.
DATASETS = ("lasers", "rrsisd", "refsegrs", "risbench", "earthreason")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    name = arg or "lasers"
    if name not in DATASETS:
        raise ValueError(f"configs/segearth_r2.py:{name}: unknown variant; known: {DATASETS}")
    c = base()
    c.data.name = name
    return c
