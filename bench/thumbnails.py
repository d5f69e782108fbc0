"""Thumbnail throughput per core, peak RSS per job and output quality: mediamill vs naive
Pillow vs pyvips (libvips from the pyvips-binary wheel), side by side in one run.

Inputs are the 8-12 MP phone photos of the corpus (images/camera): the JPEGs as they are,
and each HEIC decoded once, here, to a JPEG (and the 12 MP one to a PNG) with its Display
P3 profile kept. Every contender makes the same files with the same encoder settings:
oriented, sRGB, tagged with an sRGB profile, no EXIF, WebP q80 method 4, JPEG q85 baseline
4:2:0. Contenders: naive Pillow as the issue defines it (full decode, `thumbnail()` per
size; `naive_pillow` says exactly what it does), pyvips `thumbnail` direct and cascading
(converting colour only when the file embeds a profile, as the Pillow contenders do), and
`media.thumbnails.render`.

Each measurement runs in a fresh child process (`--child`), one job at a time, so that its
peak RSS is its own: it imports its libraries, notes its RSS, resets the high-water mark,
runs one warm-up pass and the timed passes over the inputs. Throughput is images per
CPU-second of that process (user + system, all threads), so threads buy nothing and other
load on the machine moves it little.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CORPUS = Path(os.environ.get("MEDIAMILL_CORPUS", ROOT.parent / "shared" / "corpus"))
CAMERA = CORPUS / "images" / "camera"
MiB = 1024 * 1024
WEBP_Q, WEBP_METHOD, JPEG_Q = 80, 4, 85
JPEG_SUBSAMPLING = "4:2:0"  # what Pillow and libvips write by default; stated for all

# name -> (boxes, formats, input set)
SCENARIOS = {
    "3 boxes webp+jpeg": ((2048, 1024, 256), ("webp", "jpeg"), "jpeg"),
    "3 boxes jpeg": ((2048, 1024, 256), ("jpeg",), "jpeg"),
    "256 box webp+jpeg": ((256,), ("webp", "jpeg"), "jpeg"),
    "12 MP png, 3 boxes webp+jpeg": ((2048, 1024, 256), ("webp", "jpeg"), "png"),
}
CONTENDERS = ("naive pillow", "pyvips direct", "pyvips cascade", "mediamill")
# scenario -> (x naive Pillow, x the better pyvips) the issue asks for; None: no target
TARGETS = {
    "3 boxes webp+jpeg": (1.6, 1.0),
    "3 boxes jpeg": (2.5, None),
    "256 box webp+jpeg": (3.5, 1.3),
    "12 MP png, 3 boxes webp+jpeg": (2.0, None),
}
# The issue's own figures for these scenarios (images per core-second, its machine), in
# SCENARIOS' order: naive Pillow, pyvips cascading. Used only for the calibration lines.
ISSUE_REFERENCE = {
    "3 boxes webp+jpeg": (1.21, 2.02),
    "3 boxes jpeg": (1.97, 8.53),
    "256 box webp+jpeg": (8.8, 23.5),
    "12 MP png, 3 boxes webp+jpeg": (0.52, 1.39),
}
CHILD_ENV = {**os.environ, "VIPS_CONCURRENCY": "1", "MALLOC_ARENA_MAX": "2"}
EXT = {"webp": "webp", "jpeg": "jpg", "png": "png"}


# --- contenders (run inside the child) ---------------------------------------------------


def naive_pillow(src: Path, out: Path, boxes, formats) -> None:
    """The issue's naive Pillow: full decode, then `thumbnail()` per size.

    Precisely: `ImageOps.exif_transpose` loads every pixel at full size (no `draft`, so no
    DCT scaling) and turns them upright; `convert("RGB")`; an embedded profile is converted
    to sRGB with ImageCms on that full-size image. Then, for each box, `thumbnail((box,
    box))` on a `copy()` of the full-size image with Pillow's defaults: bicubic,
    reducing_gap=2.0 (an integer `reduce()` first when the box is 4x smaller or more).
    `thumbnail()` calls `draft()` itself, but on a loaded copy that does nothing, so every
    size is resized from the full-size pixels. Same encoders and settings as the others."""
    from PIL import Image, ImageCms, ImageOps

    with Image.open(src) as image:
        icc = image.info.get("icc_profile")
        image = ImageOps.exif_transpose(image).convert("RGB")
    if icc:
        srgb = ImageCms.createProfile("sRGB")
        image = ImageCms.profileToProfile(image, ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                          srgb, outputMode="RGB")
    tag = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for box in boxes:
        if box > max(image.size) and box != min(boxes):
            continue
        small = image.copy()
        small.thumbnail((box, box))
        for fmt in formats:
            path = out / f"thumb_{box}.{EXT[fmt]}"
            if fmt == "webp":
                small.save(path, "WEBP", quality=WEBP_Q, method=WEBP_METHOD, icc_profile=tag)
            elif fmt == "png":
                small.save(path, "PNG", compress_level=1, icc_profile=tag)
            else:
                small.save(path, "JPEG", quality=JPEG_Q, subsampling=JPEG_SUBSAMPLING,
                           icc_profile=tag)


def _vips_save(image, path: Path, fmt: str) -> None:
    if fmt == "webp":
        image.webpsave(str(path), Q=WEBP_Q, effort=WEBP_METHOD, keep="icc")
    elif fmt == "png":
        image.pngsave(str(path), compression=1, keep="icc")
    else:
        image.jpegsave(str(path), Q=JPEG_Q, keep="icc", optimize_coding=False,
                       interlace=False, subsample_mode="on")


def _vips_boxes(width: int, height: int, boxes) -> list[int]:
    return [b for b in sorted(boxes, reverse=True) if b <= max(width, height) or b == min(boxes)]


def _vips_srgb(src: Path) -> dict:
    """`thumbnail` arguments for sRGB output. Only an embedded profile needs converting: an
    untagged file is sRGB already, and asking libvips to export it anyway runs a float lcms
    transform at full size (jolla.jpg to 2048 px: 0.80 s of CPU instead of 0.10 s), which
    the Pillow contenders do not pay either (they skip untagged and sRGB inputs)."""
    import pyvips

    header = pyvips.Image.new_from_file(str(src))
    return {"export_profile": "srgb"} if header.get_typeof("icc-profile-data") else {}


def _vips_tag_srgb(image):
    """Tag untagged pixels as sRGB (no conversion), as every contender's files are."""
    import pyvips

    if image.get_typeof("icc-profile-data"):
        return image
    image = image.copy()
    image.set_type(pyvips.GValue.blob_type, "icc-profile-data",
                   pyvips.Operation.call("profile_load", "srgb"))
    return image


