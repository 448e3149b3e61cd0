"""SegEarth-R2 trained on EarthReason (test gIoU/cIoU 73.5/69.5), otherwise the paper's
setup (see lasers.py).

  python -m segearth_jax.train --config configs/earthreason.py --workdir runs/earthreason \
    --config.init.mllm=... --config.init.seg_head=... --config.tokenizer=... \
    --config.data.data_dir=/data/tfds
"""

from configs import common


def get_config(arg=None):
    del arg
    c = common.base()
    c.data.name = "earthreason"
    c.data.eval_split = "test"
    return c
