"""Thumbnails with real Pillow on the corpus: sizes, orientation, colour, alpha, metadata
stripping, and readable refusals for broken or hostile files."""

from __future__ import annotations

import io
import re
import zlib
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


# --- colour, modes and alpha ------------------------------------------------------------

_LINEAR = [((c / 255 + 0.055) / 1.055) ** 2.4 if c > 10 else c / 255 / 12.92 for c in range(256)]


def _lab(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    """CIELAB (D65) of an sRGB pixel."""
    r, g, b = (_LINEAR[c] for c in rgb)
    xyz = ((0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047, 0.2126 * r + 0.7152 * g + 0.0722 * b,
           (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883)
    fx, fy, fz = (t ** (1 / 3) if t > 0.008856 else 7.787 * t + 16 / 116 for t in xyz)
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def delta_e(a: Image.Image, b: Image.Image) -> float:
    """Mean CIE76 delta-E of two sRGB images over a 16x16 grid of block averages: colour,
    not the detail that resampling and lossy encoding move pixel by pixel."""
    a, b = (im.convert("RGB").resize((16, 16), Image.Resampling.BOX) for im in (a, b))
    pairs = zip(a.get_flattened_data(), b.get_flattened_data(), strict=True)
    return sum(sum((x - y) ** 2 for x, y in zip(_lab(p), _lab(q), strict=True)) ** 0.5
               for p, q in pairs) / 256


def test_wide_gamut_heic_lands_within_a_small_delta_e_of_the_srgb_reference(rendered):
    """Display P3 pixels read as if they were sRGB look dull; converted, they match."""
    name = "camera/IMG_5195.HEIC"
    with Image.open(CORPUS / name) as source:
        icc = source.info["icc_profile"]
        assert "P3" in ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc)))
        source = source.convert("RGB")
    thumb_path = rendered(name)["thumb_256.webp"].path
    with Image.open(thumb_path) as thumb:
        size = thumb.size
        thumb = thumb.convert("RGB")
    srgb = ImageCms.profileToProfile(source, ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                     ImageCms.createProfile("sRGB"), outputMode="RGB")
    reference = srgb.resize(size, Image.Resampling.LANCZOS)
    unconverted = source.resize(size, Image.Resampling.LANCZOS)

    assert delta_e(thumb, reference) < 1.5
    assert delta_e(unconverted, reference) > 2.0  # the check can tell a missed conversion


@pytest.mark.parametrize("name", ["camera/BSG1.tiff", "pillow/icc_profile_big.jpg"])
def test_embedded_profiles_are_converted_to_srgb(rendered, name):
    with Image.open(CORPUS / name) as source:
        icc = source.info["icc_profile"]
        source = source.convert("RGB")
    with Image.open(rendered(name)["thumb_256.jpg"].path) as thumb:
        size, thumb = thumb.size, thumb.convert("RGB")
    srgb = ImageCms.profileToProfile(source, ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                     ImageCms.createProfile("sRGB"), outputMode="RGB")

    assert delta_e(thumb, srgb.resize(size, Image.Resampling.LANCZOS)) < 1.5
    assert delta_e(source.resize(size), srgb.resize(size)) > 2.0


def test_animated_gif_gives_a_still_of_its_first_frame(rendered):
    name = "misc/pigs_in_a_polka.gif"
    out = rendered(name)
    with Image.open(CORPUS / name) as source:  # its frames are mostly transparent
        first, white = source.convert("RGBA"), Image.new("RGBA", source.size, "white")
        first = Image.alpha_composite(white, first).convert("RGB")
        source.seek(15)
        later = Image.alpha_composite(white, source.convert("RGBA")).convert("RGB")
    with Image.open(out["thumb_256.jpg"].path) as thumb:
        assert getattr(thumb, "n_frames", 1) == 1
        assert thumb.size == thumbnails.fit(first.size, 256) == (256, 223)
        grey = thumb.convert("L")
    with Image.open(out["thumb_256.webp"].path) as webp:
        assert not getattr(webp, "is_animated", False)

    assert difference(grey, first.convert("L").resize(grey.size)) < 6
    assert difference(first.convert("L"), later.convert("L")) > 6  # frames do differ


def test_animated_webp_is_an_option(tmp_path):
    name = "misc/pigs_in_a_polka.gif"
    options = thumbnails.Options(boxes=(256,), formats=("webp",), animated=True)

    out = {r.name: r for r in thumbnails.render(CORPUS / name, tmp_path, options=options)}

    assert sorted(out) == ["anim_256.webp", "thumb_256.webp"]
    with Image.open(out["anim_256.webp"].path) as anim, Image.open(CORPUS / name) as source:
        assert anim.is_animated and anim.n_frames == source.n_frames
        assert anim.size == thumbnails.fit(source.size, 256)
        anim.load()
        assert anim.info["duration"] == source.info["duration"]
        assert len(anim.getexif()) == 0
    (tmp_path / "default").mkdir()
    still = thumbnails.render(CORPUS / name, tmp_path / "default",
                              options=thumbnails.Options(boxes=(256,)))
    assert [r.name for r in still] == ["thumb_256.webp", "thumb_256.jpg"]  # off by default


@pytest.mark.parametrize("name", ["pillow/mode_16bit.png", "pillow/tiff_16bit_RGBa.tiff"])
def test_sixteen_bit_sources_keep_their_tones(rendered, name):
    with Image.open(CORPUS / name) as source:
        expected = source.convert("RGBA")
    with Image.open(rendered(name)["thumb_256.webp"].path) as thumb:
        assert thumb.size == source.size
        got = thumb.convert("RGBA")

    # not black, white or banded: close to Pillow's own 16 -> 8 bit reduction
    assert difference(got.convert("L"), expected.convert("L")) < 6


def test_palette_gif_with_transparency_keeps_alpha(rendered):
    out = rendered("pillow/dispose_bgnd_rgba.gif")
    with Image.open(out["thumb_256.webp"].path) as webp:
        assert webp.mode == "RGBA" and webp.getchannel("A").getextrema()[0] == 0
    with Image.open(out["thumb_256.jpg"].path) as jpeg:
        assert jpeg.mode == "RGB"


