"""The encoding model (docs/processes.md B5) on the lee text data (configs/token_base.py); `:smoke` runs in seconds.

  python -m experiments.main --config=configs/encoding_lee.py --workdir=workdir/encoding_lee
"""
from configs import token_base


def get_config(variant: str = ""):
    return token_base.get_config("encoding", "lee", variant)
