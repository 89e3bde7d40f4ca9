"""Rendered and thumbnail representations (PS3.18 8.3.5.1, Table 10.4.1-3): one frame decoded, put through
the grayscale pipeline of PS3.3 C.11 (Modality LUT, VOI LUT or window, MONOCHROME1 inversion) or the color
pipeline (YBR to RGB, palette), sized to a viewport and encoded as JPEG or PNG.

Compressed frames are decoded by pydicom with the pylibjpeg / openjpeg / RLE plugins.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image
from pydicom import pixels
from pydicom.dataset import Dataset

from telerad.archive.retrieve import StoredInstance
from telerad.context import Context

JPEG = "image/jpeg"
PNG = "image/png"
WINDOW_FUNCTIONS = ("linear", "linear-exact", "sigmoid")  # PS3.18 8.3.5.1.4, PS3.3 C.11.2.1.2-3
THUMBNAIL_SIZE = 128


class RenderError(ValueError):
    """The instance has no image to render or its pixel data cannot be decoded."""


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: str = "linear"


@dataclass(frozen=True)
class Viewport:
    """PS3.18 8.3.5.1.3: scale to fit (width, height); optionally crop (sx, sy, sw, sh) of the source first."""

    width: int
    height: int
    crop: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class RenderOptions:
    media_type: str = JPEG
    quality: int = 90
    window: Window | None = None
    viewport: Viewport | None = None


def render(ctx: Context, inst: StoredInstance, frame: int, options: RenderOptions) -> bytes:
    """Render frame ``frame`` (1-based) of a stored instance."""
    if inst.number_of_frames < 1:
        raise RenderError(f"instance {inst.sop_uid} has no pixel data to render")
    if not 1 <= frame <= inst.number_of_frames:
        raise RenderError(f"frame {frame} out of range 1..{inst.number_of_frames}")
    array, ds = decode_frame(ctx, inst, frame)
    return encode(to_display(array, ds, options.window), options)


def decode_frame(ctx: Context, inst: StoredInstance, frame: int) -> tuple[np.ndarray, Dataset]:
    """Decoded pixels of one frame (color already converted to RGB) and the dataset without pixel data."""
    path = ctx.blobs.path(inst.blob_key)
    ds = Dataset()
    try:
        try:
            array = pixels.pixel_array(path, index=frame - 1, ds_out=ds)
        except AttributeError:  # deflated files are not read lazily; decode the whole dataset instead
            full = pydicom.dcmread(path)
            array = full.pixel_array
            if int(full.get("NumberOfFrames", 1) or 1) > 1:
                array = array[frame - 1]
            ds = full
    except Exception as exc:  # any decoder failure (missing plugin, corrupt stream) is reported, not raised
        raise RenderError(f"cannot decode the pixel data of {inst.sop_uid}: {exc}") from exc
    return array, ds


def to_display(array: np.ndarray, ds: Dataset, window: Window | None) -> np.ndarray:
    """An 8-bit grayscale (H, W) or RGB (H, W, 3) image ready to encode."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric == "PALETTE COLOR":
        rgb = pixels.apply_color_lut(array, ds)
        return _to_uint8(rgb, 8 * rgb.dtype.itemsize)
    if array.ndim == 3:  # RGB, or YBR already converted to RGB by the decoder (pixel_array raw=False)
        bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
        return _to_uint8(array, bits)
    values = pixels.apply_modality_lut(array, ds).astype(np.float64)
    gray = _voi(values, ds, window)
    if photometric == "MONOCHROME1":
        gray = 255 - gray
    return gray


def _to_uint8(array: np.ndarray, bits: int) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind == "f":
        lo, hi = float(array.min()), float(array.max())
        return _scale(array.astype(np.float64), lo, hi)
    shift = max(0, min(bits, 8 * array.dtype.itemsize) - 8)
    return np.clip(array.astype(np.int64) >> shift, 0, 255).astype(np.uint8)


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip((values - lo) / (hi - lo) * 255.0, 0, 255).round().astype(np.uint8)


def _voi(values: np.ndarray, ds: Dataset, window: Window | None) -> np.ndarray:
    """VOI transform (PS3.3 C.11.2): the requested window, else the instance's, else its VOI LUT, else
    the frame's full range."""
    if window is None:
        window = _own_window(ds)
    if window is not None:
        return apply_window(values, window)
    if "VOILUTSequence" in ds:
        try:
            out = pixels.apply_voi_lut(values.astype(np.int64), ds).astype(np.float64)
            return _scale(out, float(out.min()), float(out.max()))
        except Exception:
            pass
    return _scale(values, float(values.min()), float(values.max()))


def _own_window(ds: Dataset) -> Window | None:
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None or center == "" or width == "":
        return None
    try:
        c = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        w = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
    except (TypeError, ValueError, IndexError):
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR")).strip().lower().replace("_", "-")
    if function not in WINDOW_FUNCTIONS:
        function = "linear"
    if w <= 0 or (function == "linear" and w < 1):
        return None
    return Window(c, w, function)


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (linear), C.11.2.1.3.2 (linear exact), C.11.2.1.3.1 (sigmoid) into 0..255."""
    c, w = window.center, window.width
    if window.function == "sigmoid":
        y = 255.0 / (1.0 + np.exp(np.clip(-4.0 * (values - c) / w, -700.0, 700.0)))
    elif window.function == "linear-exact":
        y = ((values - c) / w + 0.5) * 255.0
    else:
        y = ((values - (c - 0.5)) / (w - 1) + 0.5) * 255.0 if w > 1 else np.where(values > c - 0.5, 255.0, 0.0)
    return np.clip(y, 0, 255).round().astype(np.uint8)


def fit(width: int, height: int, box_w: int, box_h: int) -> tuple[int, int]:
    """The largest size with the image's aspect ratio inside the box (at least 1x1)."""
    scale = min(box_w / width, box_h / height)
    return max(1, math.floor(width * scale + 0.5)), max(1, math.floor(height * scale + 0.5))


def encode(image: np.ndarray, options: RenderOptions) -> bytes:
    pil = Image.fromarray(image, mode="RGB" if image.ndim == 3 else "L")
    vp = options.viewport
    if vp is not None:
        if vp.crop is not None:
            sx, sy, sw, sh = vp.crop
            pil = pil.crop((sx, sy, sx + sw, sy + sh))
        size = fit(pil.width, pil.height, vp.width, vp.height)
        if size != pil.size:
            pil = pil.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if options.media_type == PNG:
        pil.save(buf, format="PNG")
    else:
        pil.save(buf, format="JPEG", quality=options.quality)
    return buf.getvalue()
