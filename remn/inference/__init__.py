"""Inference: the per-frame `Segmenter` core, its memory policies and object manager,
several videos at once (`BatchSegmenter`), propagation both ways from any annotated frames
(`BothWaysSegmenter`), and the `remn segment` entry points (one video, DAVIS / YouTube-VOS
datasets, torchrun sharding)."""
from remn.inference.config import PRESETS, InferenceConfig, inference_preset, resolve_inference_config
from remn.inference.memory import (
    MEMORY_POLICIES, FrameBankMemory, FrameBankSettings, GroupRead, MemoryManager, MemorySettings, MemoryStats,
    RDEMemory, RDESettings, make_memory_manager, memory_settings,
)
from remn.inference.objects import ObjectGroup, ObjectManager
from remn.inference.segmenter import FrameResult, Segmenter, VideoReport
from remn.inference.batch import BatchSegmenter, FrameInput
from remn.inference.bidirectional import BothWaysSegmenter, FramePrediction

__all__ = [
    "PRESETS",
    "InferenceConfig",
    "resolve_inference_config",
    "inference_preset",
    "MEMORY_POLICIES",
    "MemoryManager",
    "MemorySettings",
    "GroupRead",
    "FrameBankMemory",
    "FrameBankSettings",
    "RDEMemory",
    "RDESettings",
    "MemoryStats",
    "memory_settings",
    "make_memory_manager",
    "ObjectGroup",
    "ObjectManager",
    "FrameResult",
    "Segmenter",
    "VideoReport",
    "BatchSegmenter",
    "FrameInput",
    "BothWaysSegmenter",
    "FramePrediction",
]
