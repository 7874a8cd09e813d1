"""The encoding model (docs/processes.md B5) on the arithmetic text data (configs/token_base.py); `:smoke` runs in seconds.

  python -m experiments.main --config=configs/encoding_arithmetic.py --workdir=workdir/encoding_arithmetic
"""
from configs import token_base


def get_config(variant: str = ""):
    return token_base.get_config("encoding", "arithmetic", variant)
