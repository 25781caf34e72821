"""Rendered images of archived instances, cached on disk beside the archive.

One frame of ``original.dcm`` through the display pipeline (``shared.render``), fitted into a
viewport, as PNG or JPEG. ``GET /uploads/{id}/image`` and the WADO-RS rendered and thumbnail
resources both come here, so one rendering serves both. Each parameter set is written once to
``{archive folder}/renders/{name}`` (atomically), so asking again costs a file read; the folder
is on the shared archive volume, so every gateway replica sees the same cache.
"""

from __future__ import annotations

import asyncio
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from PIL import Image

from shared.errors import BadRequest, NotRenderable
from shared.files import write_atomic
from shared.render import RenderError, encode_png, to_display

ORIGINAL = "original.dcm"
MEDIA = {"png": "image/png", "jpeg": "image/jpeg"}
WINDOW = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*$")
Format = Literal["png", "jpeg"]


class NoSuchFrame(BadRequest):
    """A frame number past the instance's last frame."""


@dataclass(frozen=True)
class View:
    """How to show one frame: which, with which window, in what size, in which format."""

    frame: int = 1  # from 1
    window: tuple[float, float] | None = None  # center, width; None: the file's own
    function: str | None = None  # VOI LUT Function for ``window``; None: the file's
    viewport: tuple[int, int] | None = None  # fit within width x height; never enlarged
    format: Format = "png"
    quality: int = 90  # JPEG only

    @property
    def media_type(self) -> str:
        return MEDIA[self.format]

    def file_name(self) -> str:
        """One cache file per parameter set."""
        shown = f"{self.window[0]:g}_{self.window[1]:g}" if self.window else "file"
        if self.function:
            shown += f"_{self.function.lower()}"
        size = "full"  # a square viewport is named by its side, as before it had two
        if self.viewport:
            width, height = self.viewport
            size = str(width) if width == height else f"{width}x{height}"
        quality = f"_q{self.quality}" if self.format == "jpeg" and self.quality != 90 else ""
        return f"{self.frame}_{shown}_{size}{quality}.{self.format}"


def parse_window(text: str | None) -> tuple[float, float] | None:
    """``center,width`` (width at least 1), or None; BadRequest for anything else."""
    if text is None:
        return None
    match = WINDOW.match(text)
    if not match or float(match[2]) < 1:
        raise BadRequest("window must be center,width with a width of at least 1, e.g. 40,400")
    return float(match[1]), float(match[2])


async def rendered(folder: Path, view: View) -> Path:
    """The cached rendering of ``view`` of the instance archived in ``folder``, made if absent.

    Raises ``NoSuchFrame`` (400) for a frame the instance does not have and ``NotRenderable``
    (422) when it has no pixel data or they cannot be shown."""
    cached = folder / "renders" / view.file_name()
    if not cached.is_file():
        await asyncio.to_thread(_render, folder / ORIGINAL, cached, view)
    return cached


def _render(source: Path, dest: Path, view: View) -> None:
    ds = pydicom.dcmread(source)
    frames = int(ds.get("NumberOfFrames") or 1)
    if view.frame > frames:
        raise NoSuchFrame(f"frame {view.frame} asked for; the instance has {frames}")
    try:
        pixels = to_display(ds, view.frame - 1, view.window, view.function)
    except RenderError as exc:
        raise NotRenderable(str(exc)) from None
    picture = Image.fromarray(pixels)
    if view.viewport is not None:
        picture.thumbnail(view.viewport, Image.Resampling.LANCZOS)
    if view.format == "jpeg":
        out = io.BytesIO()
        picture.save(out, format="JPEG", quality=view.quality)
        image = out.getvalue()
    else:
        image = encode_png(np.asarray(picture))
    dest.parent.mkdir(exist_ok=True)
    write_atomic(dest, image, durable=False)
