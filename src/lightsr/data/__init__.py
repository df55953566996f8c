"""Data: MATLAB-compatible bicubic resize, benchmark datasets (Set5, Set14, B100, Urban100,
Manga109, DIV2K) in the common folder layouts.

>>> from lightsr.data import imresize, modcrop
>>> from lightsr.data.benchmark import BenchmarkSet
"""
from __future__ import annotations

from lightsr.data.imresize import imresize, imresize_tensor, modcrop

__all__ = ["imresize", "imresize_tensor", "modcrop"]