def pyvips_direct(src: Path, out: Path, boxes, formats) -> None:
    """`thumbnail` from the file for each box (shrink-on-load each time)."""
    import pyvips

    header = pyvips.Image.new_from_file(str(src))
    size = (header.height, header.width) if header.get_typeof("orientation") and \
        header.get("orientation") in (5, 6, 7, 8) else (header.width, header.height)
    srgb = _vips_srgb(src)
    for box in _vips_boxes(*size, boxes):
        thumb = pyvips.Image.thumbnail(str(src), box, size="down", **srgb)
        thumb = _vips_tag_srgb(thumb.copy_memory())  # two saves from one lazy pipeline fail
        for fmt in formats:
            _vips_save(thumb, out / f"thumb_{box}.{EXT[fmt]}", fmt)


def pyvips_cascade(src: Path, out: Path, boxes, formats) -> None:
    """`thumbnail` from the file to the largest box, then each box from the previous."""
    import pyvips

    ordered = sorted(boxes, reverse=True)
    current = pyvips.Image.thumbnail(str(src), ordered[0], size="down", **_vips_srgb(src))
    current = _vips_tag_srgb(current.copy_memory())
    for box in _vips_boxes(current.width, current.height, ordered):
        if box < max(current.width, current.height):
            current = current.thumbnail_image(box, size="down").copy_memory()
        for fmt in formats:
            _vips_save(current, out / f"thumb_{box}.{EXT[fmt]}", fmt)


def mediamill(src: Path, out: Path, boxes, formats) -> None:
    """The service's own `media.thumbnails.render`."""
    from media import thumbnails

    options = thumbnails.Options(boxes=boxes, formats=formats, webp_quality=WEBP_Q,
                                 webp_method=WEBP_METHOD, jpeg_quality=JPEG_Q)
    assert thumbnails.JPEG_SUBSAMPLING == JPEG_SUBSAMPLING
    thumbnails.render(src, out, options=options)


