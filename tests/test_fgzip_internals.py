"""In-process unit tests of fgzip's pure parts: option parsing, names, gzip's wording."""

from __future__ import annotations

import pytest

from octoray.cli.fgzip import names, report
from octoray.cli.fgzip.options import ACTIONS, LEVEL, OPTIONS, Options, apply_options
from octoray.cli.getopt import UsageError, parse
from octoray.formats import faults


def options_for(*argv: str) -> tuple[Options, list[str], str | None]:
    found, operands = parse(list(argv), OPTIONS, digits=LEVEL, stop=ACTIONS)
    options = Options()
    return options, operands, apply_options(found, options)


def test_bundled_options_and_operands_in_any_order():
    options, operands, action = options_for("a", "-9kv", "--suffix=.z", "b", "--", "-c")
    assert (options.level, options.keep, options.verbose, options.suffix) == (9, True, 1, ".z")
    assert operands == ["a", "b", "-c"] and action is None


def test_an_action_stops_the_parse_where_it_stands():
    assert options_for("-h", "--bogus")[2] == "help"
    with pytest.raises(UsageError):
        options_for("--bogus", "-h")


@pytest.mark.parametrize("argv, complaint", [
    (["-S", ""], "invalid suffix ''"),
    (["-p", "0"], "invalid number of processes: 0"),
    (["-b", "16"], "block size too small (must be >= 32K)"),
    (["--scheduler="], "--scheduler needs a value, not ''"),
    (["--cluster=far"], "--cluster takes 'local', not 'far'"),
    (["-I", "x"], "invalid numeric parameter: x"),  # pigz's words for its zopfli tuning
    (["--maxsplits=5x"], "invalid numeric parameter: 5x"),
])
def test_values_are_checked_once_every_option_is_read(argv, complaint):
    import re

    with pytest.raises(report.Fatal, match=re.escape(complaint)):
        options_for(*argv)


def test_pigz_zopfli_tuning_takes_a_number_and_is_ignored():
    assert options_for("-I", "15", "-J", "0", "-F", "-O")[0].level == 6


def test_a_later_suffix_mends_an_empty_one():
    assert options_for("-S", "", "-S", ".x")[0].suffix == ".x"


def test_test_mode_writes_nowhere_and_keeps_its_input():
    options, _, _ = options_for("-t")
    assert options.stdout and not options.list


@pytest.mark.parametrize("name, suffix, found", [
    ("a.gz", ".gz", ".gz"), ("A.GZ", ".gz", ".GZ"), (".gz", ".gz", None), ("i.z", "z", ".z"),
    ("a.tgz", ".gz", ".tgz"), ("a.txt", ".gz", None), ("a.gz", "e.gz", ".gz"),
    # -S first unless it ends one of gzip's own as written: gzip's order, not the longest match
    ("x.gz", "Z", "z"), ("x.gz", "z", ".gz"), ("x.tgz", "GZ", "gz"), ("a.b.gz", "GZ", "gz"), ("a.tgz", "z", ".tgz"),
])
def test_compressed_suffixes_as_gzip_knows_them(name, suffix, found):
    assert names.has_suffix(name, suffix) == found


def test_decompressed_names():
    assert names.strip_suffix("a.tgz", ".gz") == "a.tar"
    assert names.strip_suffix("a.b.gz", ".gz") == "a.b"
    assert names.strip_suffix("plain", ".gz") is None


def test_pigz_forms_have_their_own_suffixes_unless_one_is_given():
    options = Options()
    options.form = "zlib"
    assert names.compress_suffix(options) == ".zz"
    options.suffix, options.suffix_set = ".q", True
    assert names.compress_suffix(options) == ".q"


def test_a_temporary_name_fits_beside_a_long_output_name():
    name = names.temporary_name("x" * 255)
    assert name.startswith(".") and len(name.encode()) <= 255


@pytest.mark.parametrize("fault, text", [
    (faults.NotCompressed(), "\nfgzip: f: not in gzip format"),
    (faults.UnexpectedEnd(), "\nfgzip: f: unexpected end of file"),
    (faults.CorruptData(), "\nfgzip: f: invalid compressed data--format violated"),
    (faults.CrcMismatch(), "\nfgzip: f: invalid compressed data--crc error"),
    (faults.LengthMismatch(), "\nfgzip: f: invalid compressed data--length error"),
    (faults.Encrypted(), "fgzip: f is encrypted -- not supported"),
    (faults.ReservedFlags(0xC0), "fgzip: f has flags 0xc0 -- not supported"),
    (faults.UnknownMethod(7), "fgzip: f: unknown method 7 -- not supported"),
    (faults.HeaderChecksum(0x1234, 0xABCD), "fgzip: f: header checksum 0x1234 != computed checksum 0xabcd"),
])
def test_every_fault_in_gzips_words(fault, text):
    assert report.fault_text("f", fault) == text


def test_the_run_aborts_where_gzip_gives_up(capsys):
    run = report.Run(Options())
    with pytest.raises(report.Abort):
        run.fault("f", faults.UnexpectedEnd())
    assert run.status == report.ERROR
    checking = report.Run(options_for("-t")[0])
    checking.fault("f", faults.CrcMismatch())  # -t goes on to the next file
    assert checking.status == report.ERROR
    assert "crc error" in capsys.readouterr().err


def test_warnings_keep_an_error_status_and_quiet_hides_only_the_text(capsys):
    run = report.Run(options_for("-q")[0])
    run.warning("w")
    assert run.status == report.WARNING and capsys.readouterr().err == ""
    run.error("e")
    run.warning("w")
    assert run.status == report.ERROR


def test_trailing_zeros_are_mentioned_only_under_verbose(capsys):
    quiet, verbose = report.Run(Options()), report.Run(options_for("-v")[0])
    assert quiet.outcome("f", faults.TrailingZeros()) and quiet.status == report.OK
    assert verbose.outcome("f", faults.TrailingZeros()) and verbose.status == report.WARNING
    assert not quiet.outcome("f", faults.Encrypted())  # a later member's header: stop the file
    err = capsys.readouterr().err
    assert "trailing zero bytes ignored" in err and "is encrypted" in err


def test_ratios_as_gzip_prints_them():
    assert report.display_ratio(1, 4) == " 25.0%"
    assert report.display_ratio(5, 0) == "  0.0%"
