"""VOS datasets: DAVIS and YouTube-VOS readers, annotation/frame I/O, synthetic clips."""
from remn.data.davis import DavisDataset, DavisSequence, merge_objects
from remn.data.palette import (
    DAVIS_PALETTE,
    VOID_ID,
    read_annotation,
    read_frame,
    write_annotation,
    write_frame,
)
from remn.data.synthetic import make_clip, write_davis_dataset
from remn.data.youtube import ObjectStart, YouTubeSequence, YouTubeVOSDataset, write_youtube_submission

__all__ = [
    "DAVIS_PALETTE",
    "VOID_ID",
    "DavisDataset",
    "DavisSequence",
    "ObjectStart",
    "YouTubeSequence",
    "YouTubeVOSDataset",
    "make_clip",
    "merge_objects",
    "read_annotation",
    "read_frame",
    "write_annotation",
    "write_davis_dataset",
    "write_frame",
    "write_youtube_submission",
]
