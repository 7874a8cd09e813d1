"""The masking process on the lee text data (configs/token_base.py); `:smoke` runs in seconds.

  python -m experiments.main --config=configs/masking_lee.py --workdir=workdir/masking_lee
"""
from configs import token_base


def get_config(variant: str = ""):
    return token_base.get_config("masking", "lee", variant)
