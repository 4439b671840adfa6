"""fclassify as a user runs it: every way of naming images agrees, formats, bad input, order."""

from __future__ import annotations

import csv
import io
import os
import json
import subprocess
import tarfile

import numpy as np
import pytest
from PIL import Image

from conftest import assert_no_traceback, run, tool
from helpers.overlays import popcounts_overlays
from octoray.formats.cnv_input import CLASS_NAMES
from octoray.formats.cnv_model import CnvModel
from octoray.formats.cnv_views import DEFAULT_VIEWS, MAX_VIEWS, summed, views
from octoray.kernels import cnv_reference


def fclassify(*args, **kw):
    return run([*tool("fclassify"), *map(str, args)], **kw)


def lines(result) -> list[str]:
    return result.stdout.decode().splitlines()


def reference_scores(images, count: int = DEFAULT_VIEWS) -> np.ndarray:
    """The oracle's fc3 popcounts summed over `count` views of each image: what fclassify
    --views `count` prints as scores."""
    return summed(cnv_reference.fc3_popcounts(CnvModel.load(), views(np.stack(images), count)), count)


def reference_labels(images, count: int = DEFAULT_VIEWS) -> list[str]:
    return [CLASS_NAMES[i] for i in reference_scores(images, count).argmax(axis=1)]


def smooth_image(rng, height=32, width=32) -> np.ndarray:
    """A blurry random picture: JPEG keeps it close, unlike pure noise."""
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder of PNGs in two levels (names with a space and non-ASCII), plus their pixels."""
    top = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(11)
    pixels = {}
    for i in range(14):
        folder = top / ("sub dir" if i % 3 == 0 else "été") if i % 2 else top
        folder.mkdir(exist_ok=True)
        path = folder / f"img{i:02d}.png"
        image = smooth_image(rng)
        Image.fromarray(image).save(path)
        pixels[path] = image
    (top / "README.txt").write_text("not a picture\n")
    return top, dict(sorted(pixels.items(), key=lambda kv: _walk_key(top, kv[0])))


def _walk_key(top, path):
    """Sorted walk order: a folder's files before its subfolders, each sorted by name."""
    relative = path.relative_to(top).parts
    return (len(relative) > 1, relative)


@pytest.fixture(scope="module")
def expected(photos):
    _top, pixels = photos
    return reference_labels(list(pixels.values()))


def test_a_directory_is_walked_in_sorted_order_and_matches_the_reference(photos, expected):
    top, pixels = photos
    result = fclassify(top, check=True)
    assert lines(result) == [f"{path}\t{label}" for path, label in zip(pixels, expected)]
    assert result.stderr == b""  # README.txt is skipped quietly without -v


def test_files_list_tar_and_cifar_records_agree_with_the_directory(photos, expected, tmp_path):
    top, pixels = photos
    paths = list(pixels)
    by_files = fclassify(*paths, check=True)
    assert [line.split("\t")[1] for line in lines(by_files)] == expected

    listed = fclassify("--files-from", "-", input="\n".join(map(str, paths)).encode() + b"\n", check=True)
    assert lines(listed) == lines(by_files)

    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for path in paths:
            tar.add(path, arcname=str(path.relative_to(top)))
    tarred = fclassify(input=archive.getvalue(), check=True)
    assert lines(tarred) == [f"-:{p.relative_to(top)}\t{label}" for p, label in zip(paths, expected)]

    records = b"".join(bytes([i % 10]) + image.transpose(2, 0, 1).tobytes() for i, image in enumerate(pixels.values()))
    from_stdin = fclassify(input=records, check=True)
    assert lines(from_stdin) == [f"-:{i}\t{label}" for i, label in enumerate(expected)]
    batch_file = tmp_path / "test_batch.bin"
    batch_file.write_bytes(records)
    assert [line.split("\t")[1] for line in lines(fclassify(batch_file, check=True))] == expected


