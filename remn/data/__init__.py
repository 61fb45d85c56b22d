"""VOS datasets: one `Sequence` interface, its DAVIS, YouTube-VOS and single-video readers,
annotation/frame I/O, synthetic clips."""
from remn.data.davis import DavisDataset, DavisSequence
from remn.data.palette import (
    DAVIS_PALETTE,
    FRAME_SUFFIXES,
    VOID_ID,
    list_images,
    read_annotation,
    read_frame,
    write_annotation,
    write_frame,
)
from remn.data.sequence import FileSequence, ObjectStart, Sequence, SequenceCollection, merge_objects
from remn.data.synthetic import make_clip, write_davis_dataset
from remn.data.video import VideoFileSequence, open_video
from remn.data.youtube import YouTubeSequence, YouTubeVOSDataset, write_youtube_submission

__all__ = [
    "DAVIS_PALETTE",
    "FRAME_SUFFIXES",
    "VOID_ID",
    "DavisDataset",
    "DavisSequence",
    "FileSequence",
    "ObjectStart",
    "Sequence",
    "SequenceCollection",
    "VideoFileSequence",
    "YouTubeSequence",
    "YouTubeVOSDataset",
    "list_images",
    "make_clip",
    "merge_objects",
    "open_video",
    "read_annotation",
    "read_frame",
    "write_annotation",
    "write_davis_dataset",
    "write_frame",
    "write_youtube_submission",
]
