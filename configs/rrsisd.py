"""SegEarth-R2 trained on RRSIS-D (test gIoU 67.9 in the paper), otherwise the paper's
setup (see lasers.py).

  python -m segearth_jax.train --config configs/rrsisd.py --workdir runs/rrsisd \
    --config.init.mllm=... --config.init.seg_head=... --config.tokenizer=... \
    --config.data.data_dir=/data/tfds
"""

from configs import common


def get_config(arg=None):
    del arg
    c = common.base()
    c.data.name = "rrsisd"
    c.data.eval_split = "test"
    return c