FUNCTIONS = {"naive pillow": naive_pillow, "pyvips direct": pyvips_direct,
             "pyvips cascade": pyvips_cascade, "mediamill": mediamill}


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child(args) -> None:
    """One contender, one scenario: warm-up pass, then timed passes; JSON on stdout."""
    if args.contender.startswith("pyvips"):
        import pyvips

        pyvips.cache_set_max(0)  # repeated inputs must not be served from libvips' cache
    else:
        from PIL import Image  # noqa: F401

        from media import thumbnails  # noqa: F401  (same imports in every Pillow child)
    boxes, formats, _ = SCENARIOS[args.scenario]
    inputs = [Path(p) for p in args.inputs]
    function = FUNCTIONS[args.contender]
    if args.quality:  # lossless outputs, so SSIM sees resampling and colour, not the encoder
        for src in inputs:
            (Path(args.out) / src.stem).mkdir(parents=True, exist_ok=True)
            function(src, Path(args.out) / src.stem, boxes, ("png",))
        return
    idle = _status("VmRSS")
    hwm_reset = True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        hwm_reset = False
    out = Path(args.out)
    for src in inputs:  # warm-up: first-use costs (codec modules, caches) are not timed
        (out / src.stem).mkdir(parents=True, exist_ok=True)
        function(src, out / src.stem, boxes, formats)
    before, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(args.passes):
        for src in inputs:
            function(src, out / src.stem, boxes, formats)
    after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - wall
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(json.dumps({"jobs": args.passes * len(inputs), "cpu": cpu, "wall": wall,
                      "idle": idle, "peak": _status("VmHWM") if hwm_reset else 0}))


# --- quality --------------------------------------------------------------------------


def _gauss(a, sigma: float = 1.5, radius: int = 5):
    import numpy as np

    k = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2 * sigma**2))
    k /= k.sum()
    n = 2 * radius + 1
    h = sum(k[i] * a[:, i:a.shape[1] - n + 1 + i] for i in range(n))
    return sum(k[i] * h[i:h.shape[0] - n + 1 + i, :] for i in range(n))


def ssim(a, b) -> float:
    """Mean SSIM over R, G, B (Gaussian window 11, sigma 1.5; Wang et al. 2004)."""
    import numpy as np

    a, b = (np.asarray(x, dtype=np.float64) for x in (a, b))
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    scores = []
    for ch in range(3):
        x, y = a[..., ch], b[..., ch]
        mx, my = _gauss(x), _gauss(y)
        sxx, syy, sxy = _gauss(x * x) - mx * mx, _gauss(y * y) - my * my, _gauss(x * y) - mx * my
        scores.append((((2 * mx * my + c1) * (2 * sxy + c2))
                       / ((mx * mx + my * my + c1) * (sxx + syy + c2))).mean())
    return float(np.mean(scores))


def reference(src: Path, size: tuple[int, int]):
    """The oriented, sRGB-converted original, downscaled with Lanczos in floating point."""
    from PIL import Image, ImageCms, ImageOps

    with Image.open(src) as image:
        icc = image.info.get("icc_profile")
        image = ImageOps.exif_transpose(image).convert("RGB")
    if icc:
        image = ImageCms.profileToProfile(image, ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                          ImageCms.createProfile("sRGB"), outputMode="RGB")
    bands = [band.convert("F").resize(size, Image.Resampling.LANCZOS) for band in image.split()]
    # F to L truncates (0.7 becomes 0): add 0.5 so it rounds, else the reference is half a
    # level too dark and favours whichever contender errs dark. Clamps to 0..255.
    return Image.merge("RGB", [band.point(lambda v: v + 0.5).convert("L") for band in bands])


def quality(contender: str, inputs: list[Path], out: Path) -> list[float]:
    """SSIM of each input's lossless 1024 output against its reference."""
    from PIL import Image

    subprocess.run([sys.executable, __file__, "--child", "--quality", "--contender", contender,
                    "--scenario", next(iter(SCENARIOS)), "--out", str(out),
                    *[str(p) for p in inputs]], check=True, env=CHILD_ENV, timeout=600)
    scores = []
    for src in inputs:
        with Image.open(out / src.stem / "thumb_1024.png") as thumb:
            thumb = thumb.convert("RGB")
            scores.append(ssim(thumb, reference(src, thumb.size)))
    return scores