def test_greyscale_with_alpha_keeps_alpha_and_stays_grey(tmp_path):
    source = tmp_path / "la.png"
    grey = Image.linear_gradient("L").resize((400, 300))
    alpha = Image.new("L", (400, 300), 255)
    alpha.paste(0, (0, 0, 200, 300))
    Image.merge("LA", (grey, alpha)).save(source)

    out = {r.name: r for r in thumbnails.render(source, tmp_path)}

    with Image.open(out["thumb_256.webp"].path) as webp:
        assert webp.mode == "RGBA"
        assert webp.getchannel("A").getpixel((10, 10)) == 0
        assert webp.getchannel("A").getpixel((250, 10)) == 255
        r, g, b, _ = webp.split()
        assert difference(r, b) < 2
    with Image.open(out["thumb_256.jpg"].path) as jpeg:
        assert jpeg.getpixel((10, 10)) == (255, 255, 255)  # transparent half flattened white


def test_transparent_pixels_do_not_bleed_into_edges(tmp_path):
    """Resampling weights colour by alpha: invisible green must not tint a red edge."""
    source = tmp_path / "edge.png"
    image = Image.new("RGBA", (1000, 1000), (0, 255, 0, 0))  # fully transparent green
    image.paste((255, 0, 0, 255), (0, 0, 500, 1000))
    image.save(source)

    out = {r.name: r for r in thumbnails.render(source, tmp_path)}

    with Image.open(out["thumb_256.webp"].path) as webp:
        edge = [webp.getpixel((x, 128)) for x in range(124, 132)]
    visible = [px for px in edge if px[3] > 16]
    assert visible and all(g < 40 for _, g, _, _ in visible), edge


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "PNG"])
def test_other_input_formats(tmp_path, fmt):
    source = tmp_path / f"photo.{fmt.lower()}"
    with Image.open(CORPUS / "orientation/Landscape_6.jpg") as photo:
        ImageOps.exif_transpose(photo).save(source, fmt)
    (tmp_path / "ref").mkdir()
    made = thumbnails.render(CORPUS / "orientation/Landscape_6.jpg", tmp_path / "ref")
    reference = pixels({r.name: r for r in made}["thumb_256.jpg"].path)

    out = {r.name: r for r in thumbnails.render(source, tmp_path)}

    assert (out["thumb_256.jpg"].width, out["thumb_256.jpg"].height) == (256, 171)
    assert difference(pixels(out["thumb_256.jpg"].path), reference) < 8


# --- options ----------------------------------------------------------------------------


def test_boxes_formats_and_quality_are_configurable(tmp_path):
    source = CORPUS / "misc/vacation_2017.jpg"
    low = thumbnails.Options(boxes=(512, 128), formats=("jpeg",), jpeg_quality=40)
    high = thumbnails.Options(boxes=(512, 128), formats=("jpeg",), jpeg_quality=95)
    (tmp_path / "low").mkdir()
    (tmp_path / "high").mkdir()

    made = thumbnails.render(source, tmp_path / "low", options=low)
    again = thumbnails.render(source, tmp_path / "high", options=high)

    assert [(r.name, r.width, r.height) for r in made] == [("thumb_512.jpg", 512, 288),
                                                          ("thumb_128.jpg", 128, 72)]
    assert made[0].path.stat().st_size * 1.5 < again[0].path.stat().st_size


def test_avif_is_an_option(tmp_path):
    options = thumbnails.Options(boxes=(256,), formats=("avif", "jpeg"))

    out = {r.name: r for r in thumbnails.render(CORPUS / "camera/DSCN0010.jpg", tmp_path,
                                                options=options)}

    assert sorted(out) == ["thumb_256.avif", "thumb_256.jpg"]
    assert out["thumb_256.avif"].content_type == "image/avif"
    with Image.open(out["thumb_256.avif"].path) as avif:
        assert avif.format == "AVIF" and avif.size == (256, 192)
        assert len(avif.getexif()) == 0 and "sRGB" in ImageCms.getProfileDescription(
            ImageCms.ImageCmsProfile(io.BytesIO(avif.info["icc_profile"])))
        assert difference(avif.convert("L"), pixels(out["thumb_256.jpg"].path)) < 8


def test_settings_parse_thumbnail_options():
    from config.settings import ConfigError, Settings

    settings = Settings.from_env({"MEDIAMILL_THUMBNAIL_BOXES": "256, 1024",
                                  "MEDIAMILL_THUMBNAIL_FORMATS": "WebP,avif",
                                  "MEDIAMILL_THUMBNAIL_QUALITY": "jpeg=90",
                                  "MEDIAMILL_THUMBNAIL_ANIMATED": "1"})
    assert settings.thumbnail_boxes == (1024, 256)
    assert settings.thumbnail_formats == ("webp", "avif")
    assert dict(settings.thumbnail_quality) == {"webp": 80, "jpeg": 90, "avif": 60}
    assert settings.thumbnail_animated is True

    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"MEDIAMILL_THUMBNAIL_BOXES": "0", "MEDIAMILL_THUMBNAIL_FORMATS": "gif",
                           "MEDIAMILL_THUMBNAIL_QUALITY": "webp=101"})
    for name in ("MEDIAMILL_THUMBNAIL_BOXES", "MEDIAMILL_THUMBNAIL_FORMATS",
                 "MEDIAMILL_THUMBNAIL_QUALITY"):
        assert name in str(caught.value)


def test_webp_with_exif_orientation_is_turned_upright(rendered):
    name = "pillow/hopper_orientation_6.webp"
    with Image.open(CORPUS / name) as source:
        upright = ImageOps.exif_transpose(source).convert("L")
        stored = source.convert("L")

    thumb = pixels(rendered(name)["thumb_256.webp"].path)

    assert difference(thumb, upright) < 8
    assert difference(thumb, stored) > 25


@pytest.mark.parametrize("path", sorted((CORPUS / "broken").iterdir()), ids=lambda p: p.name)
def test_files_with_broken_exif_still_render(tmp_path, path):
    """These crashed EXIF readers; their pixels are fine, so they get thumbnails."""
    out = thumbnails.render(path, tmp_path, options=thumbnails.Options(boxes=(256,)))

    assert [r.name for r in out] == ["thumb_256.webp", "thumb_256.jpg"]
    with Image.open(out[1].path) as image:
        assert max(image.size) == 256 and image.getextrema() != ((0, 0), (0, 0), (0, 0))


# --- big PNGs, decoded a strip at a time ------------------------------------------------


