"""Random state dicts with the names, shapes and dtypes of the published checkpoints.

`tests/data/{stcn,rde}_state_dict.json` are facts about the published STCN and RDE-VOS
checkpoints (parameter and buffer name → [shape, dtype]; 405 and 435 entries), read off the
public model definitions; they ship with the tests so that the strict-loading tests run in
every clone. No weights: the values are random.
"""
import json
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent / "data"


def random_published_state(name: str) -> dict[str, torch.Tensor]:
    """name: "stcn_state_dict.json" or "rde_state_dict.json" → {key: random tensor}."""
    state = {}
    for key, (shape, dtype) in json.loads((DATA / name).read_text()).items():
        if dtype == "int64":
            state[key] = torch.randint(0, 100, shape, dtype=torch.int64)
        else:
            state[key] = torch.randn(shape, dtype=getattr(torch, dtype))
    return state