# --- the parent -------------------------------------------------------------------------


def prepare(tmp: Path) -> dict[str, list[Path]]:
    """The input sets: camera JPEGs of 8-12 MP plus the HEICs decoded once to JPEG/PNG."""
    from PIL import Image

    from media import thumbnails  # noqa: F401  (registers the HEIF opener)

    jpegs = [p for p in sorted(CAMERA.glob("*.jpg")) if _megapixels(p) >= 7.5]
    pngs = []
    heics = sorted(CAMERA.glob("*.HEIC"), key=_megapixels, reverse=True)
    for n, heic in enumerate(heics):
        with Image.open(heic) as image:  # pillow-heif applies the HEIF rotation itself
            icc = image.info.get("icc_profile")
            image.load()
            jpeg = tmp / f"{heic.stem}.jpg"
            image.save(jpeg, "JPEG", quality=92, icc_profile=icc)
            jpegs.append(jpeg)
            if n == 0:  # the largest, 12 MP
                png = tmp / f"{heic.stem}.png"
                image.save(png, "PNG", icc_profile=icc)
                pngs.append(png)
    return {"jpeg": jpegs, "png": pngs}


def _megapixels(path: Path) -> float:
    from PIL import Image

    from media import thumbnails  # noqa: F401

    with Image.open(path) as image:
        return image.width * image.height / 1e6


def measure(contender: str, scenario: str, inputs: list[Path], out: Path, passes: int) -> dict:
    argv = [sys.executable, __file__, "--child", "--contender", contender,
            "--scenario", scenario, "--out", str(out), "--passes", str(passes),
            *[str(p) for p in inputs]]
    done = subprocess.run(argv, capture_output=True, text=True, env=CHILD_ENV, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{contender} / {scenario} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args, tmp: Path) -> int:
    sets = prepare(tmp)
    print(f"inputs: {', '.join(f'{p.name} ({_megapixels(p):.1f} MP)' for p in sets['jpeg'])}; "
          f"png: {', '.join(p.name for p in sets['png'])}", file=sys.stderr)
    load_before = os.getloadavg()[0]
    results: dict[tuple[str, str], list[dict]] = {}
    for round_no in range(args.rounds):
        for scenario, (_, _, kind) in SCENARIOS.items():
            order = CONTENDERS[round_no % 4:] + CONTENDERS[:round_no % 4]  # rotate: no favourite
            for contender in order:
                out = tmp / "out" / scenario.replace(" ", "_") / contender.replace(" ", "_")
                result = measure(contender, scenario, sets[kind], out, args.passes)
                results.setdefault((scenario, contender), []).append(result)
                print(f"round {round_no + 1} {scenario} / {contender}: "
                      f"{result['jobs'] / result['cpu']:.2f} images per CPU-s", file=sys.stderr)
    scores = {c: quality(c, sets["jpeg"], tmp / "quality" / c.replace(" ", "_"))
              for c in CONTENDERS}
    return report(args, results, scores, sets, (load_before, os.getloadavg()[0]))


