"""Image thumbnails with Pillow: a file in, WebP and JPEG files out.

Decodes once, at the smallest scale that still serves the largest box (JPEG DCT scaling via
`draft`), applies EXIF orientation, converts colour to sRGB, then cascades from the largest
box down so each resize starts from the previous, smaller image. Output carries no EXIF.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from media.errors import MediaError

BOXES = (2048, 1024, 256)
FORMATS = (("webp", "image/webp"), ("jpg", "image/jpeg"))
WEBP_QUALITY = 80
JPEG_QUALITY = 85
DEFAULT_MAX_PIXELS = 100_000_000

_SRGB = ImageCms.createProfile("sRGB")
_SRGB_BYTES = ImageCms.ImageCmsProfile(_SRGB).tobytes()

try:  # HEIC/HEIF from phones; optional so the rest works without the wheel
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # pragma: no cover - depends on the install
    pass


@dataclass(frozen=True)
class Rendition:
    """One file made from an input, ready to store."""

    name: str
    path: Path
    content_type: str
    width: int
    height: int
    kind: str = "thumbnail"


def render(src: Path, out_dir: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Rendition]:
    """Make thumb_{box}.{webp,jpg} for each box that fits. Idempotent: same input, same files."""
    image = open_image(src, max_pixels)
    width, height = displayed_size(image)
    boxes = [b for b in BOXES if b <= max(width, height) or b == min(BOXES)]
    with image:
        _draft(image, fit((width, height), boxes[0]), _transposed(image))
        current = to_srgb(_load(ImageOps.exif_transpose(_load(image))))
    out: list[Rendition] = []
    for box in boxes:
        size = fit(current.size, box)
        if size != current.size:
            current = current.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        out += _save_all(current, box, out_dir)
    return out


def open_image(src: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open lazily (no pixels decoded) and refuse images that declare too many pixels."""
    try:
        with warnings.catch_warnings():
            # Pillow warns from 89 MP on; `max_pixels` below is the limit that applies.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(src)
    except Image.DecompressionBombError as exc:
        raise MediaError(f"The image declares too many pixels and was refused ({exc}).") from exc
    except UnidentifiedImageError as exc:
        raise MediaError("The file is not an image that can be decoded.") from exc
    pixels = image.width * image.height
    if pixels > max_pixels:
        image.close()
        raise MediaError(
            f"The image declares {image.width}x{image.height} pixels "
            f"({pixels / 1e6:.0f} MP), above the limit of {max_pixels / 1e6:.0f} MP; "
            "it was refused to protect the service."
        )
    return image


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """Width and height as shown, after EXIF orientation."""
    return image.size[::-1] if _transposed(image) else image.size


def fit(size: tuple[int, int], box: int) -> tuple[int, int]:
    """The largest size within `box`x`box` with the same aspect, never larger than `size`."""
    width, height = size
    scale = min(1.0, box / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def to_srgb(image: Image.Image) -> Image.Image:
    """Convert any mode and embedded ICC profile to 8-bit sRGB (RGB, RGBA or L)."""
    icc = image.info.get("icc_profile")
    image = _to_8bit(image)
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            mode = "RGBA" if image.mode in ("RGBA", "LA") else "RGB"
            if image.mode == "LA":
                image = image.convert("RGBA")
            return ImageCms.profileToProfile(image, source, _SRGB, outputMode=mode)
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: fall back to treating the pixels as sRGB
    return image.convert(_target_mode(image)) if image.mode not in ("RGB", "RGBA", "L") else image


def _to_8bit(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return image.point(lambda v: v * (1 / 256)).convert("L")
    if image.mode == "F":
        return image.convert("L")
    if image.mode in ("P", "PA"):
        alpha = "transparency" in image.info or image.mode == "PA"
        return image.convert("RGBA" if alpha else "RGB")
    if image.mode in ("RGBa", "La"):
        return image.convert("RGBA")
    if image.mode == "1":
        return image.convert("L")
    return image


def _target_mode(image: Image.Image) -> str:
    return "RGBA" if image.mode in ("LA", "RGBA") else "RGB"


def _transposed(image: Image.Image) -> bool:
    try:
        return image.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except (OSError, SyntaxError, ValueError):
        return False


def _draft(image: Image.Image, target: tuple[int, int], transposed: bool) -> None:
    """Let the JPEG decoder scale by 1/2..1/8 while staying at least `target`."""
    if image.format == "JPEG":
        image.draft(image.mode, target[::-1] if transposed else target)


def _load(image: Image.Image) -> Image.Image:
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise MediaError(
            f"The image is truncated or corrupt and cannot be decoded ({exc})."
        ) from exc
    return image


def _save_all(image: Image.Image, box: int, out_dir: Path) -> list[Rendition]:
    out = []
    for ext, content_type in FORMATS:
        path = out_dir / f"thumb_{box}.{ext}"
        _save(image, path, ext)
        out.append(Rendition(path.name, path, content_type, image.width, image.height))
    return out


def _save(image: Image.Image, path: Path, ext: str) -> None:
    if ext == "webp":
        image.save(path, "WEBP", quality=WEBP_QUALITY, method=4, icc_profile=_SRGB_BYTES)
        return
    if image.mode == "RGBA":  # JPEG has no alpha: flatten on white
        flat = Image.new("RGB", image.size, (255, 255, 255))
        flat.paste(image, mask=image.getchannel("A"))
        image = flat
    elif image.mode != "RGB":  # grey: the sRGB profile we embed is for RGB pixels only
        image = image.convert("RGB")
    image.save(path, "JPEG", quality=JPEG_QUALITY, optimize=True, progressive=True,
               icc_profile=_SRGB_BYTES)
