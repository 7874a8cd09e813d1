"""The edit process on the arithmetic text data (configs/token_base.py); `:smoke` runs in seconds.

  python -m experiments.main --config=configs/edit_arithmetic.py --workdir=workdir/edit_arithmetic
"""
from configs import token_base


def get_config(variant: str = ""):
    return token_base.get_config("edit", "arithmetic", variant)
