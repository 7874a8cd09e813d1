"""Small helpers shared by the table scripts."""
import json
import os


def write_json(path: str, payload) -> None:
    """Writes JSON atomically (a crash never leaves half a file)."""
    with open(path + ".tmp", "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(path + ".tmp", path)
