"""Inference: the per-frame `Segmenter` core, its memory and object managers, and the
`remn segment` entry points (one video, DAVIS / YouTube-VOS datasets, torchrun sharding)."""
from remn.inference.config import PRESETS, InferenceConfig, resolve_inference_config
from remn.inference.memory import FrameBankMemory, MemoryManager, MemoryStats, make_memory_manager
from remn.inference.objects import ObjectGroup, ObjectManager
from remn.inference.rde_memory import RDEMemory
from remn.inference.segmenter import FrameResult, Segmenter, VideoReport

__all__ = [
    "PRESETS",
    "InferenceConfig",
    "resolve_inference_config",
    "MemoryManager",
    "FrameBankMemory",
    "RDEMemory",
    "MemoryStats",
    "make_memory_manager",
    "ObjectGroup",
    "ObjectManager",
    "FrameResult",
    "Segmenter",
    "VideoReport",
]
