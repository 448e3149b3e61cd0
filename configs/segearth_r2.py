"""SegEarth-R2 training configs, one per dataset: `--config configs/segearth_r2.py:VARIANT`.

VARIANT (default `lasers`): `lasers` (the paper's main setup: AdamW lr 1e-4, cosine, 3% warmup,
no weight decay, batch 4, 50k steps, bf16, LoRA r8 on q/v; docs/conventions.md),
`rrsisd`, `refsegrs`, `risbench`, `earthreason` (the same setup on that dataset; the paper's
test figures: README.md). Every key the code reads is written out below (the model's sizes
expanded from the `mipha3b` and `swin-b` presets; `SegEarthR2Config.from_config` reads exactly
these keys); nothing falls back to a default in the code. Override any key with
`--config.<key>=<value>`:

  python -m segearth_jax.train --config configs/segearth_r2.py:lasers --workdir runs/lasers \
    --config.init.mllm=/ckpt/mipha3b_flax --config.init.seg_head=/ckpt/m2f_swinb_flax \
    --config.tokenizer=/ckpt/mipha3b_flax/tokenizer --config.data.data_dir=/data/tfds
"""

import ml_collections

from segearth_jax.constants import IMAGE_TOKEN_ID
from segearth_jax.models.lora import LoRAConfig
from segearth_jax.models.mipha import MiphaConfig
from segearth_jax.models.seg_head import SegHeadConfig

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
    # Every stack has `scan` (False: its layer loop unrolled, the same parameters and numbers)
    # and `remat_policy` ("none", "full", "dots", "dots_no_batch"; the pixel decoder also
    # "sampling"): models/common.layer_stack. attention_impl: "auto" (cuDNN on GPU where it
    # applies), "xla", "cudnn".
    c.model = ml_collections.ConfigDict(dict(
        mllm=MiphaConfig.preset(
            "mipha3b", dtype="bfloat16", param_dtype="float32",
            vision=dict(attention_impl="auto", scan=True, remat_policy="none"),
            llm=dict(lm_head_bias=False,  # the official SegEarth-R2 lm_head has no bias
                     attention_impl="auto", scan=True, remat_policy="dots_no_batch",
                     seg_probe_heads="mean",
                     lora=LoRAConfig(rank=8))),  # r8 on q/v, alpha 16
        seg_head=SegHeadConfig.preset(
            "swin-b", dtype="bfloat16", param_dtype="float32",
            swin=dict(attention_impl="auto", scan=True, remat_policy="none"),
            # remat "full": recompute each deformable encoder layer in the backward (the
            # memory and step time of each choice: experiments/RESULTS.md).
            # simplify_fpn False: detectron2's FPN (no conv bias, no lateral ReLU), as in
            # init.seg_head's Mask2Former checkpoint; True: the official Mask2Former-Simplify
            # FPN of convert.segearth_r2's output (init.checkpoint from it needs True:
            # docs/checkpoints.md).
            pixel_decoder=dict(simplify_fpn=False, scan=True, remat_policy="full"),
            decoder=dict(attention_impl="auto", scan=True, remat_policy="none")),
    ))
    # Converted weights (convert.mipha / convert.mask2former outputs), or one full SegEarth-R2
    # checkpoint (convert.segearth_r2 output or a previous export).
    c.init = ml_collections.ConfigDict(dict(mllm="", seg_head="", checkpoint=""))
    c.tokenizer = ""  # a tokenizer directory, e.g. <converted mipha>/tokenizer; or "train"
    c.tokenizer_vocab = 0  # vocabulary size when tokenizer == "train"
    c.trainable = TRAINABLE
    c.frozen_dtype = "bfloat16"
    # The input geometry and prompt format (input/settings.Settings: also written into the
    # exported model.json), the dataset, and the loader; the paper's values.
    c.data = ml_collections.ConfigDict(dict(
        name="lasers", data_dir="", manual_dir="", train_split="train", eval_split="test",
        siglip_size=384,  # SigLIP view (squashed, bicubic); = the SigLIP image_size
        image_size=1024,  # Swin canvas (long edge, bilinear, pad 128)
        patch_size=14,  # SigLIP patch: spatial-loss grid = siglip_size // patch_size
        image_token_id=IMAGE_TOKEN_ID,  # placeholder id of the image span in input_ids
        max_len=1024,  # training sequence (image tokens included)
        max_seg=8,  # [SEG] queries per example
        max_prompt_len=960,  # generation prompt (image tokens included)
        template="default",  # text.TEMPLATES
        # The official prompt, token for token (text.py; docs/conventions.md): its template
        # and the instruction's `[SEG]` of its `<refer>` splice.
        seg_in_prompt=True,
        official_prompt=True,
        spatial_gt="paper",  # "paper" | "official" (input/preprocess.masks_to_grid)
        on_error="raise",  # "raise" | "skip" (input/pipeline module docstring)
        batch_size=4,  # GLOBAL batch; per process: batch_size // process count
        worker_count=4,  # grain worker processes (0: in the main process)
        prefetch=2,  # per-worker buffer (batches)
        read_threads=16,  # grain ReadOptions.num_threads (per process)
    ))
    # Loss weights and sampling (the paper's / the official code's values; losses.total_loss).
    c.loss = ml_collections.ConfigDict(dict(
        text_weight=1.0,  # the paper's L_text has weight 1
        bce_weight=5.0,
        dice_weight=5.0,
        num_points=12544,  # 112 * 112, Mask2Former's TRAIN_NUM_POINTS
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
        full_resolution=False,  # True: BCE + Dice on every pixel of the upsampled logits
        spatial_weight=0.01,  # lambda_S
        spatial_variant="paper",  # "paper" | "official" | "none"
        spatial_divide_by_all_rows=False,  # paper variant: True = official row normalization
        spatial_eps=1e-8,
    ))
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
    c.export = True  # at total_steps, write the merged inference model to <workdir>/export
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
