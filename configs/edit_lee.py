"""The edit process on the lee text data (configs/token_base.py); `:smoke` runs in seconds.

  python -m experiments.main --config=configs/edit_lee.py --workdir=workdir/edit_lee
"""
from configs import token_base


def get_config(variant: str = ""):
    return token_base.get_config("edit", "lee", variant)
