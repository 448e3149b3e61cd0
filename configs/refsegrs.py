"""SegEarth-R2 trained on RefSegRS (test gIoU 74.8), otherwise the paper's
setup (see lasers.py).

  python -m segearth_jax.train --config configs/refsegrs.py --workdir runs/refsegrs \
    --config.init.mllm=... --config.init.seg_head=... --config.tokenizer=... \
    --config.data.data_dir=/data/tfds
"""

from configs import common


def get_config(arg=None):
    del arg
    c = common.base()
    c.data.name = "refsegrs"
    c.data.eval_split = "test"
    return c
