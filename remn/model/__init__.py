"""The REMN network: STCN's core with the soft modulation gate and local attention branch."""
from remn.model.masks import labels_to_masks, probs_to_labels, soft_aggregate
from remn.model.network import REMN, FrameFeatures, SegmentOutput
from remn.model.rde import MemoryCompressor

__all__ = [
    "REMN", "FrameFeatures", "SegmentOutput", "MemoryCompressor",
    "labels_to_masks", "probs_to_labels", "soft_aggregate",
]