def _big_png(tmp_path: Path, kind: str) -> Path:
    with Image.open(CORPUS / "orientation/Landscape_1.jpg") as photo:
        photo = photo.convert("RGB")  # 1800x1200
    alpha = Image.linear_gradient("L").resize(photo.size)
    images = {"RGB": photo, "L": photo.convert("L"),
              "RGBA": Image.merge("RGBA", (*photo.split(), alpha)),
              "LA": Image.merge("LA", (photo.convert("L"), alpha)),
              "P": photo.convert("P", palette=Image.Palette.ADAPTIVE)}
    path = tmp_path / f"big_{kind}.png"
    images[kind].save(path, **({"transparency": 0} if kind == "P" else {}))
    return path


@pytest.mark.parametrize("kind", ["RGB", "L", "RGBA", "LA", "P"])
def test_big_png_streamed_in_strips_matches_a_whole_decode(tmp_path, kind):
    path = _big_png(tmp_path, kind)
    with thumbnails.open_image(path) as image:
        with thumbnails._PngStrips.open(image, (1024, 683)) as strips:  # it does stream
            assert strips is not None
        streamed = thumbnails.decode(image, 1024)
    with thumbnails.open_image(path) as image:
        whole = thumbnails._shrink_whole(image, 1024, None)

    assert streamed.size == whole.size == (1024, 683) and streamed.mode == whole.mode
    # the same resampling from another origin: at most rounding apart where it is opaque
    for a, b in zip(streamed.split(), whole.split(), strict=True):
        assert ImageStat.Stat(ImageChops.difference(a, b)).mean[0] < 0.1