def test_cifar10s_own_binary_archive_and_its_folder(photos, expected, tmp_path):
    """cifar-10-binary.tar.gz holds cifar-10-batches-bin/*.bin (and a readme): its batches are
    classified record by record, from the archive and from the unpacked folder."""
    _top, pixels = photos
    records = b"".join(bytes([i % 10]) + image.transpose(2, 0, 1).tobytes() for i, image in enumerate(pixels.values()))
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "test_batch.bin").write_bytes(records)
    (folder / "batches.meta.txt").write_text("airplane\nautomobile\n")
    with tarfile.open(tmp_path / "cifar-10-binary.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-bin")
    archive = fclassify("-v", tmp_path / "cifar-10-binary.tar.gz", check=True)
    member = f"{tmp_path / 'cifar-10-binary.tar.gz'}:cifar-10-batches-bin/test_batch.bin"
    assert lines(archive) == [f"{member}:{i}\t{label}" for i, label in enumerate(expected)]
    assert "batches.meta.txt: not an image, skipped" in archive.stderr.decode()
    unpacked = fclassify(folder, check=True)
    assert lines(unpacked) == [f"{folder / 'test_batch.bin'}:{i}\t{label}" for i, label in enumerate(expected)]


def test_an_archive_without_images_is_an_error_as_an_empty_folder_is(tmp_path):
    (tmp_path / "notes.txt").write_text("no pictures here\n")
    with tarfile.open(tmp_path / "notes.tar", "w") as tar:
        tar.add(tmp_path / "notes.txt", arcname="notes.txt")
    for argv, stdin, name in (([tmp_path / "notes.tar"], b"", tmp_path / "notes.tar"),
                              ([], (tmp_path / "notes.tar").read_bytes(), "-"),
                              ([], bytes(10240), "-")):  # an empty tar: only its end blocks (zeros)
        result = fclassify(*argv, input=stdin)
        assert (result.returncode, result.stdout, result.stderr.decode()) == (1, b"", f"fclassify: {name}: no images found\n")


def test_several_lists_are_read_in_order_and_null_needs_one(photos, expected, tmp_path):
    _top, pixels = photos
    paths = list(pixels)[:3]
    (tmp_path / "one").write_text(f"{paths[0]}\n{paths[1]}\n")
    (tmp_path / "two").write_text(f"{paths[2]}\n")
    both = fclassify("--files-from", tmp_path / "one", "--files-from", tmp_path / "two", check=True)
    assert lines(both) == [f"{p}\t{label}" for p, label in zip(paths, expected)]
    alone = fclassify("-0", paths[0])
    assert alone.returncode == 2 and b"--null" in alone.stderr and alone.stdout == b""


def test_a_compressed_tar_on_stdin(photos, expected):
    top, pixels = photos
    result = subprocess.run(f"tar czf - -C '{top}' . | {' '.join(tool('fclassify'))} --labels",
                            shell=True, capture_output=True, check=True)
    by_name = dict(zip((p.relative_to(top) for p in pixels), expected))
    assert sorted(lines(result)) == sorted(by_name.values())


def test_one_image_on_stdin(photos, expected):
    first = next(iter(photos[1]))
    assert lines(fclassify(input=first.read_bytes(), check=True)) == [f"-\t{expected[0]}"]


def test_output_formats(photos, expected):
    top, pixels = photos
    paths = list(pixels)[:3]
    tsv = [line.split("\t") for line in lines(fclassify("--top-k", 3, *paths, check=True))]
    for fields, label in zip(tsv, expected):
        assert len(fields) == 7 and fields[1] == label
        scores = [int(s) for s in fields[2::2]]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 512 * DEFAULT_VIEWS for s in scores)

    rows = list(csv.reader(io.StringIO(fclassify("--format", "csv", *paths, check=True).stdout.decode())))
    assert rows[0] == ["path", "label"] and [r[1] for r in rows[1:]] == expected[:3]
    assert rows[1][0] == str(paths[0])

    records = [json.loads(line) for line in lines(fclassify("--format", "jsonl", "--top-k", 2, *paths, check=True))]
    assert [r["label"] for r in records] == expected[:3]
    assert all(r["top"][0]["label"] == r["label"] and len(r["top"]) == 2 for r in records)

    assert lines(fclassify("--labels", *paths, check=True)) == expected[:3]


def test_images_that_are_not_32x32_rgb_are_converted(tmp_path):
    rng = np.random.default_rng(3)
    base = smooth_image(rng, 96, 160)
    Image.fromarray(base).save(tmp_path / "wide.jpg", quality=95)
    Image.fromarray(base).convert("L").save(tmp_path / "gray.png")
    Image.fromarray(base).convert("P").save(tmp_path / "palette.gif")
    rgba = Image.fromarray(base).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(tmp_path / "alpha.png")
    Image.fromarray(base).save(tmp_path / "bitmap.bmp")
    result = fclassify(tmp_path, check=True)
    assert len(lines(result)) == 5
    assert all(line.split("\t")[1] in CLASS_NAMES for line in lines(result))


