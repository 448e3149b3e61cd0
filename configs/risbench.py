"""SegEarth-R2 trained on RISBench (test gIoU 70.5), otherwise the paper's
setup (see lasers.py).

  python -m segearth_jax.train --config configs/risbench.py --workdir runs/risbench \
    --config.init.mllm=... --config.init.seg_head=... --config.tokenizer=... \
    --config.data.data_dir=/data/tfds
"""

from configs import common


def get_config(arg=None):
    del arg
    c = common.base()
    c.data.name = "risbench"
    c.data.eval_split = "test"
    return c
