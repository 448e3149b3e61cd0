"""Shared defaults of the SegEarth-R2 training configs (paper setup, docs/design.md section 7).

Each `configs/<name>.py` starts from `base()` and changes what differs. Override from the command
line with `--config.<key>=<value>`.
"""

import ml_collections

from segearth_jax import losses

# Trained in the official code: LoRA, lm_head, pixel decoder, transformer decoder, [SEG] projector.
TRAINABLE = (
    r"mllm/llm/.*/lora_[ab]",
    r"mllm/llm/lm_head/.*",
    r"seg_head/pixel_decoder/.*",
    r"seg_head/predictor/.*",
    r"seg_projector/.*",
)


def base() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = ml_collections.ConfigDict(dict(
        mllm=dict(variant="mipha3b", dtype="bfloat16", param_dtype="float32",
                  lm_head_bias=False,  # the official SegEarth-R2 lm_head has no bias
                  attention_impl="auto", remat_policy="dots_no_batch", seg_probe_heads="mean",
                  lora=dict(rank=8, alpha=16.0, dropout=0.05, targets=r".*/(q_proj|v_proj)")),
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
    c.data = ml_collections.ConfigDict(dict(
        name="lasers", data_dir="", manual_dir="", train_split="train", eval_split="test",
        siglip_size=384, image_size=1024, patch_size=14, image_token_id=-200,
        max_len=1024, max_seg=8, max_prompt_len=960,
        template="default", seg_in_prompt=False, official_prompt=False,
        spatial_gt="paper", on_error="raise",
        batch_size=4, worker_count=4, prefetch=2,
    ))
    c.loss = losses.default_loss_config()  # BCE 5 + Dice 5 on 12544 points, spatial 0.01
    c.optim = ml_collections.ConfigDict(dict(
        lr=1e-4, schedule="cosine", warmup_frac=0.03, weight_decay=0.0, b1=0.9, b2=0.999,
        eps=1e-8, grad_clip=1.0,  # HF Trainer's default max_grad_norm
        # Gradient accumulation: each step's data.batch_size rows run as accum_steps
        # micro-batches (same update, 1/accum_steps of the activation memory).
        accum_steps=1,
    ))
    c.total_steps = 50_000
    c.log_every = 50
    c.checkpoint = ml_collections.ConfigDict(dict(every=1000, keep=3, async_save=True))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    c.distributed = ml_collections.ConfigDict(dict(
        enabled=False, coordinator_address=None, num_processes=None, process_id=None,
        cpu_collectives="gloo"))
    # Test hooks: log the record indices of every step; SIGKILL the run after a checkpoint.
    c.debug = ml_collections.ConfigDict(dict(log_data_order=False, sigkill_after_step=0))
    # mode: "teacher_forced" (prompt + GT answer, the official protocol), "generate", or
    # "auto": teacher-forced for the segearth_r2 preset (the paper's numbers), else generate.
    # questions: "all" (every question of an image), "first" (one per image, the SegEarth-R1
    # EarthReason protocol), or "auto": "first" for the segearth_r1 preset, else "all".
    c.eval = ml_collections.ConfigDict(dict(
        preset="segearth_r2", mode="auto", questions="auto", batch_size=4, max_new_tokens=128,
        temperature=0.0))
    return c
