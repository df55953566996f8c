"""Video upscaling: ``lightsr.upscale_video`` and ``lightsr upscale clip.mp4`` (optional extra ``video``).

>>> import lightsr
>>> lightsr.upscale_video("clip.mp4", "clip_x4.mp4")

Decoding, upscaling and encoding run as a pipeline of threads with bounded queues (frames are
never all in memory); each frame goes through :class:`lightsr.inference.Upscaler` (tiling,
precision) as an image would. Colour follows the stream's tags as FFmpeg does, 10-bit sources
take the 16-bit path and come out in 10 bits; timestamps (constant or variable frame rate),
rotation, audio and subtitle streams (copied, not re-encoded), chapters and metadata are kept.
Work is cut into segments kept beside the output, so a killed job resumes (``resume=True``)
and ranks can share a clip. Details: ``docs/video.md``.

PyAV (``pip install "lightsr[video]"``) is imported only when a video is actually processed;
without it, :class:`VideoError` says how to install it.

Modules: :mod:`~lightsr.video.formats` (video paths, defaults; no PyAV needed), ``probe``,
``colour``, ``decode``, ``encode``, ``segments``, ``pipeline``, ``mux``, ``api``, ``preview``;
progress lines come from :mod:`lightsr.inference.progress`.
"""
from __future__ import annotations

from lightsr.video.api import DEFAULT_SEGMENT_FRAMES, VideoResult, upscale_video
from lightsr.video.errors import INSTALL_HINT, VideoError
from lightsr.video.formats import is_video_path, output_suffix, parse_frames
from lightsr.video.preview import preview_video
from lightsr.video.probe import VideoInfo, probe_video
from lightsr.video.segments import Segment, SegmentStore, list_segments, segments_for_rank

__all__ = [
    "DEFAULT_SEGMENT_FRAMES",
    "INSTALL_HINT",
    "Segment",
    "SegmentStore",
    "VideoError",
    "VideoInfo",
    "VideoResult",
    "is_video_path",
    "list_segments",
    "output_suffix",
    "parse_frames",
    "preview_video",
    "probe_video",
    "segments_for_rank",
    "upscale_video",
]
