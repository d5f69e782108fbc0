"""Thumbnails with real Pillow on the corpus: sizes, orientation, colour, alpha, metadata
stripping, and readable refusals for broken or hostile files."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageCms, ImageOps, ImageStat

from media import thumbnails
from media.errors import MediaError
from tests.conftest import CORPUS as SHARED_CORPUS

CORPUS = SHARED_CORPUS / "images"
ORIENTATION = [f"{kind}_{n}" for kind in ("Landscape", "Portrait") for n in range(9)]
EXCEPTION_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception|Warning)\b")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """Render a corpus file once per module: name -> {thumbnail file name: Rendition}."""
    cache: dict[str, dict[str, thumbnails.Rendition]] = {}

    def render(name: str) -> dict[str, thumbnails.Rendition]:
        if name not in cache:
            out = tmp_path_factory.mktemp(Path(name).stem)
            cache[name] = {r.name: r for r in thumbnails.render(CORPUS / name, out)}
        return cache[name]

    return render


def pixels(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("L")


def difference(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference of two greyscale images of one size, 0..255."""
    assert a.size == b.size
    return ImageStat.Stat(ImageChops.difference(a, b)).mean[0]


@pytest.mark.parametrize("name", ORIENTATION)
def test_orientation_sizes(rendered, name):
    out = rendered(f"orientation/{name}.jpg")
    landscape = name.startswith("Landscape")

    # Displayed 1800x1200 (or 1200x1800): the 2048 box is larger than the image, skipped.
    assert sorted(out) == ["thumb_1024.jpg", "thumb_1024.webp", "thumb_256.jpg",
                           "thumb_256.webp"]
    expected = {1024: (1024, 683), 256: (256, 171)}
    for box, size in expected.items():
        size = size if landscape else size[::-1]
        for ext in ("jpg", "webp"):
            rendition = out[f"thumb_{box}.{ext}"]
            assert (rendition.width, rendition.height) == size
            with Image.open(rendition.path) as image:
                assert image.size == size


@pytest.mark.parametrize("name", ORIENTATION)
def test_orientation_is_upright(rendered, name):
    """Every orientation shows the same upright "F" as the untransformed *_1 file."""
    kind = name.split("_")[0]
    reference = pixels(rendered(f"orientation/{kind}_1.jpg")["thumb_256.webp"].path)
    thumb = pixels(rendered(f"orientation/{name}.jpg")["thumb_256.webp"].path)

    assert difference(thumb, reference) < 8
    # ...and the check can tell: a mirrored or upside-down "F" is far off.
    assert difference(ImageOps.mirror(thumb), reference) > 25
    assert difference(ImageOps.flip(thumb), reference) > 25


def test_box_larger_than_a_small_image_is_skipped_but_256_made_at_own_size(rendered):
    out = rendered("camera/Canon_40D.jpg")  # 100x68

    assert sorted(out) == ["thumb_256.jpg", "thumb_256.webp"]
    for rendition in out.values():
        with Image.open(rendition.path) as image:
            assert image.size == (100, 68) == (rendition.width, rendition.height)


def test_a_large_image_gets_every_box(rendered):
    out = rendered("misc/vacation_2017.jpg")  # 2560x1440

    sizes = {name: (r.width, r.height) for name, r in out.items()}
    assert sizes == {"thumb_2048.webp": (2048, 1152), "thumb_2048.jpg": (2048, 1152),
                     "thumb_1024.webp": (1024, 576), "thumb_1024.jpg": (1024, 576),
                     "thumb_256.webp": (256, 144), "thumb_256.jpg": (256, 144)}
    for rendition in out.values():
        assert rendition.content_type == ("image/webp" if rendition.name.endswith(".webp")
                                          else "image/jpeg")
        assert rendition.kind == "thumbnail"


@pytest.mark.parametrize("name", [
    "orientation/Portrait_6.jpg", "camera/DSCN0010.jpg", "camera/DSCN0021.jpg",
    "camera/IMG_5195.HEIC", "pillow/hopper_orientation_6.webp", "pillow/exif_gps.jpg",
    "camera/Canon_40D.jpg",
])
def test_no_thumbnail_carries_exif_or_xmp(rendered, name):
    with Image.open(CORPUS / name) as source:
        assert len(source.getexif()) > 0  # there was something to strip

    for rendition in rendered(name).values():
        with Image.open(rendition.path) as image:
            assert len(image.getexif()) == 0, rendition.name
            assert "exif" not in image.info and "xmp" not in image.info, rendition.name
            assert not any(key.startswith("XML:") for key in image.info), rendition.name


@pytest.mark.parametrize("name", ["orientation/Landscape_3.jpg", "camera/BSG1.tiff",
                                  "pillow/pil_sample_cmyk.jpg", "pillow/mode_16bit.png",
                                  "pillow/tiff_16bit_RGBa.tiff", "misc/pigs_in_a_polka.gif",
                                  "camera/IMG_5195.HEIC", "pillow/icc_profile.avif"])