def report(args, results, scores, sets, load) -> int:
    print(f"\nThumbnails, {args.rounds} rounds x {args.passes} passes over the inputs, one "
          f"job at a time per process, libvips {_vips_version()} (VIPS_CONCURRENCY=1)")
    print(f"JPEG inputs: {', '.join(p.name for p in sets['jpeg'])}; PNG: "
          f"{', '.join(p.name for p in sets['png'])}")
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.2f} before, {load[1]:.2f} after. "
          "img/core-s: images per CPU-second, best (median) of the rounds; RSS: peak RSS of a "
          "job above the idle process, median")
    print(f"{'scenario':<30}{'contender':<16}{'img/core-s':>16}{'x naive':>9}{'x pyvips':>10}"
          f"{'RSS MiB':>9}{'SSIM 1024':>11}")
    failures = []
    for scenario in SCENARIOS:
        rate = {c: [r["jobs"] / r["cpu"] for r in results[(scenario, c)]] for c in CONTENDERS}
        best = {c: max(v) for c, v in rate.items()}
        rss = {c: statistics.median(r["peak"] - r["idle"] for r in results[(scenario, c)])
               for c in CONTENDERS}
        vips = max(best["pyvips direct"], best["pyvips cascade"])
        for c in CONTENDERS:
            quality_text = f"{statistics.mean(scores[c]):.4f}" if scenario == next(
                iter(SCENARIOS)) else ""
            print(f"{scenario:<30}{c:<16}"
                  f"{f'{best[c]:.2f} ({statistics.median(rate[c]):.2f})':>16}"
                  f"{best[c] / best['naive pillow']:>9.2f}{best[c] / vips:>10.2f}"
                  f"{rss[c] / MiB:>9.1f}{quality_text:>11}")
        naive_target, vips_target = TARGETS[scenario]
        failures += _check(f"{scenario}: x naive Pillow", best["mediamill"] / best["naive pillow"],
                           naive_target)
        failures += _check(f"{scenario}: x better pyvips", best["mediamill"] / vips, vips_target)
        lowest = min(rss["pyvips direct"], rss["pyvips cascade"])
        failures += _check(f"{scenario}: peak RSS per job, lower pyvips {lowest / MiB:.1f} MiB"
                           f" / mediamill {rss['mediamill'] / MiB:.1f} MiB",
                           lowest / max(rss["mediamill"], 1), 1.0)
    calibrate(results)
    per_input = {c: " ".join(f"{s:.4f}" for s in scores[c]) for c in CONTENDERS}
    print("\nSSIM of the 1024 output (saved losslessly) against a float Lanczos downscale of "
          "the oriented, sRGB-converted original, per JPEG input in the order above:")
    for c in CONTENDERS:
        print(f"  {c:<16}{per_input[c]}")
    mean = {c: statistics.mean(scores[c]) for c in CONTENDERS}
    vips = max(("pyvips direct", "pyvips cascade"), key=mean.__getitem__)
    ok = mean["mediamill"] >= mean[vips]
    print(f"{'PASS' if ok else 'FAIL'}: mean SSIM of the 1024 output: mediamill "
          f"{mean['mediamill']:.5f} vs {vips} {mean[vips]:.5f} (target: no lower)")
    return 1 if failures or not ok else 0


def calibrate(results) -> None:
    """Information, not a verdict: how this run's baselines compare with the issue's figures.
    pyvips is the same program everywhere, so (pyvips cascading here) / (the issue's) says
    how fast this machine is; scaling the issue's naive figure by it estimates what the
    issue's naive Pillow would give here, to compare with this bench's naive and mediamill."""
    print("\nCalibration against the issue's figures (machine = pyvips cascade here / issue's; "
          "issue's naive here = its naive x machine):")
    print(f"{'scenario':<30}{'machine':>9}{'issue naive here':>18}{'our naive / it':>16}"
          f"{'mediamill / it':>16}")
    for scenario in SCENARIOS:
        best = {c: max(r["jobs"] / r["cpu"] for r in results[(scenario, c)]) for c in CONTENDERS}
        naive_ref, vips_ref = ISSUE_REFERENCE[scenario]
        machine = best["pyvips cascade"] / vips_ref
        naive_here = naive_ref * machine
        print(f"{scenario:<30}{machine:>9.2f}{naive_here:>18.2f}"
              f"{best['naive pillow'] / naive_here:>16.2f}{best['mediamill'] / naive_here:>16.2f}")


def _check(label: str, value: float, target: float | None) -> list[str]:
    if target is None:
        return []
    ok = value >= target
    print(f"{'PASS' if ok else 'FAIL'}: {label}: {value:.2f} (target >= {target})")
    return [] if ok else [label]


def _vips_version() -> str:
    done = subprocess.run([sys.executable, "-c", "import pyvips; print('.'.join(str("
                           "pyvips.version(i)) for i in range(3)))"], capture_output=True,
                          text=True)
    return done.stdout.strip() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--passes", type=int, default=1,
                        help="timed passes over the inputs per process (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the outputs")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quality", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--contender", help=argparse.SUPPRESS)
    parser.add_argument("--scenario", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("inputs", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    if args.rounds < 1 or args.passes < 1:
        parser.error("--rounds and --passes must be at least 1")
    tmp = Path(tempfile.mkdtemp(prefix="mediamill-bench-thumbs-"))
    try:
        return run(args, tmp)
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
