"""fclassify on very large inputs: memory stays bounded (peak RSS of the process, measured),
and stderr carries only fclassify's own words, nothing under -q."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import tool
from helpers import peak
from octoray.formats.cnv_input import CLASS_NAMES

PEAK_LIMIT = 200 * 10**6  # bytes of resident memory, whatever the input


def measured(args, *, feed=None):
    """Run fclassify; (exit code, stdout, stderr, peak RSS in bytes) of that one process."""
    return peak.measured([*tool("fclassify"), *args], feed=feed)


def drawn(side: int) -> Image.Image:
    """A large picture of a few flat rectangles: quick to encode, compresses well."""
    image = Image.new("RGB", (side, side), (40, 90, 160))
    draw = ImageDraw.Draw(image)
    for i in range(0, side // 2, side // 24):
        draw.rectangle((i, i, i + side // 30, side - 1 - i), fill=(i % 255, 200, 255 - i % 255))
    return image


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A 12000x12000 JPEG, an 8000x8000 PNG and an 8000x8000 progressive JPEG; in a folder."""
    folder = tmp_path_factory.mktemp("big")
    drawn(12000).save(folder / "huge.jpg", quality=85)
    picture = drawn(8000)
    picture.save(folder / "huge.png", compress_level=1)
    picture.save(folder / "huge-progressive.jpg", quality=85, progressive=True)
    return folder


@pytest.mark.parametrize("args", [["-q", "huge.jpg"], ["huge.jpg"], ["-q", "huge.png"]])
def test_a_huge_image_is_classified_in_bounded_memory_with_nothing_on_stderr(big, args):
    *quiet, name = args
    status, out, err, peak = measured([*quiet, big / name])
    assert status == 0 and err == b""  # no DecompressionBombWarning, no note
    path, label = out.decode().rstrip("\n").split("\t")
    assert path == str(big / name) and label in CLASS_NAMES
    assert peak < PEAK_LIMIT, f"{peak / 2**20:.0f} MiB"


def test_a_progressive_jpeg_whose_decoding_needs_too_much_memory_is_refused(big):
    path = big / "huge-progressive.jpg"
    status, out, err, peak = measured(["-q", path])
    assert (status, out) == (1, b"")
    assert err.decode() == f"fclassify: {path}: image too large (8000x8000 pixels)\n"
    assert peak < PEAK_LIMIT


def test_a_folder_of_huge_images_and_a_tar_of_them(big):
    status, out, err, peak = measured(["-q", big])
    assert status == 1 and peak < PEAK_LIMIT
    lines = dict(line.split("\t") for line in out.decode().splitlines())
    assert set(lines) == {str(big / "huge.jpg"), str(big / "huge.png")}
    assert err.decode() == f"fclassify: {big / 'huge-progressive.jpg'}: image too large (8000x8000 pixels)\n"

    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        tar.add(big / "huge.jpg", arcname="huge.jpg")
    status, out, err, peak = measured(["-q"], feed=[archive.getvalue()])
    assert (status, err) == (0, b"") and peak < PEAK_LIMIT
    assert out.decode() == f"-:huge.jpg\t{lines[str(big / 'huge.jpg')]}\n"


def test_an_image_too_large_to_hold_is_read_from_a_pipe_through_a_temporary_copy(tmp_path):
    noise = np.random.default_rng(8).integers(0, 256, (2000, 2000, 3), dtype=np.uint8)
    path = tmp_path / "noise.png"
    Image.fromarray(noise).save(path, compress_level=0)  # 12 MB: more than fclassify holds
    assert path.stat().st_size > 8 << 20
    from_file = measured([path])
    data = path.read_bytes()
    from_pipe = measured([], feed=(data[i:i + (1 << 20)] for i in range(0, len(data), 1 << 20)))
    status, out, err, _peak = from_file
    assert status == 0 and err == b"" and out.startswith(f"{path}\t".encode())
    assert from_pipe[:3] == (0, b"-\t" + out.split(b"\t")[1], b"")
    assert from_file[3] < PEAK_LIMIT and from_pipe[3] < PEAK_LIMIT


def test_a_huge_file_that_is_not_an_image_is_refused_from_its_first_bytes(tmp_path):
    path = tmp_path / "huge500"
    with open(path, "wb") as sparse:  # 512 MB of zeros, without writing them
        sparse.truncate(512 << 20)
    status, out, err, peak = measured([path])
    assert (status, out, err.decode()) == (1, b"", f"fclassify: {path}: not an image\n")
    assert peak < PEAK_LIMIT

    text = b"these are not the pixels you are looking for\n" * 20000  # ~0.9 MB a chunk
    status, out, err, peak = measured([], feed=(text for _ in range(600)))  # up to 540 MB
    assert (status, out, err) == (1, b"", b"fclassify: -: not an image\n")
    assert peak < PEAK_LIMIT