def test_jpeg_thumbnails_are_rgb_and_tagged_srgb(rendered, name):
    for rendition in rendered(name).values():
        with Image.open(rendition.path) as image:
            assert image.mode in (("RGB",) if rendition.name.endswith(".jpg")
                                  else ("RGB", "RGBA")), rendition.name
            profile = ImageCms.ImageCmsProfile(io.BytesIO(image.info["icc_profile"]))
            assert "sRGB" in profile.profile.profile_description, rendition.name
            assert profile.profile.xcolor_space.strip() == "RGB", rendition.name


def test_greyscale_jpeg_thumbnail_is_rgb(tmp_path):
    """An sRGB profile describes RGB pixels; a grey JPEG carrying it is malformed."""
    source = tmp_path / "grey.png"
    Image.linear_gradient("L").resize((300, 200)).save(source)

    out = {r.name: r for r in thumbnails.render(source, tmp_path)}

    with Image.open(out["thumb_256.jpg"].path) as image:
        assert image.mode == "RGB"
        r, g, b = image.split()
        assert difference(r, g) < 2 and difference(g, b) < 2  # still grey


def test_webp_of_rgba_png_keeps_alpha_and_jpeg_is_flattened_on_white(rendered):
    out = rendered("pillow/pil123rgba.png")
    with Image.open(CORPUS / "pillow/pil123rgba.png") as source:
        alpha = source.getchannel("A")
        transparent = next(xy for xy in ((x, y) for y in range(source.height)
                                         for x in range(source.width)) if alpha.getpixel(xy) == 0)

    with Image.open(out["thumb_256.webp"].path) as webp:
        assert webp.mode == "RGBA"
        assert webp.getchannel("A").getextrema()[0] == 0  # some pixels fully transparent
        assert webp.getchannel("A").getpixel(transparent) == 0
    with Image.open(out["thumb_256.jpg"].path) as jpeg:
        assert jpeg.mode == "RGB"
        assert all(channel > 240 for channel in jpeg.getpixel(transparent))  # white


def test_cmyk_jpeg_gives_rgb_with_sane_colours(rendered):
    out = rendered("pillow/pil_sample_cmyk.jpg")
    with Image.open(CORPUS / "pillow/pil_sample_cmyk.jpg") as source:
        assert source.mode == "CMYK"
        expected = source.convert("RGB")

    for rendition in out.values():
        with Image.open(rendition.path) as image:
            assert image.mode == "RGB"
            # not inverted or garbled: close to Pillow's own CMYK -> RGB conversion
            assert difference(image.convert("L"), expected.convert("L")) < 12


def test_heic_renders(rendered):
    """An iPhone HEIC in Display P3 (decoding one takes a second: one is enough here)."""
    name = "camera/IMG_5195.HEIC"
    out = rendered(name)
    with Image.open(CORPUS / name) as source:
        width, height = source.size

    assert set(out) >= {"thumb_256.webp", "thumb_256.jpg", "thumb_1024.webp", "thumb_2048.jpg"}
    with Image.open(out["thumb_1024.jpg"].path) as image:
        assert image.size == thumbnails.fit((width, height), 1024)
        assert image.getextrema() != ((0, 0), (0, 0), (0, 0))  # not a black frame


@pytest.mark.parametrize("name", ["pillow/decompression_bomb.gif",
                                  "pillow/truncated_jpeg.jpg", "pillow/truncated_image.png"])
def test_hostile_or_broken_files_fail_with_a_readable_sentence(tmp_path, name):
    with pytest.raises(MediaError) as caught:
        thumbnails.render(CORPUS / name, tmp_path)

    message = str(caught.value)
    assert message[0].isupper() and message.endswith(".")
    assert not EXCEPTION_NAME.search(message), message
    assert list(tmp_path.iterdir()) == []  # nothing half-made left behind


def test_not_an_image_is_refused(tmp_path):
    source = tmp_path / "fake.jpg"
    source.write_bytes(b"\xff\xd8\xff but then nothing like a JPEG")

    with pytest.raises(MediaError):
        thumbnails.render(source, tmp_path)


def test_pixel_limit_is_the_configured_one(tmp_path):
    """Pillow's own warning threshold (about 89 MP) must not undercut `max_pixels`."""
    source = tmp_path / "big.png"
    Image.new("1", (10_000, 9_000)).save(source)  # 90 MP, declared in a few kilobytes

    with thumbnails.open_image(source, max_pixels=100_000_000) as image:
        assert image.size == (10_000, 9_000)
    with pytest.raises(MediaError, match="above the limit of 50 MP"):
        thumbnails.open_image(source, max_pixels=50_000_000)


@pytest.mark.parametrize(("size", "box", "expected"), [
    ((1800, 1200), 1024, (1024, 683)),
    ((1200, 1800), 256, (171, 256)),
    ((100, 68), 256, (100, 68)),
    ((5000, 1), 256, (256, 1)),
    ((2048, 2048), 2048, (2048, 2048)),
])
def test_fit(size, box, expected):
    assert thumbnails.fit(size, box) == expected


def test_render_is_idempotent(tmp_path):
    source = CORPUS / "camera/Nikon_D70.jpg"

    first = {r.name: r.path.read_bytes() for r in thumbnails.render(source, tmp_path)}
    second = {r.name: r.path.read_bytes() for r in thumbnails.render(source, tmp_path)}

    assert first == second
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(first)
