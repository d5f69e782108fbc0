"""Image thumbnails with Pillow: a file in, WebP and JPEG (and optionally AVIF) files out.

The pipeline decodes once, at the smallest scale that still serves the largest box (JPEG
DCT scaling via `draft`), and resizes to the largest box in bands of rows, converting each
band to sRGB as it is made, so the colour conversion runs on about 3 MP instead of 12 and
never needs a second full copy.
The full-size pixels are freed as soon as that first image exists; only then is it
rotated for EXIF orientation. A big baseline RGB JPEG or 8-bit PNG is never held whole:
each band is resized as the decoder makes its rows, and the rows behind it are let go
(a few MB held for a 12 MP photo instead of 48). Each smaller box is then made from the
previous, already small image (a cascade), and each size is encoded once per format.
Output carries no EXIF, XMP or GPS; it carries an sRGB ICC profile.

Resampling is Lanczos-3 by fast_image_resize (the cykooz-resizer wheel), which works on
Pillow's own pixel memory with SIMD: 12 MP to 2048 px takes 17 ms against Pillow's 108 ms
(bicubic), and 2048 to 1024 px 5 ms against 46 ms, for output within 2 levels of
Pillow's Lanczos. Pillow resamples the one mode it does not take, greyscale with alpha,
and everything on machines the wheel is not built for (Linux on ARM).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import math
import mmap
import os
import re
import struct
import sys
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageCms, ImageSequence, UnidentifiedImageError

from media.errors import MediaError

BOXES = (2048, 1024, 256)
WEBP_QUALITY = 80
JPEG_QUALITY = 85
AVIF_QUALITY = 60
WEBP_METHOD = 4
JPEG_SUBSAMPLING = "4:2:0"  # Pillow's and libvips' default, stated so benchmarks can match
DEFAULT_MAX_PIXELS = 100_000_000
log = logging.getLogger(__name__)
# Animated output: enough frames for any GIF people share, bounded so memory stays bounded.
MAX_ANIMATION_FRAMES = 300
# Formats whose frames are an animation (not an MPO's second picture or a TIFF's pages)
_ANIMATED_FORMATS = ("GIF", "WEBP", "PNG")

# format name (as configured) -> file extension, content type
FORMATS = {"webp": ("webp", "image/webp"), "jpeg": ("jpg", "image/jpeg"),
           "avif": ("avif", "image/avif"), "png": ("png", "image/png")}

_SRGB = ImageCms.createProfile("sRGB")
_SRGB_BYTES = ImageCms.ImageCmsProfile(_SRGB).tobytes()
_ORIENTATION = 0x0112
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}

try:  # SIMD resampling: wheels for x86-64 (Linux, Windows, macOS) and Apple silicon
    from cykooz_resizer import CropBox, FilterType, ResizeAlg, ResizeOptions, Resizer

    _LANCZOS3 = ResizeAlg.convolution(FilterType.lanczos3)
    _SIMD_MODES = frozenset({"L", "RGB", "RGBA", "RGBa", "CMYK"})
except ImportError:  # pragma: no cover - e.g. Linux on ARM: Pillow resamples everything
    _SIMD_MODES = frozenset()
# The wheel reads Pillow's own image struct, and _JpegRows takes Pillow's internal building
# blocks, which may change with a major version: both are used only with the versions they
# have been checked against here.
_PILLOW_MAJOR = int(Image.__version__.split(".")[0])
_CHECKED_PILLOW_MAJORS = range(11, 14)
if _SIMD_MODES and _PILLOW_MAJOR not in _CHECKED_PILLOW_MAJORS:
    log.warning("Pillow %s is newer than SIMD resampling was checked with: using Pillow's "
                "own resampler", Image.__version__)  # pragma: no cover
    _SIMD_MODES = frozenset()

try:  # ISA-L's inflate: a PNG's pixels in half zlib's time (the same bytes out)
    from isal import isal_zlib as _inflating

    # Used for raw deflate only, the zlib header and Adler-32 checked by _PngStrips itself:
    # ISA-L's Adler-32 leaves the AVX registers' upper halves dirty, which slows the SSE
    # instructions after it on Intel CPUs until something clears them. On a Xeon (Sapphire
    # Rapids) each band's resize took 10 ms instead of 3: 180 ms per 12 MP PNG instead of
    # 55, more than ISA-L saves over zlib. zlib's own Adler-32 costs 16 ms per 36 MiB.

    _INFLATE_ERRORS: tuple[type[Exception], ...] = (zlib.error, _inflating.error)
except ImportError:  # pragma: no cover - depends on the install
    _inflating = zlib
    _INFLATE_ERRORS = (zlib.error,)

try:  # HEIC/HEIF from phones; optional so the rest works without the wheel
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # pragma: no cover - depends on the install
    pass


@dataclass(frozen=True)
class Options:
    """What to make: boxes (largest first or not), formats by name, qualities, animation."""

    boxes: tuple[int, ...] = BOXES
    formats: tuple[str, ...] = ("webp", "jpeg")
    webp_quality: int = WEBP_QUALITY
    jpeg_quality: int = JPEG_QUALITY
    avif_quality: int = AVIF_QUALITY
    webp_method: int = WEBP_METHOD
    animated: bool = False  # also an animated WebP, anim_{smallest box}.webp, of GIF/WebP


DEFAULT_OPTIONS = Options()


@dataclass(frozen=True)
class Rendition:
    """One file made from an input, ready to store."""

    name: str
    path: Path
    content_type: str
    width: int
    height: int
    kind: str = "thumbnail"


def render(src: Path, out_dir: Path, max_pixels: int = DEFAULT_MAX_PIXELS,
           options: Options = DEFAULT_OPTIONS,
           shows: tuple[int, int] | None = None) -> list[Rendition]:
    """Make thumb_{box}.{ext} for each box that fits and each format. Idempotent: same input
    and options, same files (a re-run overwrites them).

    `shows`: the displayed size of what `src`, upright and never larger, is a picture of (a
    video, of which `src` is the poster). Boxes are planned and fitted from that size, so a
    video's thumbnails have the sizes its own frames would give, not the poster's rounding.
    """
    out: list[Rendition] = []
    if options.animated:  # opened apart: reading a GIF's frames can grow its size
        with open_image(src, max_pixels) as image:
            if image.format in _ANIMATED_FORMATS and frame_count(image) > 1:
                box = plan_boxes(image.size, options.boxes)[-1]
                out.append(_save_animation(image, box, out_dir, options))
    with open_image(src, max_pixels) as image:
        # Boxes are square: the stored size plans them as well as the displayed one, and
        # asking a PNG for its EXIF orientation would decode all of its pixels.
        stored = shows or image.size
        boxes = plan_boxes(stored, options.boxes)
        current = decode(image, boxes[0])  # frees the full-size pixels
    # Every size is fitted from the original's, not from the previous box's or a DCT-scaled
    # one (each rounds), so a box's size never depends on which boxes came before it.
    # EXIF orientation 5-8 swapped the sides (a poster is upright already).
    turned = shows is None and current.size != fit(stored, boxes[0])
    for box in boxes:
        size = fit(stored, box)
        current = _resize(current, size[::-1] if turned else size)
        out += _save_all(current, box, out_dir, options)
    return out


def plan_boxes(size: tuple[int, int], boxes: tuple[int, ...]) -> list[int]:
    """Boxes to make, largest first: those the image fills, and always the smallest one
    (made at the image's own size when the image is smaller: never upscaled)."""
    ordered = sorted(set(boxes), reverse=True)
    return [b for b in ordered if b <= max(size) or b == ordered[-1]]


def decode(image: Image.Image, box: int) -> Image.Image:
    """Decode `image` once into an upright 8-bit sRGB RGB/RGBA image fitting `box`. Consumes
    `image`: its full-size pixels are freed as soon as the small copy exists (an image that
    needs no change at all is returned as it is)."""
    icc = image.info.get("icc_profile")
    # Boxes are square, so the size that fits in stored orientation is the transposed size
    # that fits as displayed: resizing before rotating is exact.
    strips = _PngStrips.open(image, fit(image.size, box))
    if strips is not None:  # a big PNG: decoded a strip at a time, never whole
        with strips:
            pixels = _shrink_in_bands(strips.rows, image.size, fit(image.size, box), icc)
            orientation = strips.orientation()
    else:
        orientation = _orientation(image)
        pixels = _shrink_whole(image, box, icc)
    if pixels is not image:
        image.close()  # the full-size decode (48 MB for 12 MP): gone before anything else
    if orientation in _TRANSPOSE:
        pixels = pixels.transpose(_TRANSPOSE[orientation])
    return pixels


def _shrink_whole(image: Image.Image, box: int, icc: bytes | None) -> Image.Image:
    """Decode `image` (JPEG: at the smallest DCT scale that still fills `box`), resize it to
    fit `box` and convert it to sRGB. An RGB JPEG that needs shrinking is resized as its rows
    come out of the decoder; anything else is decoded whole first."""
    size = fit(image.size, box)  # from the stored size, not a DCT-scaled one (it rounds up)
    extent = None
    if image.format in ("JPEG", "MPO"):  # MPO: phones' multi-picture JPEGs, frame 0
        drafted = image.draft(image.mode, size)
        # 2049 px at 1/8 decode to 257, of which the picture spans 256.125
        extent = drafted[1][2:] if drafted else None
        if size != image.size:
            rows = _JpegRows.open(image)
            if rows is not None:
                with rows:
                    return _shrink_in_bands(rows.rows, image.size, size, icc, extent)
    pixels = _to_8bit(_load(image))
    if size == pixels.size and extent in (None, size):
        return to_srgb(pixels, icc)
    source = _premultiplied(pixels)  # once, not per band

    def rows(lo: int, hi: int) -> tuple[Image.Image, int]:
        return source, 0

    return _shrink_in_bands(rows, pixels.size, size, icc, extent)


def open_image(src: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open lazily (no pixels decoded) and refuse images that declare too many pixels."""
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 MP on; `max_pixels` below is the limit that applies.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(src)
    except Image.DecompressionBombError as exc:  # far above any limit: Pillow refuses it
        found = re.search(r"\((\d+) pixels\)", str(exc))
        declared = f"{int(found[1]) / 1e6:,.0f} MP" if found else "too many pixels"
        raise MediaError(f"The image declares {declared}, above the limit of "
                         f"{max_pixels / 1e6:.0f} MP; it was refused to protect the service "
                         "(too many pixels to decode safely).") from exc
    except UnidentifiedImageError as exc:
        raise MediaError("The file is not an image that can be decoded.") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        if "decompressed data too large" in str(exc).lower():  # Pillow's MAX_TEXT_CHUNK
            raise MediaError("The image carries an oversized metadata chunk (text or colour "
                             "profile) and was refused to protect the service.") from exc
        raise MediaError("The image header is corrupt and cannot be read.") from exc
    pixels = image.width * image.height
    if pixels > max_pixels:
        image.close()
        raise MediaError(
            f"The image declares {image.width}x{image.height} pixels "
            f"({pixels / 1e6:.0f} MP), above the limit of {max_pixels / 1e6:.0f} MP; "
            "it was refused to protect the service."
        )
    return image


def frame_count(image: Image.Image) -> int:
    """Frames in `image`; 1 when the frames after the first cannot be read (Pillow reads
    them all to count them, and a truncated GIF then raises struct.error or IndexError)."""
    try:
        return int(getattr(image, "n_frames", 1))
    except (OSError, EOFError, SyntaxError, ValueError, IndexError, struct.error) as exc:
        log.info("counting frames failed: %r", exc)
        return 1


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """Width and height as shown, after EXIF orientation."""
    return image.size[::-1] if _orientation(image) in (5, 6, 7, 8) else image.size


def fit(size: tuple[int, int], box: int) -> tuple[int, int]:
    """The largest size within `box`x`box` with the same aspect, never larger than `size`."""
    width, height = size
    scale = min(1.0, box / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def to_srgb(image: Image.Image, icc: bytes | None = None, *,
            in_place: bool = False) -> Image.Image:
    """Pixels in an 8-bit mode (L, LA, RGB, RGBA, CMYK) as sRGB RGB or RGBA, through the
    embedded ICC profile `icc` when there is one that is not already sRGB. `in_place`: RGB
    pixels may be converted where they are (13 % faster, no second buffer)."""
    if icc and not _is_srgb(icc):
        try:
            return _apply_profile(image, icc, in_place)
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken or mismatched profile: fall back to treating pixels as sRGB
    if image.mode in ("RGB", "RGBA"):
        return image
    return image.convert("RGBA" if image.mode == "LA" else "RGB")


def _apply_profile(image: Image.Image, icc: bytes, in_place: bool) -> Image.Image:
    alpha = image.getchannel("A") if image.mode in ("LA", "RGBA") else None
    colour = {"LA": "L", "RGBA": "RGB"}.get(image.mode, image.mode)
    if alpha is not None:
        image, in_place = image.convert(colour), True  # a copy of our own
    transform = _transform(icc, colour)
    if in_place and colour == "RGB":  # RGB to RGB: the only case with one mode for both
        ImageCms.applyTransform(image, transform, inPlace=True)
        converted = image
    else:
        converted = ImageCms.applyTransform(image, transform)
    if alpha is not None:
        converted.putalpha(alpha)
    return converted


@lru_cache(maxsize=16)
def _transform(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform:
    # Phones embed the same few profiles in every photo: building one costs a few ms.
    source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    return ImageCms.buildTransform(source, _SRGB, mode, "RGB")


@lru_cache(maxsize=64)
def profile_name(icc: bytes | None) -> str | None:
    """The description an ICC profile gives of itself ("Display P3"), or None if there is
    no profile or it cannot be parsed. Cached: phones embed the same few profiles."""
    if not icc:
        return None
    try:
        name = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc)))
    except (ImageCms.PyCMSError, OSError, ValueError):
        return None
    return name.strip()[:200] or None


def _is_srgb(icc: bytes) -> bool:
    # Converting sRGB to sRGB is an identity that still costs ~15 ns a pixel.
    return (profile_name(icc) or "").lower().startswith("srgb")


def _to_8bit(image: Image.Image) -> Image.Image:
    """Any mode as one of L, LA, RGB, RGBA, CMYK (8 bits a channel), keeping alpha; a
    palette or transparency Pillow cannot apply is a MediaError."""
    try:
        return _convert_to_8bit(image)
    except ValueError as exc:  # e.g. a tRNS chunk with more entries than the palette
        log.info("converting failed: %s", exc)
        raise MediaError("The image is corrupt (its palette or transparency does not fit its "
                         "pixels) and cannot be decoded: export it again.") from exc


def _convert_to_8bit(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return image.point(lambda v: v * (1 / 256)).convert("L")
    if image.mode in ("P", "PA"):
        alpha = "transparency" in image.info or image.mode == "PA"
        return image.convert("RGBA" if alpha else "RGB")
    if image.mode in ("RGBa", "La"):
        return image.convert(image.mode.upper())
    if image.mode in ("L", "RGB") and "transparency" in image.info:  # a PNG's colour key
        return image.convert({"L": "LA", "RGB": "RGBA"}[image.mode])
    if image.mode in ("1", "F"):
        return image.convert("L")
    if image.mode not in ("L", "LA", "RGB", "RGBA", "CMYK"):
        return image.convert("RGB")  # YCbCr, LAB, HSV and the like
    return image


def _resize(image: Image.Image, size: tuple[int, int],
            box: tuple[float, float, float, float] | None = None) -> Image.Image:
    """Lanczos-3 resize of `image`, or of its region `box` (left, top, right, bottom in
    fractional pixels; the filter reads past its edges as far as the image goes), to `size`.
    RGBA is resized with colour weighted by alpha, so transparent pixels do not bleed into
    edges; RGBa and La are taken as premultiplied already."""
    if size == image.size and box is None:
        return image
    if image.mode not in _SIMD_MODES:  # LA and La, or no SIMD wheel for this machine
        return image.resize(size, Image.Resampling.LANCZOS, box, reducing_gap=3.0)
    crop = None if box is None else CropBox(box[0], box[1], box[2] - box[0], box[3] - box[1])
    out = Image.new(image.mode, size, None)  # every pixel is written: no need to clear it
    # A Resizer per call: it is a few hundred ns, and one object is not safe across threads.
    Resizer().resize_pil(image, out, ResizeOptions(resize_alg=_LANCZOS3, crop_box=crop))
    return out


_LANCZOS3_SUPPORT = 3.0


def _shrink_in_bands(rows: Callable[[int, int], tuple[Image.Image, int]],
                     size_in: tuple[int, int], size: tuple[int, int], icc: bytes | None,
                     extent: tuple[float, float] | None = None) -> Image.Image:
    """Resize to `size` and convert to sRGB in bands of output rows. `rows(lo, hi)` gives an
    image holding source rows lo..hi-1 (premultiplied when there is alpha) and the source
    row its first row is. `extent`: the width and height of `size_in` that the picture
    spans, when its last column and row hold only part of a pixel. A single resize of
    12 MP holds a horizontal-pass copy of every source row (25 MB for 2048 px) and a colour
    conversion a copy of its output; bands hold a few rows' worth at a time.

    Colour is converted after resizing: lcms through Pillow takes 180 ms on 12 MP, 47 ms
    on 3 MP, and converting first moves the SSIM of the cascaded 1024 output by 0.00002."""
    width, height = extent or size_in
    scale = height / size[1]
    margin = _margin(scale)
    out = None
    for top in range(0, size[1], _BAND_ROWS):
        bottom = min(top + _BAND_ROWS, size[1])
        source, origin = rows(max(0, int(top * scale) - margin),
                              min(size_in[1], math.ceil(bottom * scale) + margin))
        # the last band's bottom, size[1] * (height / size[1]), can round to above height
        box = (0, top * scale - origin, width, min(bottom * scale, height) - origin)
        band = _resize(source, (size[0], bottom - top), box)
        band = to_srgb(_unpremultiplied(band), icc, in_place=True)  # a fresh band
        if out is None:  # every row is pasted: no need to clear it first
            out = Image.new(band.mode, size, None)
        out.paste(band, (0, top))
    return out


_BAND_ROWS = 128


def _premultiplied(image: Image.Image) -> Image.Image:
    """Resampling RGBa (not RGBA) weights colour by alpha: transparent pixels do not bleed."""
    mode = {"RGBA": "RGBa", "LA": "La"}.get(image.mode)
    return image.convert(mode) if mode else image


def _unpremultiplied(image: Image.Image) -> Image.Image:
    mode = {"RGBa": "RGBA", "La": "LA"}.get(image.mode)
    return image.convert(mode) if mode else image


class _PngStrips:
    """The rows of a big non-interlaced 8-bit PNG, decoded a strip at a time so that the
    whole image never sits in memory (12 MP of RGB is 48 MB in Pillow). Each strip goes
    through Pillow's own PNG row decoder ("zip"): its filtered rows in a stored (level 0)
    zlib stream, behind the unfiltered row above them, which the filters refer to."""

    def __init__(self, fh: BinaryIO, header: bytes, first_idat: bytes, keep: int):
        self._fh = fh
        width, self._height, _, colour = struct.unpack(">IIBB", header[:10])
        self._width, self._stride = width, 1 + width * _PNG_CHANNELS[colour]
        self._mode = _PNG_MODES[colour]
        self._palette: bytes | None = None
        self._transparency: int | tuple[int, ...] | bytes | None = None
        self._pending: bytes | None = first_idat
        self._inflate = _inflating.decompressobj(wbits=-zlib.MAX_WBITS)  # raw deflate
        self._header = b""  # the zlib header, as much of it as has been read
        self._adler, self._checked = 1, False  # Adler-32 of the filtered rows so far
        self._buf, self._first = bytearray(), 0  # filtered rows from row `_first` on
        # the last rows decoded, as many as the next strip may reach back, and the first
        self._above: tuple[Image.Image, int] | None = None
        self._keep = keep
        self._exif: bytes | None = None
        self._xmp: str | None = None

    @classmethod
    def open(cls, image: Image.Image, size: tuple[int, int]) -> _PngStrips | None:
        """Strips of `image` if it is a PNG this can stream and it needs shrinking."""
        if (image.format != "PNG" or size == image.size or not image.tile  # loaded already
                or not isinstance(image.filename, str)):
            return None
        fh = open(image.filename, "rb")  # noqa: SIM115 - closed by __exit__ or below
        try:
            if fh.read(8) != _PNG_SIGNATURE:
                raise OSError
            chunks = _png_chunks(fh)
            kind, header = next(chunks)
            depth, colour, interlace = header[8], header[9], header[12]
            if kind != b"IHDR" or depth != 8 or colour not in _PNG_CHANNELS or interlace:
                raise OSError
            # A strip is _BAND_ROWS output rows' worth of source rows: on a very wide, short
            # image that is most of it, held several times over; decode those whole.
            width, height = image.size
            scale = height / size[1]
            strip_rows = _BAND_ROWS * scale + 2 * _margin(scale)
            if strip_rows * width * _PNG_CHANNELS[colour] > _MAX_STRIP_BYTES:
                raise OSError
            palette = transparency = exif = None
            for kind, data in chunks:
                if kind == b"IDAT":
                    if colour == 3 and (palette is None or len(palette) % 3
                                        or len(palette) > 768 or len(transparency or b"") > 256):
                        raise OSError  # no palette, or a malformed one: decoded whole
                    # a strip starts at most 2 margins and a row above the last one's end
                    strips = cls(fh, header, data, keep=2 * _margin(scale) + 4)
                    strips._palette, strips._exif = palette, exif
                    strips._xmp = image.info.get("XML:com.adobe.xmp")  # an iTXt before IDAT
                    strips._transparency = _png_transparency(colour, transparency)
                    return strips
                palette = data if kind == b"PLTE" else palette
                transparency = data if kind == b"tRNS" else transparency
                exif = data if kind == b"eXIf" else exif
        except (OSError, StopIteration, IndexError, MediaError):
            pass  # anything unusual: Pillow decodes it whole, and says what is wrong
        fh.close()
        return None

    def __enter__(self) -> _PngStrips:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()

    def rows(self, lo: int, hi: int) -> tuple[Image.Image, int]:
        """Source rows lo..hi-1, and the row above them, premultiplied if there is alpha.
        Each call starts at or after the last one's start, and at most `keep` - 1 rows
        before its end."""
        self._inflate_to(hi)
        start = (lo - self._first) * self._stride
        origin, above = lo, b""
        if self._above is not None and lo > 0:  # filters refer to the unfiltered row above
            kept, first = self._above
            origin = lo - 1
            above = b"\0" + kept.crop((0, origin - first, self._width, lo - first)).tobytes()
        rows = memoryview(self._buf)[start:(hi - self._first) * self._stride]
        with rows:  # released before the buffer is trimmed below
            data = zlib.compress(b"".join((above, rows)), 0)
        strip = self._decode(data, hi - origin)
        del data
        tail = max(0, strip.height - self._keep)
        self._above = strip.crop((0, tail, self._width, strip.height)), origin + tail
        del self._buf[:start]
        self._first = lo
        return _premultiplied(_to_8bit(strip)), origin

    def orientation(self) -> int:
        """EXIF orientation from the eXIf chunk, before or after the pixels, else from XMP
        (as Pillow's getexif reads it for a PNG decoded whole). Call it last."""
        try:
            if self._exif is None:
                self._exif = next((data for kind, data in _png_chunks(self._fh)
                                   if kind == b"eXIf"), None)
            exif = Image.Exif()
            if self._exif is not None:
                exif.load(self._exif)
            if _ORIENTATION in exif:
                return int(exif[_ORIENTATION])
        except (MediaError, OSError, SyntaxError, ValueError, TypeError):
            return 1
        found = _XMP_ORIENTATION.search(self._xmp or "")
        return int(found[2]) if found else 1

    def _inflate_to(self, row: int) -> None:
        need = (row - self._first) * self._stride
        try:
            while len(self._buf) < need:
                # the inflater may hold output back when it stopped at the length asked for
                # with all its input taken: that comes first, then the rest of its input
                data = self._inflate.unconsumed_tail
                more = self._inflate.decompress(data, need - len(self._buf))
                if not (more or data):
                    more = self._inflate.decompress(self._next_idat(), need - len(self._buf))
                if not more and self._inflate.eof:  # the pixels end before the image does
                    raise MediaError(_CORRUPT)
                self._adler = zlib.adler32(more, self._adler)
                self._buf += more
            if row == self._height and not self._checked:
                self._check_adler()
        except _INFLATE_ERRORS as exc:
            raise MediaError(f"The image is corrupt and cannot be decoded ({exc}).") from exc

    def _check_adler(self) -> None:
        """With every row out: the stream's Adler-32, where zlib (and Pillow's own decode)
        would check it, when the stream ends in the IDAT that holds the last rows. Damaged
        stored blocks, or a flipped bit a deflate stream survives, have no other check."""
        self._checked = True
        more = self._inflate.decompress(self._inflate.unconsumed_tail, 1)
        trailer = self._inflate.unused_data[:4]
        if (not more and self._inflate.eof and len(trailer) == 4
                and int.from_bytes(trailer, "big") != self._adler):
            raise MediaError(_CORRUPT)

    def _next_idat(self) -> bytes:
        data, self._pending = self._pending, None
        if data is not None:
            return self._raw(data)
        kind, data = next(_png_chunks(self._fh), (b"IEND", b""))
        if kind != b"IDAT" or self._inflate.eof:
            raise MediaError("The image is truncated or corrupt and cannot be decoded.")
        return self._raw(data)

    def _raw(self, data: bytes) -> bytes:
        """`data` after the zlib header, which is checked as zlib checks it (deflate, a
        window of at most 32 KiB), and for no preset dictionary (a PNG has none)."""
        if len(self._header) == 2:
            return data
        taken = 2 - len(self._header)
        self._header += data[:taken]
        if len(self._header) == 2:
            cmf, flags = self._header
            if cmf & 0x0F != 8 or cmf >> 4 > 7 or (cmf << 8 | flags) % 31 or flags & 0x20:
                raise MediaError(_CORRUPT)
        return data[taken:]

    def _decode(self, data: bytes, height: int) -> Image.Image:
        try:  # Pillow's PNG row decoder: inflates and undoes the filters
            strip = Image.frombytes(self._mode, (self._width, height), data, "zip", self._mode)
        except ValueError as exc:  # a filter type that does not exist, say
            log.info("decoding failed: %s", exc)
            raise MediaError(_CORRUPT) from exc
        if self._palette is not None:
            strip.putpalette(self._palette)
        if self._transparency is not None:
            strip.info["transparency"] = self._transparency
        return strip


class _JpegRows:
    """The rows of an RGB JPEG, decoded by Pillow's own JPEG decoder into memory that is
    given back to the system a band at a time, so the whole image never sits in memory
    (12 MP is 48 MB in Pillow, which keeps RGB at 4 bytes a pixel; this holds a few MB).

    The decoder is fed the file a block at a time, as Pillow feeds it, and libjpeg suspends
    when a block runs out, so it is never far ahead of the rows asked for (a baseline JPEG;
    a progressive one is read whole before its first row, so it is decoded whole). Its
    target is an image mapped onto fresh anonymous memory: a row whose pixels have not been
    written yet reads as zeros, and a written one has 255 in each pixel's fourth byte, which
    is how the rows already decoded are told apart. Rows above the current band are handed
    back with madvise(MADV_DONTNEED). Output is bit for bit that of a whole decode (tested).

    The mapping asks for transparent huge pages, and its pixels start on a huge page's
    boundary, so that rows are handed back in whole huge pages: 4 KiB pages cost a fault
    each (~9,000 and 28 ms of system time for 8-12 MP), and a huge page handed back in part
    is split and stays allocated.
    """

    def __init__(self, image: Image.Image, target: Image.Image, memory: mmap.mmap,
                 start: int, decoder: object):
        self._fh, self._memory, self._target, self._decoder = image.fp, memory, target, decoder
        self._start = start  # where the pixels start in the mapping
        self._stride, self._block = image.width * 4, image.decodermaxblock
        self._pending, self._done, self._released = b"", False, 0

    @classmethod
    def open(cls, image: Image.Image) -> _JpegRows | None:
        """Rows of `image`, a baseline RGB JPEG opened from a file, at its draft size; None
        for anything else (CMYK, greyscale, progressive, small, already loaded), which is
        decoded whole."""
        if (not _JPEG_ROWS or image.mode != "RGB" or len(image.tile) != 1
                or image.tile[0][0] != "jpeg" or image.fp is None
                or image.info.get("progressive")
                or image.width * image.height * 4 < _JPEG_ROWS_FROM):
            return None
        (_, extents, offset, args), (width, height) = image.tile[0], image.size
        # private: a shared mapping keeps the pages it is told it does not need
        memory = mmap.mmap(-1, width * height * 4 + _HUGE_PAGE, flags=mmap.MAP_PRIVATE)
        with contextlib.suppress(AttributeError, OSError):  # no THP: 4 KiB pages
            memory.madvise(mmap.MADV_HUGEPAGE)
        start = -_address(memory) % _HUGE_PAGE
        try:  # Pillow's own building blocks, as ImageFile.load and Image.frombuffer use them
            core = Image.core.map_buffer(memory, image.size, "raw", start, ("RGB", 0, 1))
            target = Image.new("RGB", (0, 0))._new(core)
            decoder = Image._getdecoder(image.mode, "jpeg", args, image.decoderconfig)
            decoder.setimage(target.im, extents)
            image.fp.seek(offset)
        except (AttributeError, TypeError, ValueError, OSError) as exc:  # pragma: no cover
            log.warning("decoding JPEG rows as they come is not possible here (%s): "
                        "decoding whole", exc)
            return None
        return cls(image, target, memory, start, decoder)

    def __enter__(self) -> _JpegRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self._decoder.cleanup()  # frees libjpeg's state, also after an error
        self._decoder = self._target = None  # the decoder holds the image, which maps memory
        # BufferError: a traceback still holds a band's source; unmapped when it goes
        with contextlib.suppress(BufferError):
            self._memory.close()

    def rows(self, lo: int, hi: int) -> tuple[Image.Image, int]:
        """An image holding source rows lo..hi-1, and 0: the row its first row is. Rows
        before `lo` are given back, so each call must start at or after the last one's."""
        self._decode_to(hi - 1)
        # whole huge pages (the mapping's first bytes, before the pixels, are never used)
        released = self._start + lo * self._stride // _HUGE_PAGE * _HUGE_PAGE
        if released > self._released and hasattr(self._memory, "madvise"):
            self._memory.madvise(mmap.MADV_DONTNEED, self._released,
                                 released - self._released)
            self._released = released
        return self._target, 0

    def _decode_to(self, row: int) -> None:
        while not self._done and self._memory[self._start + row * self._stride + 3] != 255:
            data = self._fh.read(self._block)
            # libjpeg takes a marker segment (< 64 KB) or a row of blocks whole, or rereads
            # it: data it leaves for much longer is damage, e.g. megabytes of 0xFF, which
            # would cost time growing with the square of its length
            if not data or len(self._pending) > _JPEG_MAX_PENDING:
                raise MediaError(_CORRUPT)
            self._pending += data
            consumed, error = self._decoder.decode(self._pending)
            if consumed < 0:  # the decoder has finished, or failed
                if error < 0:
                    log.info("decoding failed: error %d", error)
                    raise MediaError(_CORRUPT)
                self._done = True
            self._pending = self._pending[max(consumed, 0):]


# Only on Linux, where MADV_DONTNEED frees memory at once (elsewhere it is a hint, and there
# would be nothing to gain), and with the Pillow versions checked.
_JPEG_ROWS = _PILLOW_MAJOR in _CHECKED_PILLOW_MAJORS and sys.platform == "linux"
# Below this (bytes decoded), memory that is mapped and handed back costs more than it saves
_JPEG_ROWS_FROM = 8 * 2**20
_JPEG_MAX_PENDING = 2**20
_HUGE_PAGE = 2 * 2**20  # x86-64's and most ARM64 kernels' transparent huge page
_CORRUPT = ("The image is truncated or corrupt and cannot be decoded: export or upload the "
            "complete file again.")
_MAX_STRIP_BYTES = 16 * 2**20  # a 12 MP photo's strips are about 4 MB
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> bytes a pixel at 8 bits
_PNG_MODES = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}


def _address(memory: mmap.mmap) -> int:
    """Where `memory` is mapped."""
    view = ctypes.c_char.from_buffer(memory)
    try:
        return ctypes.addressof(view)
    finally:
        del view  # the mapping can be closed only once nothing points into it


def _png_transparency(colour: int, trns: bytes | None) -> int | tuple[int, ...] | bytes | None:
    """A tRNS chunk as Pillow's PNG reader gives it: an alpha a palette entry (P), or the
    one grey or RGB value that is transparent (samples of 16 bits)."""
    if trns is not None and colour == 3:
        return trns
    if trns is not None and colour == 0 and len(trns) >= 2:
        return struct.unpack(">H", trns[:2])[0]
    if trns is not None and colour == 2 and len(trns) >= 6:
        return struct.unpack(">3H", trns[:6])
    return None


def _margin(scale: float) -> int:
    """Source rows beyond a band's edge that Lanczos-3 reads, shrinking by `scale`."""
    return math.ceil(_LANCZOS3_SUPPORT * scale) + 2


def _png_chunks(fh: BinaryIO) -> Iterator[tuple[bytes, bytes]]:
    """(type, data) of each chunk from the file position on, up to IEND. CRCs are not
    checked. A length beyond the end of the file is refused before anything is read."""
    size = os.fstat(fh.fileno()).st_size
    while True:
        head = fh.read(8)
        if len(head) < 8:
            raise MediaError("The image is truncated or corrupt and cannot be decoded.")
        length, kind = struct.unpack(">I4s", head)
        if length > size - fh.tell():
            raise MediaError("The image is truncated or corrupt and cannot be decoded.")
        data = fh.read(length)
        if len(data) < length or len(fh.read(4)) < 4:
            raise MediaError("The image is truncated or corrupt and cannot be decoded.")
        yield kind, data
        if kind == b"IEND":
            return


def _orientation(image: Image.Image) -> int:
    """EXIF orientation still to apply: from EXIF, or XMP's tiff:Orientation (Pillow's
    getexif reads both); 1 for a TIFF that Pillow turns upright itself."""
    if image.format == "TIFF" and _PILLOW_TURNS_TIFFS:
        return 1
    try:
        return int(image.getexif().get(_ORIENTATION, 1))
    except (OSError, SyntaxError, ValueError, TypeError):
        return 1


# Pillow 13 reports a TIFF's size as displayed and turns its pixels upright as it loads them,
# while its Orientation tag still reads as before: turning it again put it on its side.
_PILLOW_TURNS_TIFFS = _PILLOW_MAJOR >= 13
_XMP_ORIENTATION = re.compile(r'tiff:Orientation(="|>)([0-9])')


def _load(image: Image.Image) -> Image.Image:
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        log.info("decoding failed: %s", exc)  # the decoder's words, for whoever debugs it
        raise MediaError(_CORRUPT) from exc
    return image


def _save_all(image: Image.Image, box: int, out_dir: Path, options: Options) -> list[Rendition]:
    out = []
    for name in options.formats:
        ext, content_type = FORMATS[name]
        path = out_dir / f"thumb_{box}.{ext}"
        _save(image, path, name, options)
        out.append(Rendition(path.name, path, content_type, image.width, image.height))
    return out


def _save(image: Image.Image, path: Path, name: str, options: Options) -> None:
    # Only the arguments given here are written: no EXIF, XMP or GPS from the source.
    if name == "webp":
        image.save(path, "WEBP", quality=options.webp_quality, method=options.webp_method,
                   icc_profile=_SRGB_BYTES)
    elif name == "avif":
        image.save(path, "AVIF", quality=options.avif_quality, icc_profile=_SRGB_BYTES)
    elif name == "png":  # lossless, for measuring quality without an encoder's loss
        image.save(path, "PNG", compress_level=1, icc_profile=_SRGB_BYTES)
    else:
        # Baseline JPEG as libvips and imgproxy write by default: progressive with optimised
        # Huffman tables is ~4 % smaller but costs 5x the encode time (51 ms vs 9 at 2048 px).
        flat = _flatten(image) if image.mode == "RGBA" else image  # JPEG has no alpha
        flat.save(path, "JPEG", quality=options.jpeg_quality, subsampling=JPEG_SUBSAMPLING,
                  icc_profile=_SRGB_BYTES)


def _flatten(image: Image.Image) -> Image.Image:
    flat = Image.new("RGB", image.size, (255, 255, 255))
    flat.paste(image, mask=image.getchannel("A"))
    return flat


def _save_animation(image: Image.Image, box: int, out_dir: Path, options: Options) -> Rendition:
    """anim_{box}.webp from the first MAX_ANIMATION_FRAMES frames, each fitted to `box` and
    turned upright. A frame Pillow decodes larger than the first (a GIF frame reaching
    past its screen) is cut to the first's size, and a damaged or truncated file animates
    the frames before the damage, as browsers show them."""
    icc = image.info.get("icc_profile")
    turn = _TRANSPOSE.get(_orientation(image))
    size = fit(image.size, box)
    frames, durations = [], []
    try:
        for index, frame in enumerate(ImageSequence.Iterator(image)):
            if index == MAX_ANIMATION_FRAMES:
                break
            rgba = _to_8bit(frame.convert("RGBA"))
            if index == 0:
                first = rgba.size
            elif rgba.size != first:
                rgba = rgba.crop((0, 0, *first))  # beyond the screen, or transparent
            still = to_srgb(_resize(rgba, size), icc)
            frames.append(still.transpose(turn) if turn is not None else still)
            durations.append(int(frame.info.get("duration") or 100))
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
        if not frames:
            raise MediaError(_CORRUPT) from exc
        log.info("animation cut at frame %d: %r", len(frames), exc)
    path = out_dir / f"anim_{box}.webp"
    frames[0].save(path, "WEBP", save_all=True, append_images=frames[1:], duration=durations,
                   loop=0, quality=options.webp_quality, method=options.webp_method,
                   icc_profile=_SRGB_BYTES)
    return Rendition(path.name, path, "image/webp", frames[0].width, frames[0].height)