def test_bad_inputs_are_named_the_rest_still_classified_and_exit_1(photos, tmp_path):
    good = next(iter(photos[1]))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    text = tmp_path / "text.jpg"
    text.write_text("hello")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = fclassify(truncated, good, tmp_path / "missing.png", text, empty)
    assert result.returncode == 1
    assert_no_traceback(result)
    assert [line.split("\t")[0] for line in lines(result)] == [str(good)]
    assert result.stderr.decode().splitlines() == [
        f"fclassify: {truncated}: truncated image",
        f"fclassify: {tmp_path / 'missing.png'}: No such file or directory",
        f"fclassify: {text}: not an image",
        f"fclassify: {empty}: no images found",
    ]


def test_a_truncated_cifar_stream_keeps_the_whole_records(photos):
    image = next(iter(photos[1].values()))
    records = (bytes([1]) + image.transpose(2, 0, 1).tobytes()) * 2
    result = fclassify("-", input=records[:-100])
    assert result.returncode == 1 and len(lines(result)) == 1
    assert b"fclassify: -:1: truncated CIFAR-10 record" in result.stderr


def test_verbose_notes_skipped_files_and_reports_speed(photos):
    top, _ = photos
    result = fclassify("-v", top, check=True)
    err = result.stderr.decode()
    assert f"fclassify: {top / 'README.txt'}: not an image, skipped" in err
    assert "images in" in err and "local (cpu" in err


def test_order_holds_with_small_batches_on_several_threads(tmp_path):
    rng = np.random.default_rng(5)
    images = [smooth_image(rng) for _ in range(60)]
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i:03d}.png")
    labels = reference_labels(images)
    result = fclassify("--batch", 4, "-p", 3, tmp_path, check=True)
    assert lines(result) == [f"{tmp_path / f'{i:03d}.png'}\t{label}" for i, label in enumerate(labels)]


@pytest.mark.parametrize("count", [2, 3, MAX_VIEWS])
def test_views_sum_the_scores_of_the_image_its_mirror_and_moved_copies(photos, count):
    """--views N: each image's fc3 popcounts summed over its first N views, as the oracle
    computes them, and the label the best class of the sum."""
    _top, pixels = photos
    paths = list(pixels)[:6]
    records = [json.loads(line) for line in
               lines(fclassify("--views", count, "--format", "jsonl", "--top-k", 10, *paths, check=True))]
    want = reference_scores([pixels[p] for p in paths], count)
    told = fclassify("-v", "--views", count, *paths, check=True).stderr.decode()
    assert f"/s, {count} views an image) on local (cpu" in told
    for record, row in zip(records, want):
        assert {t["label"]: t["score"] for t in record["top"]} == dict(zip(CLASS_NAMES, row.tolist()))
        assert record["label"] == CLASS_NAMES[row.argmax()]
    assert [r["path"] for r in records] == [str(p) for p in paths]


@pytest.mark.parametrize("asked", [["--views", "2"], ["--top-k", "3"]])
def test_scores_from_a_card_that_returns_only_its_top1_class_are_refused_with_a_reason(photos, asked):
    """--top-k prints fc3's scores and --views sums them: a card chosen explicitly that has
    only its top-1 class refuses (with `auto`, the CPU does those batches)."""
    top, pixels = photos
    env = dict(os.environ, OCTORAY_ACCELERATOR="fpga-emulator")
    refused = fclassify(*asked, top, env=env)
    assert refused.returncode == 1 and refused.stdout == b""
    assert refused.stderr.decode().startswith("fclassify: fpga-emulator:0 ")
    assert "fc3 scores, which --top-k and summing views need: the card returns only its top-1 class" \
        in refused.stderr.decode()
    assert_no_traceback(refused)
    one_view = fclassify("--views", 1, top, env=env, check=True)
    assert [line.split("\t")[1] for line in lines(one_view)] == reference_labels(list(pixels.values()), 1)


