"""Memory policies: the interface (`base`), one module per policy, and the registry.

Adding a policy is one module (a `MemorySettings` dataclass and a `MemoryManager`
subclass whose `settings_type` it is) and one line in `MEMORY_POLICIES`.
"""
from __future__ import annotations

import dataclasses

from remn.inference.memory.base import GroupRead, MemoryManager, MemorySettings, MemoryStats
from remn.inference.memory.frame_bank import FrameBank, FrameBankMemory, FrameBankSettings, mask_change
from remn.inference.memory.rde import RDEMemory, RDESettings, RDESlots

MEMORY_POLICIES: dict[str, type[MemoryManager]] = {
    "remn": FrameBankMemory,  # the gated dynamic frame bank
    "rde": RDEMemory,  # RDE-VOS's recurrent dynamic embedding
}


def memory_settings(policy: str | MemorySettings, **fields) -> MemorySettings:
    """The settings of `policy` (a name in MEMORY_POLICIES, or settings to start from) with
    `fields` replaced; a field the policy does not have raises ValueError naming it."""
    if isinstance(policy, MemorySettings):
        base = policy
    elif policy in MEMORY_POLICIES:
        base = MEMORY_POLICIES[policy].settings_type()
    else:
        raise ValueError(f"unknown memory policy {policy!r}; policies: {sorted(MEMORY_POLICIES)}")
    known = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(
            f"{', '.join(unknown)}: not settings of memory={base.policy!r} ({type(base).__name__} has {sorted(known)})"
        )
    return dataclasses.replace(base, **fields)


def make_memory_manager(model, settings: MemorySettings) -> MemoryManager:
    """The manager of the policy these settings belong to."""
    if not isinstance(settings, MemorySettings) or settings.policy not in MEMORY_POLICIES:
        raise TypeError(f"settings must be one of the registered policies' settings, got {type(settings).__name__}")
    return MEMORY_POLICIES[settings.policy](model, settings)


__all__ = [
    "MEMORY_POLICIES", "GroupRead", "MemoryManager", "MemorySettings", "MemoryStats", "FrameBank",
    "FrameBankMemory", "FrameBankSettings", "mask_change", "RDEMemory", "RDESettings", "RDESlots",
    "memory_settings", "make_memory_manager",
]
