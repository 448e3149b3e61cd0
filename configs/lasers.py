"""SegEarth-R2 on LaSeRS, the paper's setup: AdamW lr 1e-4, cosine, 3% warmup, no weight decay,
batch 4, 50k steps, bf16, LoRA r8 on q/v (docs/design.md section 7).

  python -m segearth_jax.train --config configs/lasers.py --workdir runs/lasers \
    --config.init.mllm=/ckpt/mipha3b_flax --config.init.seg_head=/ckpt/m2f_swinb_flax \
    --config.tokenizer=/ckpt/mipha3b_flax/tokenizer --config.data.data_dir=/data/tfds
"""

from configs import common


def get_config(arg=None):
    del arg
    c = common.base()
    c.data.name = "lasers"
    return c