def test_views_on_a_card_built_to_return_popcounts_run_on_the_card(photos, tmp_path):
    """A build without FINN's LabelSelect (`--qonnx-output popcounts`) returns fc3's popcounts:
    the card sums views itself, with the scores --top-k prints equal to the CPU kernel's."""
    _top, pixels = photos
    paths = list(pixels)[:5]
    env = dict(os.environ, OCTORAY_ACCELERATOR="fpga-emulator", OCTORAY_OVERLAYS=popcounts_overlays(tmp_path))
    result = fclassify("-v", "--views", 3, "--format", "jsonl", "--top-k", 10, *paths, env=env, check=True)
    assert "3 views an image) on local (fpga-emulator:0 gzip_u50+cnv_w1a1_u50)" in result.stderr.decode()
    want = reference_scores([pixels[p] for p in paths], 3)
    for line, row in zip(lines(result), want, strict=True):
        record = json.loads(line)
        assert {t["label"]: t["score"] for t in record["top"]} == dict(zip(CLASS_NAMES, row.tolist()))


@pytest.mark.parametrize("redirect, args, status, stderr, printed", [
    (">&-", ["{one}"], 1, "fclassify: stdout: Bad file descriptor\n", []),
    (">&-", ["--help"], 1, "fclassify: stdout: Bad file descriptor\n", []),
    ("<&-", ["{one}", "-", "{two}"], 1, "fclassify: -: Bad file descriptor\n", ["{one}", "{two}"]),
    ("<&-", ["--files-from", "-"], 1, "fclassify: -: Bad file descriptor\n", []),
    ("2>&-", ["{one}"], 0, "", ["{one}"]),
])
def test_a_closed_standard_stream_is_one_line_where_it_is_used(photos, redirect, args, status, stderr, printed):
    """Started with stdin, stdout or stderr closed: the other images are still classified,
    and what could not be done is one line with status 1, never a traceback."""
    _top, pixels = photos
    one, two = list(pixels)[:2]
    argv = [a.format(one=one, two=two) for a in args]
    result = run(["sh", "-c", f'exec "$@" {redirect}', "sh", *tool("fclassify"), *argv], timeout=120)
    assert (result.returncode, result.stderr.decode()) == (status, stderr)
    assert [line.split("\t")[0] for line in lines(result)] == [p.format(one=one, two=two) for p in printed]


def test_a_walk_never_opens_a_fifo_and_does_not_follow_links_to_directories(tmp_path, photos):
    """Opening a FIFO (or /dev/console) met in a walk would wait for ever: skipped, as a link
    to a directory is, each noted under -v."""
    _top, pixels = photos
    one, two = list(pixels)[:2]
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.png").write_bytes(one.read_bytes())
    (tmp_path / "sub" / "b.png").write_bytes(two.read_bytes())
    os.mkfifo(tmp_path / "f.png")
    os.symlink("sub", tmp_path / "link")
    result = fclassify("-v", tmp_path, timeout=60, check=True)
    assert [line.split("\t")[0] for line in lines(result)] == [str(tmp_path / "a.png"), str(tmp_path / "sub" / "b.png")]
    told = result.stderr.decode()
    assert f"fclassify: {tmp_path / 'f.png'}: not a regular file, skipped\n" in told
    assert f"fclassify: {tmp_path / 'link'}: a link to a directory, not followed\n" in told


def test_views_out_of_range_are_a_usage_error(photos):
    top, _ = photos
    for count in (0, MAX_VIEWS + 1):
        bad = fclassify("--views", count, top)
        assert bad.returncode == 2 and b"--views" in bad.stderr and bad.stdout == b""
        assert_no_traceback(bad)


def test_usage_errors_and_a_closed_pipe_are_quiet(photos):
    top, _ = photos
    bad = fclassify("--format", "xml", top)
    assert bad.returncode == 2 and b"Invalid value" in bad.stderr
    assert_no_traceback(bad)
    head = subprocess.run(f"{' '.join(tool('fclassify'))} --batch 2 '{top}' | head -1", shell=True,
                          capture_output=True, check=True)
    assert len(head.stdout.splitlines()) == 1 and head.stderr == b""
    # a reader gone before the first result (true reads nothing): 141, as SIGPIPE ends fgzip and cat
    gone = subprocess.run(f"{' '.join(tool('fclassify'))} '{top}' | true; exit ${{PIPESTATUS[0]}}", shell=True,
                          capture_output=True, executable="/bin/bash")
    assert (gone.returncode, gone.stderr) == (141, b"")  # it was a silent 1, an error


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "No such option: --bogus"),
    (["--top-k", "11"], "Invalid value for '--top-k'"),
    (["--cluster", "x"], "unknown cluster 'x'"),
])
def test_a_usage_error_is_a_line_that_names_the_program_then_where_help_is(args, message):
    result = fclassify(*args, "x.png")
    assert result.returncode == 2 and result.stdout == b""
    first, hint = result.stderr.decode().splitlines()
    assert first.startswith("fclassify: ") and message in first
    assert hint == "Try 'fclassify -h' for help."


