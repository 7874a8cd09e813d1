"""The d3pm_absorbing process on the lee text data (configs/token_base.py); `:smoke` runs in seconds.

  python -m experiments.main --config=configs/d3pm_absorbing_lee.py --workdir=workdir/d3pm_absorbing_lee
"""
from configs import token_base


def get_config(variant: str = ""):
    return token_base.get_config("d3pm_absorbing", "lee", variant)
