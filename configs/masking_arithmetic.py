"""The masking process on the arithmetic text data (configs/token_base.py); `:smoke` runs in seconds.

  python -m experiments.main --config=configs/masking_arithmetic.py --workdir=workdir/masking_arithmetic
"""
from configs import token_base


def get_config(variant: str = ""):
    return token_base.get_config("masking", "arithmetic", variant)