def test_version_has_fgzips_form():
    from octoray import __version__

    assert fclassify("--version", check=True).stdout == f"fclassify {__version__} (octoray)\n".encode()
    assert run([*tool("fgzip"), "--version"], check=True).stdout.startswith(f"fgzip {__version__} (octoray)\n".encode())


@pytest.mark.parametrize("extra", [["--top-k", "2"], ["--format", "jsonl"], ["--format", "csv"]])
def test_labels_takes_no_top_k_and_no_other_format(photos, extra):
    result = fclassify("--labels", *extra, photos[0])
    assert result.returncode == 2 and result.stdout == b""
    assert b"--labels" in result.stderr and extra[0].encode() in result.stderr
    assert_no_traceback(result)


@pytest.fixture
def odd_names(tmp_path):
    """Images whose names hold a tab, a newline, a carriage return, a backslash, a quote and a
    comma, a byte that is not UTF-8; and a file with a newline in its name that is not an image."""
    rng = np.random.default_rng(9)
    folder = os.fsencode(tmp_path)
    names = [b"a\ttab.png", b"back\\slash.png", b"carriage\rreturn.png", b"new\nline.png", b"not\xffutf8.png",
             b"plain.png", b'quo"te,comma.png']
    for name in names:
        Image.fromarray(smooth_image(rng)).save(os.fsdecode(os.path.join(folder, name)))
    with open(os.path.join(folder, b"text\nfile.png"), "w") as text:
        text.write("no picture")
    return tmp_path, [os.fsdecode(os.path.join(folder, name)) for name in names]


def test_odd_file_names_read_back_unambiguously_in_every_format(odd_names):
    top, paths = odd_names
    plain = fclassify("-z", top)  # NUL-terminated records, names as they are
    assert plain.returncode == 1
    records = [record.rsplit(b"\t", 1) for record in plain.stdout.split(b"\0")[:-1]]  # labels hold no tab
    assert [os.fsdecode(name) for name, _label in records] == paths
    labels = [label.decode() for _name, label in records]
    assert plain.stderr.decode() == "fclassify: " + str(top) + "/text\\nfile.png: not an image\n"  # one line

    tsv = fclassify(top).stdout.split(b"\n")[:-1]
    assert len(tsv) == len(paths)
    fields = [line.split(b"\t") for line in tsv]
    assert all(len(f) == 2 for f in fields)
    unescape = {"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}
    names = []
    for name, _label in fields:
        chars, out = iter(os.fsdecode(name)), []
        for char in chars:
            out.append(unescape[next(chars)] if char == "\\" else char)
        names.append("".join(out))
    assert names == paths and [label.decode() for _n, label in fields] == labels

    rows = list(csv.reader(io.StringIO(fclassify("--format", "csv", top).stdout.decode("utf-8", "surrogateescape"))))
    assert rows[1:] == [[path, label] for path, label in zip(paths, labels)]

    jsonl = fclassify("--format", "jsonl", top).stdout
    records = [json.loads(line) for line in jsonl.decode("utf-8").splitlines()]  # strict UTF-8
    assert [r["label"] for r in records] == labels
    import base64

    assert [base64.b64decode(r["path_base64"]) if "path_base64" in r else r["path"].encode() for r in records] \
        == [os.fsencode(path) for path in paths]


def test_files_from_with_null_separators_takes_any_name(odd_names):
    top, paths = odd_names
    listing = b"".join(os.fsencode(path) + b"\0" for path in paths)
    listed = fclassify("-z", "--null", "--files-from", "-", input=listing, check=True)
    walked = fclassify("-z", top)
    assert listed.stdout == walked.stdout
