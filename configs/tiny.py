"""Tiny SegEarth-R2 on the synthetic set: the CPU demo and the learning tests.

The tiny model starts from random weights (there is nothing to convert), so unlike the paper
every parameter trains; the tokenizer is a small byte-level BPE trained on the training texts.

  python -m data.synthetic --out demo_out/synthetic_raw --n 2000 --object-scale 2
  python -m segearth_jax.train --config configs/tiny.py --workdir demo_out/tiny_run \
    --config.data.manual_dir=demo_out/synthetic_raw --config.data.data_dir=demo_out/tfds
"""

import ml_collections

from configs import segearth_r2
from segearth_jax.models.lora import LoRAConfig
from segearth_jax.models.mipha import MiphaConfig
from segearth_jax.models.seg_head import SegHeadConfig


def get_config(arg=None):
    del arg
    c = segearth_r2.base()
    # The `tiny` presets, every size spelled out (see configs/segearth_r2.py for the keys).
    c.model = ml_collections.ConfigDict(dict(
        mllm=MiphaConfig.preset(
            "tiny", dtype="float32", param_dtype="float32",
            vision=dict(attention_impl="xla", scan=True, remat_policy="none"),
            llm=dict(vocab_size=2048, lm_head_bias=False, attention_impl="xla", scan=True,
                     remat_policy="none", seg_probe_heads="mean", lora=LoRAConfig(rank=8))),
        seg_head=SegHeadConfig.preset(
            "tiny", dtype="float32", param_dtype="float32",
            swin=dict(attention_impl="auto", scan=True, remat_policy="none"),
            pixel_decoder=dict(simplify_fpn=False, scan=True, remat_policy="full"),
            decoder=dict(attention_impl="auto", scan=True, remat_policy="none")),
    ))
    c.tokenizer = "train"
    c.tokenizer_vocab = 2000  # < the 2048 embedding rows set above, with room for [SEG]
    c.trainable = (r".*",)
    c.frozen_dtype = "float32"
    c.data.update(dict(
        name="synthetic", siglip_size=56, image_size=128, patch_size=14,
        max_len=256, max_seg=4, max_prompt_len=192, batch_size=8, worker_count=0, prefetch=2,
        # A 4x4 image grid: most targets cover < half a cell; '> 0' keeps them visible.
        spatial_gt="official",
        # The demo's own short template (text.py "default"), not the official prompt.
        official_prompt=False, seg_in_prompt=False))
    c.loss.num_points = 2048
    # The randomly initialized LM must learn to name the asked target ('<p>vehicles</p>'), and
    # the masks follow the name it generates: text weight 5 (the paper's is 1); what it changes
    # is measured in experiments/RESULTS.md.
    c.loss.text_weight = 5.0
    # flatten: AdamW on one vector (faster on the CPU). lr 2e-3 and 2000 steps: the demo's
    # figures and training time are in experiments/RESULTS.md.
    c.optim.update(dict(lr=2e-3, warmup_frac=0.05, flatten=True))
    c.total_steps = 2000
    c.log_every = 100
    c.checkpoint.update(dict(every=500, keep=2))
    # The demo evaluates the whole path, generation included (the paper's protocol:
    # --mode teacher_forced).
    c.eval.update(dict(batch_size=8, max_new_tokens=96, mode="generate"))
    return c