@pytest.mark.parametrize("inflater", ["isal", "zlib"])
@pytest.mark.parametrize("kind", ["RGB", "L", "gradient"])
def test_png_strips_hold_exactly_the_rows_pillow_decodes(tmp_path, monkeypatch, kind,
                                                        inflater):
    """Bit for bit, with either inflater: ISA-L's, which may hold output back when it stops
    at the length asked for with all its input taken (a smooth gradient's last rows), or
    zlib's (where ISA-L has no wheel)."""
    monkeypatch.setattr(thumbnails, "_inflating",
                        pytest.importorskip("isal.isal_zlib") if inflater == "isal" else zlib)
    if kind == "gradient":
        path = tmp_path / "gradient.png"
        Image.linear_gradient("L").resize((300, 200)).save(path)
    else:
        path = _big_png(tmp_path, kind)
    with Image.open(path) as image:
        whole = image.convert("RGB")
    width, height = whole.size
    step = height // 8
    seen = 0
    with (thumbnails.open_image(path) as image,
          thumbnails._PngStrips.open(image, (width // 2, height // 2)) as strips):
        for lo in range(0, height, step):  # overlapping, as bands with margins are asked
            strip, origin = strips.rows(lo, min(height, lo + step + 10))
            assert origin == max(0, lo - 1)
            expected = whole.crop((0, origin, width, origin + strip.height))
            assert strip.convert("RGB").tobytes() == expected.tobytes()
            seen = origin + strip.height
    assert seen == height


@pytest.mark.parametrize("simd", [True, False], ids=["simd", "pillow"])
@pytest.mark.parametrize("kind", ["RGB", "L", "RGBA", "LA"])
def test_banded_resize_matches_one_resize_of_the_whole_image(tmp_path, monkeypatch, kind,
                                                             simd):
    """The resampler, band by band (the filter reading across each band's edges), gives
    what one resize of the whole image gives, which is Pillow's own Lanczos within rounding
    and clipping: no seams every 128 rows, channels in their places, colour weighted by
    alpha. With SIMD, LA takes Pillow's path and the others the SIMD one; without (a
    machine with no wheel for it), all take Pillow's."""
    if not simd:
        monkeypatch.setattr(thumbnails, "_SIMD_MODES", frozenset())
    elif not thumbnails._SIMD_MODES:
        pytest.skip("cykooz-resizer (SIMD resampling) has no wheel for this machine")
    path = _big_png(tmp_path, kind)
    with Image.open(path) as image:
        image = image.convert(kind)
    with thumbnails.open_image(path) as opened:
        banded = thumbnails._shrink_whole(opened, 1024, None)  # L and LA come out as RGB(A)
    whole = thumbnails._resize(image, banded.size).convert(banded.mode)
    pillow = image.resize(banded.size, Image.Resampling.LANCZOS).convert(banded.mode)

    # a faint pixel's colour is a rounding of a rounding (stored times alpha): skip those
    opaque = pillow.getchannel("A").point(lambda a: 255 if a > 64 else 0) \
        if "A" in kind else None
    for got, one, ref in zip(banded.split(), whole.split(), pillow.split(), strict=True):
        seams = ImageChops.difference(got, one)
        # Pillow rounds a band's weights its own way: 1 level times alpha, undone at alpha
        # 64, is 4
        pillows = kind == "LA" or not simd
        assert ImageStat.Stat(seams, opaque).extrema[0][1] <= (4 if pillows else 1)
        # Pillow clips between its two passes, so it differs a little on hard edges
        assert ImageStat.Stat(ImageChops.difference(got, ref), opaque).mean[0] < 0.5


def test_png_that_cannot_be_streamed_is_decoded_whole(tmp_path):
    source = tmp_path / "bilevel.png"  # 1 bit a pixel: not one of the streamed layouts
    with Image.open(_big_png(tmp_path, "L")) as image:
        image.convert("1").save(source)
    for path, size in ((source, (256, 171)), (CORPUS / "pillow/mode_16bit.png", (8, 8))):
        with thumbnails.open_image(path) as image:
            assert thumbnails._PngStrips.open(image, size) is None

    out = {r.name: r for r in thumbnails.render(source, tmp_path)}
    assert (out["thumb_256.jpg"].width, out["thumb_256.jpg"].height) == (256, 171)


@pytest.mark.parametrize("inflater", ["isal", "zlib"])
def test_big_png_whose_pixels_end_early_fails_cleanly(tmp_path, monkeypatch, inflater):
    """The zlib stream ends at 60 % of the rows, and 1 MiB of zeros follow it in the IDAT:
    zlib then handed back the same leftover bytes for ever (a hang, memory growing)."""
    monkeypatch.setattr(thumbnails, "_inflating",
                        pytest.importorskip("isal.isal_zlib") if inflater == "isal" else zlib)
    rows = [b"\0" + bytes([y % 256]) * 1800 for y in range(720)]
    source = _png(tmp_path / "short.png", 1800, rows, colour=0, height=1200,
                  after=bytes(2**20))
    (tmp_path / "out").mkdir()

    with pytest.raises(MediaError) as caught:
        thumbnails.render(source, tmp_path / "out")

    assert "truncated or corrupt" in str(caught.value)


def test_truncated_big_png_fails_cleanly(tmp_path):
    data = _big_png(tmp_path, "RGB").read_bytes()
    source = tmp_path / "cut.png"
    source.write_bytes(data[: len(data) // 2])
    (tmp_path / "out").mkdir()

    with pytest.raises(MediaError) as caught:
        thumbnails.render(source, tmp_path / "out")

    assert "truncated or corrupt" in str(caught.value)
    assert not EXCEPTION_NAME.search(str(caught.value))
    assert list((tmp_path / "out").iterdir()) == []


def _png(path: Path, width: int, rows: list[bytes], colour: int = 2, height: int = 0,
         after: bytes = b"", stream: bytes | None = None, split: tuple[int, ...] = ()) -> Path:
    """A PNG written by hand: 8-bit `colour` type, `rows` already filtered, `height` rows
    high (as many as `rows` by default), `after` in its IDAT after the zlib stream.
    `stream`: the IDAT data instead (a zlib stream of `rows`); `split`: the lengths of
    IDAT chunks to cut from its start, the rest in one more."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))

    header = (width.to_bytes(4, "big") + (height or len(rows)).to_bytes(4, "big")
              + bytes([8, colour, 0, 0, 0]))
    data = (zlib.compress(b"".join(rows)) if stream is None else stream) + after
    idats = []
    for length in split:
        idats.append(chunk(b"IDAT", data[:length]))
        data = data[length:]
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + b"".join(idats)
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def _gradient_rows(width: int, height: int) -> list[bytes]:
    """Rows of an 8-bit RGB PNG, each with filter type 0, shaded by its number."""
    return [b"\0" + bytes([y % 256, (3 * y) % 256, 255 - y % 256]) * width
            for y in range(height)]


@pytest.mark.parametrize("inflater", ["isal", "zlib"])
def test_big_png_whose_zlib_header_spans_idat_chunks_is_streamed(tmp_path, monkeypatch,
                                                                inflater):
    """The pixels are inflated as raw deflate after the strips check the zlib header
    themselves, which may come a byte at a time: chunks of 1, 0 and 1 bytes here."""
    monkeypatch.setattr(thumbnails, "_inflating",
                        pytest.importorskip("isal.isal_zlib") if inflater == "isal" else zlib)
    source = _png(tmp_path / "split.png", 1200, _gradient_rows(1200, 900), split=(1, 0, 1, 7))
    with Image.open(source) as image:
        whole = image.convert("RGB")

    with (thumbnails.open_image(source) as image,
          thumbnails._PngStrips.open(image, (600, 450)) as strips):
        strip, origin = strips.rows(0, 900)

    assert origin == 0 and strip.convert("RGB").tobytes() == whole.tobytes()


@pytest.mark.parametrize("inflater", ["isal", "zlib"])
@pytest.mark.parametrize("damage", ["pixel", "checksum"])
def test_big_png_whose_pixels_fail_their_checksum_fails_cleanly(tmp_path, monkeypatch,
                                                               inflater, damage):
    """A bit flipped in a stored (level 0) stream's pixels, whose only check is the stream's
    Adler-32 (the chunk's CRC redone, as a careless tool would), or a deflated stream's
    Adler-32 wrong: refused with either inflater, as Pillow's whole decode refuses them."""
    monkeypatch.setattr(thumbnails, "_inflating",
                        pytest.importorskip("isal.isal_zlib") if inflater == "isal" else zlib)
    rows = _gradient_rows(1200, 900)
    stream = bytearray(zlib.compress(b"".join(rows), 0 if damage == "pixel" else 6))
    stream[1000 if damage == "pixel" else -1] ^= 0x01  # 1000: in the first stored block
    source = _png(tmp_path / "flipped.png", 1200, rows, stream=bytes(stream))
    with Image.open(source) as image, pytest.raises(OSError):
        image.load()  # Pillow's own decoder refuses it
    (tmp_path / "out").mkdir()

    with pytest.raises(MediaError) as caught:
        thumbnails.render(source, tmp_path / "out")

    assert "truncated or corrupt" in str(caught.value)


@pytest.mark.parametrize("inflater", ["isal", "zlib"])
@pytest.mark.parametrize("header", [
    bytes([0x88, 0x1C]),  # a 64 KiB window, which zlib refuses (ISA-L would inflate it)
    bytes([0x78, 0xBB]),  # a preset dictionary, which a PNG never has
    bytes([0x77, 0x85]),  # compression method 7, not deflate
    bytes([0x78, 0x9D]),  # the check bits wrong
], ids=["window", "dictionary", "method", "check"])
def test_big_png_with_a_bad_zlib_header_fails_cleanly(tmp_path, monkeypatch, inflater,
                                                     header):
    """Refused as zlib refuses it, with either inflater, as Pillow's whole decode does."""
    monkeypatch.setattr(thumbnails, "_inflating",
                        pytest.importorskip("isal.isal_zlib") if inflater == "isal" else zlib)
    rows = _gradient_rows(1200, 900)
    stream = header + zlib.compress(b"".join(rows))[2:]
    source = _png(tmp_path / "header.png", 1200, rows, stream=stream)
    with Image.open(source) as image, pytest.raises((OSError, SyntaxError)):
        image.load()  # Pillow's own decoder refuses it too
    (tmp_path / "out").mkdir()

    with pytest.raises(MediaError) as caught:
        thumbnails.render(source, tmp_path / "out")

    assert "truncated or corrupt" in str(caught.value)


def test_big_png_with_a_filter_that_does_not_exist_fails_cleanly(tmp_path):
    width = 3000
    good, bad = b"\x00" + bytes(3 * width), b"\x07" + bytes(3 * width)  # types are 0-4
    source = _png(tmp_path / "bad_filter.png", width, [good] * 1500 + [bad] + [good] * 499)
    (tmp_path / "out").mkdir()
    with thumbnails.open_image(source) as image:
        assert thumbnails._PngStrips.open(image, (2048, 1365)) is not None

    with pytest.raises(MediaError) as caught:
        thumbnails.render(source, tmp_path / "out")

    assert "truncated or corrupt" in str(caught.value)
    assert not EXCEPTION_NAME.search(str(caught.value))


@pytest.mark.parametrize("colour", ["L", "RGB"])
@pytest.mark.parametrize("width", [3000, 600], ids=["streamed", "whole"])
def test_png_colour_key_becomes_transparency(tmp_path, colour, width):
    """A PNG without alpha may still name one colour as transparent (tRNS): old logos do.
    That colour is transparent in the WebP and white in the JPEG, streamed or not."""
    key = (255, 0, 255)  # magenta background, a blue square in the middle
    image = Image.new("RGB", (width, width * 2 // 3), key)
    image.paste((0, 0, 200), (width // 3, width // 6, width * 2 // 3, width // 2))
    source = tmp_path / f"key_{colour}.png"
    if colour == "L":
        image.convert("L").save(source, transparency=image.convert("L").getpixel((0, 0)))
    else:
        image.save(source, transparency=key)
    with thumbnails.open_image(source) as opened:
        streamed = thumbnails._PngStrips.open(opened, thumbnails.fit(opened.size, 1024))
        assert (streamed is not None) == (width > 1024)
        if streamed:
            streamed.__exit__()

    out = {r.name: r for r in thumbnails.render(source, tmp_path)}
    with Image.open(out["thumb_256.webp"].path) as webp:
        assert webp.mode == "RGBA"
        assert webp.getpixel((2, 2))[3] == 0  # the background
        assert webp.getpixel((128, 85))[3] == 255  # the square
    with Image.open(out["thumb_256.jpg"].path) as jpeg:
        assert min(jpeg.convert("RGB").getpixel((2, 2))) > 245  # flattened on white


@pytest.mark.parametrize("after_pixels", [False, True])
def test_png_exif_orientation_is_applied_wherever_the_chunk_is(tmp_path, after_pixels):
    with Image.open(CORPUS / "orientation/Landscape_6.jpg") as photo:
        exif = photo.getexif()
        photo.save(tmp_path / "six.png", exif=exif)  # stored sideways, orientation 6
    data = (tmp_path / "six.png").read_bytes()
    if after_pixels:  # PNG allows eXIf after IDAT; move it just before IEND
        start = data.index(b"eXIf") - 4
        length = int.from_bytes(data[start:start + 4], "big")
        chunk, data = data[start:start + 12 + length], data[:start] + data[start + 12 + length:]
        data = data[:-12] + chunk + data[-12:]
    (tmp_path / "six.png").write_bytes(data)
    (tmp_path / "out").mkdir()

    out = {r.name: r for r in thumbnails.render(tmp_path / "six.png", tmp_path / "out")}

    reference = pixels(thumbnails.render(CORPUS / "orientation/Landscape_6.jpg",
                                         tmp_path)[-1].path)  # thumb_256.jpg, upright
    assert (out["thumb_256.jpg"].width, out["thumb_256.jpg"].height) == (256, 171)
    assert difference(pixels(out["thumb_256.jpg"].path), reference) < 8


def test_multi_picture_jpeg_is_decoded_at_a_reduced_dct_scale(tmp_path):
    """iPhones write MPO (a JPEG with a second picture): it gets JPEG's DCT scaling too."""
    source = tmp_path / "phone.mpo"
    with Image.open(CORPUS / "misc/vacation_2017.jpg") as photo:  # 2560x1440
        photo.save(source, "MPO", save_all=True, append_images=[photo.resize((640, 360))])

    with thumbnails.open_image(source) as image:
        assert image.format == "MPO"
        small = thumbnails._shrink_whole(image, 256, None)
        assert image.size == (320, 180)  # decoded at 1/8 scale, not 2560x1440
    assert small.size == (256, 144)


@pytest.mark.parametrize(("size", "box"), [((2049, 1025), 256), ((6145, 1537), 2048)],
                         ids=["decoded-whole", "decoded-in-rows"])
def test_a_dct_scaled_jpeg_is_not_stretched_by_its_part_pixel(tmp_path, size, box):
    """2049 px decode at 1/8 to 257, of which the picture spans 256.125: resized as 257 wide,
    things near the right edge moved left by almost a pixel. A dark line near the right
    and bottom edges lands where a full decode puts it."""
    source = tmp_path / "edge.jpg"
    picture = Image.new("RGB", size, (255, 255, 255))
    width, height = size
    picture.paste((0, 0, 0), (width - 80, 0, width - 72, height))  # a column
    picture.paste((0, 0, 0), (0, height - 80, width, height - 72))  # a row
    picture.save(source, "JPEG", quality=100, subsampling=0)
    expected = thumbnails.fit(size, box)
    reference = picture.resize(expected, Image.Resampling.LANCZOS)

    with thumbnails.open_image(source) as image:
        small = thumbnails._shrink_whole(image, box, None)
        assert image.size != size  # DCT-scaled

    def centres(image: Image.Image) -> tuple[float, float]:
        dark = ImageOps.invert(image.convert("L"))
        columns = [ImageStat.Stat(dark.crop((x, 0, x + 1, dark.height // 2))).sum[0]
                   for x in range(dark.width)]
        rows = [ImageStat.Stat(dark.crop((0, y, dark.width // 2, y + 1))).sum[0]
                for y in range(dark.height)]
        return (sum(x * v for x, v in enumerate(columns)) / sum(columns),
                sum(y * v for y, v in enumerate(rows)) / sum(rows))

    assert small.size == expected
    ours, theirs = centres(small), centres(reference)
    assert abs(ours[0] - theirs[0]) < 0.1 and abs(ours[1] - theirs[1]) < 0.1, (ours, theirs)


def test_a_wide_short_png_is_decoded_whole_not_in_giant_strips(tmp_path):
    """Strips of a panorama would each hold most of it several times over."""
    path = tmp_path / "wide.png"
    Image.new("RGB", (24000, 400), (10, 120, 200)).save(path, compress_level=1)
    with Image.open(path) as image:
        assert thumbnails._PngStrips.open(image, (2048, 34)) is None
    photo = tmp_path / "photo.png"
    Image.new("RGB", (4000, 3000), (10, 120, 200)).save(photo, compress_level=1)
    with Image.open(photo) as image, thumbnails._PngStrips.open(image, (2048, 1536)) as strips:
        assert strips is not None


def test_a_png_chunk_longer_than_the_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "lying.png"
    Image.new("RGB", (3000, 2000), (1, 2, 3)).save(path, compress_level=1)
    data = bytearray(path.read_bytes())
    idat = data.index(b"IDAT")
    data[idat - 4:idat] = (2**31 - 1).to_bytes(4, "big")  # claims 2 GiB of pixels
    path.write_bytes(bytes(data))
    with open(path, "rb") as fh:
        fh.seek(8)
        with pytest.raises(MediaError, match="truncated or corrupt"):
            list(thumbnails._png_chunks(fh))


def test_an_image_with_a_metadata_bomb_is_refused_with_that_reason(tmp_path):
    """200 MB of zeros in a zTXt chunk of a 64x64 PNG: refused, and said why."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))

    small = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(small, "PNG")
    png = small.getvalue()
    bomb = chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"\x00" * 200_000_000, 9))
    path = tmp_path / "bomb.png"
    path.write_bytes(png[:33] + bomb + png[33:])  # after IHDR

    with pytest.raises(MediaError, match="oversized metadata chunk"):
        thumbnails.render(path, tmp_path)


@pytest.mark.parametrize("width", [600, 3000], ids=["whole", "streamed"])
@pytest.mark.parametrize("plte, trns", [(bytes(801), None), (bytes(768), bytes(300))],
                         ids=["palette-not-rgb-triples", "more-alphas-than-colours"])
def test_a_png_with_a_malformed_palette_fails_cleanly(tmp_path, width, plte, trns):
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))

    height = width * 2 // 3
    rows = b"".join(b"\0" + bytes(i % 200 for i in range(width)) for _ in range(height))
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 3, 0, 0, 0])
    source = tmp_path / "palette.png"
    source.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"PLTE", plte)
                       + (chunk(b"tRNS", trns) if trns else b"")
                       + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    (tmp_path / "out").mkdir()

    with pytest.raises(MediaError) as caught:
        thumbnails.render(source, tmp_path / "out")

    assert "corrupt" in str(caught.value) and not EXCEPTION_NAME.search(str(caught.value))


# --- RGB JPEGs, resized as the decoder makes their rows ---------------------------------


def _jpeg_rows_opened(monkeypatch) -> list:
    """The _JpegRows used from now on, as they are entered."""
    opened: list = []
    monkeypatch.setattr(thumbnails._JpegRows, "__enter__",
                        lambda self: opened.append(self) or self)
    return opened


# How far past the rows asked for the decoder may have gone: a 64 KB block of a photo is
# about 200 rows of 3264 px (under 3 MB)
_RUN_AHEAD = 600


def _jpeg(tmp_path: Path, kind: str) -> Path:
    """A camera JPEG (3264x2448) as it is or as another kind of JPEG people upload."""
    source = CORPUS / "camera/jolla.jpg"
    if kind == "camera":
        return source
    path = tmp_path / f"{kind}.jpg"
    with Image.open(source) as photo:
        photo.load()
    if kind == "progressive":
        photo.save(path, "JPEG", quality=90, progressive=True)
    elif kind == "dct-scaled":  # big enough that a 1/2 DCT scale still fills 2048 px
        photo.resize((4900, 3675)).save(path, "JPEG", quality=90)
    elif kind == "mpo":
        photo.save(path, "MPO", save_all=True, append_images=[photo.resize((640, 480))])
    elif kind == "restart-markers-4:4:4":
        photo.save(path, "JPEG", quality=95, subsampling=0, restart_marker_rows=1)
    elif kind == "damaged-middle":  # libjpeg warns and fills in: both paths alike
        data = bytearray(source.read_bytes())
        data[len(data) // 2:len(data) // 2 + 2000] = bytes(range(200)) * 10
        path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("simd", [True, False], ids=["simd", "pillow"])
@pytest.mark.parametrize("kind", ["camera", "dct-scaled", "mpo", "restart-markers-4:4:4",
                                  "damaged-middle"])
def test_jpeg_resized_as_its_rows_are_decoded_matches_a_whole_decode(tmp_path, monkeypatch,
                                                                    kind, simd):
    """Bit for bit what decoding the whole image first gives; the decoder runs only a little
    ahead of the band being made, and the rows above it are handed back to the system as it
    goes (they read as zeros again)."""
    if not simd:
        monkeypatch.setattr(thumbnails, "_SIMD_MODES", frozenset())
    elif not thumbnails._SIMD_MODES:
        pytest.skip("cykooz-resizer (SIMD resampling) has no wheel for this machine")
    path = _jpeg(tmp_path, kind)
    handed_back = []
    rows = thumbnails._JpegRows.rows

    def spy(self, lo, hi):
        got = rows(self, lo, hi)
        first = self._memory[self._start:self._start + self._stride]  # decoded long ago
        # pixels start on a huge page's boundary: handed back in whole huge pages
        assert (thumbnails._address(self._memory) + self._start) % thumbnails._HUGE_PAGE == 0
        # handed back in steps of 2 MiB (whole huge pages), once the rows above fill one
        handed_back.append((lo * self._stride >= thumbnails._HUGE_PAGE,
                            first == bytes(self._stride)))
        if hi + _RUN_AHEAD < self._target.height:  # not decoded yet: still zeros
            assert self._memory[self._start + (hi + _RUN_AHEAD) * self._stride + 3] == 0
        return got

    monkeypatch.setattr(thumbnails._JpegRows, "rows", spy)
    opened = _jpeg_rows_opened(monkeypatch)
    with thumbnails.open_image(path) as image:
        banded = thumbnails._shrink_whole(image, 2048, image.info.get("icc_profile"))
    assert [rows._memory.closed for rows in opened] == [True]  # unmapped, not left to GC
    monkeypatch.setattr(thumbnails, "_JPEG_ROWS", False)
    with thumbnails.open_image(path) as image:
        whole = thumbnails._shrink_whole(image, 2048, image.info.get("icc_profile"))

    assert banded.size == whole.size == (2048, 1536) and banded.mode == whole.mode == "RGB"
    assert banded.tobytes() == whole.tobytes()
    assert len(handed_back) >= 12  # 1536 rows in bands of 128
    assert handed_back[0] == (False, False)  # the first band: nothing handed back yet
    assert [gone for due, gone in handed_back] == [due for due, gone in handed_back]
    assert sum(due for due, gone in handed_back) >= len(handed_back) - 2


def test_jpeg_with_a_colour_profile_is_converted_band_by_band(tmp_path, monkeypatch):
    source = tmp_path / "p3.jpg"
    with Image.open(CORPUS / "camera/iphone_13_pro_max.HEIC") as phone:  # Display P3
        phone.save(source, "JPEG", quality=90, icc_profile=phone.info["icc_profile"])
    opened = _jpeg_rows_opened(monkeypatch)
    banded = thumbnails.render(source, tmp_path, options=thumbnails.Options(
        boxes=(1024,), formats=("png",)))
    monkeypatch.setattr(thumbnails, "_JPEG_ROWS", False)
    (tmp_path / "whole").mkdir()
    whole = thumbnails.render(source, tmp_path / "whole", options=thumbnails.Options(
        boxes=(1024,), formats=("png",)))

    assert len(opened) == 1
    with Image.open(banded[0].path) as a, Image.open(whole[0].path) as b:
        assert a.size == b.size == (768, 1024) and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("cut", [0.3, 0.999])
def test_truncated_big_jpeg_fails_cleanly(tmp_path, monkeypatch, cut):
    data = (CORPUS / "camera/jolla.jpg").read_bytes()
    source = tmp_path / "cut.jpg"
    source.write_bytes(data[:int(len(data) * cut)])
    (tmp_path / "out").mkdir()
    opened = _jpeg_rows_opened(monkeypatch)

    with pytest.raises(MediaError) as caught:
        thumbnails.render(source, tmp_path / "out")

    assert len(opened) == 1  # it was decoded as it came
    assert "truncated or corrupt" in str(caught.value)
    assert not EXCEPTION_NAME.search(str(caught.value))
    assert list((tmp_path / "out").iterdir()) == []


def test_jpeg_damaged_into_megabytes_of_ff_fails_without_reading_them_all(tmp_path):
    """libjpeg rereads a run of 0xFF from its start each time more data comes: fed 64 KB
    at a time, 64 MB of it took 55 s; it is refused once 1 MB is left unread."""
    data = (CORPUS / "camera/jolla.jpg").read_bytes()
    source = tmp_path / "ff.jpg"
    source.write_bytes(data[:len(data) // 10] + b"\xff" * (16 * 2**20))

    with thumbnails.open_image(source) as image:
        with pytest.raises(MediaError, match="truncated or corrupt"):
            thumbnails._shrink_whole(image, 2048, None)
        assert image.fp.tell() < len(data) // 10 + 2 * 2**20


def test_progressive_jpeg_is_decoded_whole(tmp_path):
    """libjpeg reads all of a progressive JPEG before its first row: nothing to save."""
    path = _jpeg(tmp_path, "progressive")
    with thumbnails.open_image(path) as image:
        assert image.info.get("progressive")
        image.draft("RGB", (2048, 2048))
        assert thumbnails._JpegRows.open(image) is None
        assert thumbnails._shrink_whole(image, 2048, None).size == (2048, 1536)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_height_whose_scale_rounds_up_still_resizes(tmp_path, fmt):
    """1537 * (1876 / 1537) is 1876.0000000000002: the last band's crop box ended past the
    image, and the resampler refused it (a RuntimeError for about 6 % of sizes)."""
    source = tmp_path / f"odd.{fmt.lower()}"
    Image.linear_gradient("L").resize((2500, 1876)).convert("RGB").save(source, fmt)

    out = thumbnails.render(source, tmp_path, options=thumbnails.Options(boxes=(2048,)))

    assert (out[0].width, out[0].height) == (2048, 1537)


def test_greyscale_and_cmyk_jpegs_are_decoded_whole(tmp_path):
    with Image.open(CORPUS / "camera/jolla.jpg") as photo:
        photo.convert("L").save(tmp_path / "grey.jpg")
        photo.convert("CMYK").save(tmp_path / "cmyk.jpg")
    for name in ("grey.jpg", "cmyk.jpg"):
        with thumbnails.open_image(tmp_path / name) as image:
            assert thumbnails._JpegRows.open(image) is None
            assert thumbnails._shrink_whole(image, 1024, None).size == (1024, 768)


@pytest.mark.parametrize("fmt, mode, size, boxes, orientation", [
    ("GIF", "P", (135, 1100), (1024, 256), 1),  # the cascade: 126x1024 -> 32x256, not 31
    ("JPEG", "RGB", (31, 2070), (1024,), 1),  # DCT scale 1/2 rounds 31 up to 16 columns
    ("JPEG", "L", (2394, 3239), (256,), 1),  # 1/8: 300x405, which fits to 190, not 189
    ("JPEG", "RGB", (3239, 2394), (256,), 6),  # the same, turned upright
    ("PNG", "RGB", (114, 1500), (1024, 256), 8),  # the cascade, turned upright
], ids=["cascade", "dct-scale-tiny-side", "dct-scale", "dct-scale-turned", "cascade-turned"])
def test_every_box_is_fitted_from_the_original_size(tmp_path, fmt, mode, size, boxes,
                                                    orientation):
    """A thumbnail's size is fit(displayed size, box), whatever came before it: not
    rounded again from a DCT-scaled decode or from the previous box."""
    source = tmp_path / f"odd.{fmt.lower()}"
    gradient = Image.linear_gradient("L").resize(size)
    image = gradient.convert("RGB").convert(mode) if mode != "P" else \
        gradient.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(source, fmt, **({"exif": exif.tobytes()} if orientation != 1 else {}))
    (tmp_path / "out").mkdir()

    out = thumbnails.render(source, tmp_path / "out", options=thumbnails.Options(boxes=boxes))

    displayed = size[::-1] if orientation in (5, 6, 7, 8) else size
    assert {r.name: (r.width, r.height) for r in out} == {
        f"thumb_{box}.{ext}": thumbnails.fit(displayed, box)
        for box in boxes for ext in ("webp", "jpg")}
    for rendition in out:
        with Image.open(rendition.path) as thumb:
            assert thumb.size == (rendition.width, rendition.height)


def _half_white(size: tuple[int, int]) -> Image.Image:
    """As displayed: white on the left half, black on the right."""
    image = Image.new("RGB", size, "black")
    image.paste("white", (0, 0, size[0] // 2, size[1]))
    return image


def _left_is_white(path: Path) -> bool:
    with Image.open(path) as thumb:
        left = thumb.convert("L").crop((0, 0, thumb.width // 2, thumb.height))
        return ImageStat.Stat(left).mean[0] > 200


@pytest.mark.parametrize("orientation, turn", [(6, Image.Transpose.ROTATE_90),
                                               (3, Image.Transpose.ROTATE_180)])
def test_tiff_orientation_is_applied_once(tmp_path, orientation, turn):
    """Pillow 13 turns a TIFF upright itself while its tag still says 6 or 3: turned twice,
    it came out on its side or upside down."""
    from media import metadata

    source = tmp_path / "scan.tif"
    _half_white((300, 200)).transpose(turn).save(source, tiffinfo={274: orientation})
    (tmp_path / "out").mkdir()

    out = thumbnails.render(source, tmp_path / "out",
                            options=thumbnails.Options(boxes=(256,), formats=("png",)))

    assert (out[0].width, out[0].height) == (256, 171) and _left_is_white(out[0].path)
    meta = metadata.image_metadata(source)
    assert (meta["width"], meta["height"]) == (300, 200)


def test_animated_thumbnail_is_turned_upright_like_the_stills(tmp_path):
    stored = _half_white((300, 200)).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    source = tmp_path / "anim.webp"
    second = stored.copy()
    second.putpixel((0, 0), (9, 9, 9))
    stored.save(source, save_all=True, append_images=[second], duration=100,
                exif=exif.tobytes())
    (tmp_path / "out").mkdir()

    out = thumbnails.render(source, tmp_path / "out", options=thumbnails.Options(
        boxes=(64,), formats=("png",), animated=True))

    assert [(r.name, r.width, r.height) for r in out] == [
        ("anim_64.webp", 64, 43), ("thumb_64.png", 64, 43)]
    assert all(_left_is_white(r.path) for r in out)


def test_png_orientation_only_in_xmp_is_applied_streamed_or_not(tmp_path):
    """Pillow's getexif reads XMP's tiff:Orientation, so a PNG decoded whole was turned;
    the same PNG streamed in strips was not."""
    from PIL import PngImagePlugin

    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/'
           '02/22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
           'tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp)
    source = tmp_path / "xmp.png"
    _half_white((3000, 2000)).transpose(Image.Transpose.ROTATE_90).save(source, pnginfo=info)

    for box in (3000, 1024):  # its own size: decoded whole; smaller: streamed in strips
        (tmp_path / str(box)).mkdir()
        [thumb] = thumbnails.render(source, tmp_path / str(box),
                                    options=thumbnails.Options(boxes=(box,), formats=("png",)))
        assert (thumb.width, thumb.height) == thumbnails.fit((3000, 2000), box)
        assert _left_is_white(thumb.path)


def test_a_gif_frame_past_its_screen_neither_breaks_nor_grows_the_thumbnails(tmp_path):
    """Pillow grows a GIF's size when it decodes a frame reaching past the screen, and
    keeps it: the animation failed in the WebP encoder (frames of two sizes), and the
    stills were fitted from the grown size."""
    import struct

    def gif(image):
        data = io.BytesIO()
        image.save(data, "GIF", optimize=False)
        return data.getvalue()

    palette = [0, 0, 0, 255, 255, 255] + [0] * 762
    screen, beyond = Image.new("P", (100, 50), 1), Image.new("P", (30, 50), 0)
    screen.putpalette(palette)
    beyond.putpalette(palette)
    first, second = gif(screen), bytearray(gif(beyond))
    head = first[:13 + 3 * 256]  # header, the 100x50 screen, the global colour table
    body = second[13 + 3 * 256:-1]
    body[body.index(b",") + 1:body.index(b",") + 3] = struct.pack("<H", 90)  # x 90..120
    source = tmp_path / "grow.gif"
    source.write_bytes(head + b"!\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
                       + first[len(head):-1] + bytes(body) + b";")
    (tmp_path / "out").mkdir()

    out = thumbnails.render(source, tmp_path / "out", options=thumbnails.Options(
        boxes=(64,), formats=("png",), animated=True))

    assert [(r.name, r.width, r.height) for r in out] == [
        ("anim_64.webp", 64, 32), ("thumb_64.png", 64, 32)]


def test_only_animations_get_an_animated_thumbnail(tmp_path):
    """A TIFF's pages and an MPO's second picture are not frames of an animation (pages
    of other sizes made the WebP encoder fail)."""
    pages = tmp_path / "pages.tif"
    _half_white((300, 200)).save(pages, save_all=True,
                                 append_images=[_half_white((100, 300))])
    mpo = tmp_path / "phone.mpo"
    _half_white((300, 200)).save(mpo, "MPO", save_all=True,
                                 append_images=[_half_white((150, 100))])
    for source in (pages, mpo):
        out_dir = tmp_path / source.suffix[1:]
        out_dir.mkdir()
        out = thumbnails.render(source, out_dir, options=thumbnails.Options(
            boxes=(64,), formats=("png",), animated=True))
        assert [(r.name, r.width, r.height) for r in out] == [("thumb_64.png", 64, 43)]


@pytest.mark.parametrize("where, animation_frames, counted", [
    ("control-block", None, 1),  # Pillow cannot count past the cut: a still only
    ("image-data", 3, 4),  # counted, and the last frame is where the data ends
])
def test_a_truncated_animated_gif_still_gives_what_it_can(tmp_path, where, animation_frames,
                                                          counted):
    """Counting a truncated GIF's frames raised struct.error or IndexError out of Pillow,
    failing both the thumbnails and the metadata jobs; an animation with a truncated frame
    failed the job although its first frames, and the still, are fine."""
    from media import metadata

    frames = [Image.effect_noise((120, 80), 60 + 20 * n).convert("P") for n in range(4)]

    def gif(count: int) -> bytes:
        data = io.BytesIO()
        frames[0].save(data, "GIF", save_all=True, append_images=frames[1:count], duration=100)
        return data.getvalue()

    whole = gif(4)
    # The last frame's graphic control extension starts where 3 frames end (before their
    # trailer); searching for its bytes sometimes found them inside the noise's image data.
    last = len(gif(3)) - 1
    assert whole[:last] == gif(3)[:-1] and whole[last:last + 2] == b"\x21\xf9"
    source = tmp_path / "cut.gif"
    source.write_bytes(whole[:last + 3 if where == "control-block" else (last + len(whole)) // 2])
    (tmp_path / "out").mkdir()

    out = thumbnails.render(source, tmp_path / "out", options=thumbnails.Options(
        boxes=(64,), formats=("png",), animated=True))

    names = [r.name for r in out]
    assert names == (["anim_64.webp"] if animation_frames else []) + ["thumb_64.png"]
    if animation_frames:
        with Image.open(out[0].path) as animation:
            assert animation.n_frames == animation_frames
    assert metadata.image_metadata(source)["frames"] == counted
