"""Video upscaling speed next to the per-image time of the same frames (issue 25's note).

Generates a clip (default 320x180, 8 frames, H.264), then in one run:

* per image: each frame decoded by lightsr and upscaled alone with ``Upscaler.upscale_pixels``;
* video: ``lightsr.upscale_video`` on the whole clip (decode -> upscale -> encode pipeline, H.264
  CRF 18 output, re-mux).

It prints a Markdown table: median seconds per frame for both, frames/s, and the video's
overhead over the model alone. Needs the ``video`` extra. Example::

    python benchmarks/video_speed.py                      # default model, x4, 320x180
    python benchmarks/video_speed.py --size 160x90 --frames 4 --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def make_clip(path: Path, width: int, height: int, frames: int) -> Path:
    import av

    y, x = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            rgb = np.stack([(x * 255 // max(1, width - 1)), (y * 255 // max(1, height - 1)),
                            ((x + y + 9 * i) * 7) % 256], -1).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            out.mux(v.encode(frame))
        out.mux(v.encode())
    return path


def main(argv=None) -> None:
    import torch

    import lightsr
    from lightsr.inference import Upscaler
    from lightsr.video.decode import iter_frames
    from lightsr.video.probe import probe_video

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model name (default: the default model, shipped weights)")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--size", default="320x180", help="clip size WxH (default 320x180)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=2, help="rounds, alternating image and video runs (default 2)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.lower().split("x"))
    up = Upscaler(args.model, args.scale)
    name = up.model.lightsr_config["name"] if hasattr(up.model, "lightsr_config") else type(up.model).__name__
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "clip.mp4", width, height, args.frames)
        info = probe_video(clip)
        frames = [rgb for _, _, rgb in iter_frames(info, 0, info.frames)]
        image_s, video_s = [], []
        for r in range(args.repeats):  # alternating, so that a change of machine load hits both
            for rgb in frames:
                t0 = time.perf_counter()
                up.upscale_pixels(rgb)
                image_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            result = lightsr.upscale_video(clip, Path(tmp) / f"out{r}.mp4", upscaler=up, progress=False)
            video_s.append((time.perf_counter() - t0) / result.total)
    per_frame = statistics.median(video_s)
    image = statistics.median(image_s)
    print(f"{name} x{args.scale}, {width}x{height} -> {width * args.scale}x{height * args.scale}, "
          f"{args.frames} frames, {args.repeats} rounds, {torch.get_num_threads()} torch thread(s)\n")
    print("| path | s per frame | frames/s |")
    print("|---|---|---|")
    print(f"| per image (Upscaler.upscale_pixels, median) | {image:.2f} | {1 / image:.3f} |")
    print(f"| video (lightsr.upscale_video, whole run incl. probe, encode, mux, median of rounds) | {per_frame:.2f} | {1 / per_frame:.3f} |")
    print(f"\nvideo / image time per frame: {per_frame / image:.2f}x")


if __name__ == "__main__":
    main()
