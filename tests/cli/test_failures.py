"""How the command reports failures (cli/failures.py, cli/args.py): one line, the command's
flags in place of the API's argument names, exit statuses (FAULTS 34, 37, 38). In-process;
the real entry point in a subprocess is tests/cli/test_no_traceback.py."""

import errno
import re

import pytest

import cuantiza as cz
from cuantiza.cli import failures
from cuantiza.cli.args import option_strings
from cuantiza.cli.main import _parser, main


def _flags(command: str) -> set[str]:
    return option_strings(_parser(), command)


def test_every_flag_a_message_can_suggest_exists():
    """FAULTS 38: the table only names flags some command has, so a fix is always reachable."""
    every = set().union(*(_flags(c) for c in ("quantize", "eval-ppl", "generate", "size")))
    assert {flag for _, _, flag in failures.FLAGS} <= every


@pytest.mark.parametrize(
    "command, api, cli",
    [
        ("quantize", "x exists; pass overwrite=True to replace it", "x exists; pass --overwrite"),
        (
            "quantize",
            "set group_remainder='pad' (a shorter last group) or group_remainder='per_channel'",
            "set --group-remainder pad (a shorter last group) or --group-remainder per_channel",
        ),
        ("quantize", "n_samples must be a whole number >= 1", "--samples must be a whole number"),
        ("eval-ppl", "seq_len 256 exceeds 64; use a shorter seq_len", "--seq-len 256 exceeds 64"),
        ("generate", "top_p must be in (0, 1]", "--top-p must be in (0, 1]"),
        ("quantize", "the exclude pattern 'x' matches no layer", "--exclude 'x' matches no layer"),
        ("size", "parameter count must be a whole number", "--params must be a whole number"),
    ],
)
def test_api_argument_names_become_the_commands_flags(command, api, cli):
    assert failures.for_command(api, _flags(command)).startswith(cli)


def test_a_flag_the_command_lacks_is_not_suggested():
    """generate has no --seq-len: its messages keep the API's word rather than a wrong flag."""
    assert failures.for_command("use a shorter seq_len", _flags("generate")).endswith("seq_len")


def test_notes_and_os_errors_make_one_line():
    e = OSError(errno.ENOSPC, "No space left on device", "/out/x.onnx")
    e.add_note("the finished part is kept in /out/.x.partial:\n run again to resume")
    line, code = failures.describe(e, set())
    assert code == 2 and "\n" not in line
    assert line == (
        "cuantiza: error: /out/x.onnx: No space left on device; the finished part is kept in "
        "/out/.x.partial: run again to resume"
    )


@pytest.mark.parametrize(
    "error, start, code",
    [
        (KeyboardInterrupt(), "cuantiza: interrupted (Ctrl-C); no partial output", 130),
        (failures.Terminated(), "cuantiza: terminated (SIGTERM); no partial output", 143),
        (cz.ConfigError("bad"), "cuantiza: error: bad", 2),
    ],
)
def test_statuses(error, start, code):
    line, got = failures.describe(error, set())
    assert line.startswith(start) and got == code


def test_sigterm_raises_in_the_command_and_the_handler_is_restored(monkeypatch, capsys):
    """FAULTS 34, in-process: SIGTERM during a command is reported like Ctrl-C (143), and the
    previous SIGTERM handler is back afterwards."""
    import os
    import signal

    from cuantiza.cli import main as cli_main

    def slow(args, quiet):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt the command")

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setitem(cli_main.COMMANDS, "size", slow)
    assert main(["size", "--params", "1"]) == 143
    assert (
        capsys.readouterr().err == "cuantiza: terminated (SIGTERM); no partial output was written\n"
    )
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize(
    "argv, message",
    [
        (["size", "--params", "1", "--group-size", "0"], "argument --group-size: must be a whole"),
        (["explain", "1", "--bits", "9"], "argument --bits: must be a whole number in 1..8, got 9"),
        (["eval-ppl", "d", "--text", "t", "--max-chars", "-5"], "got -5"),
        (["generate", "d", "--prompt", "x", "--top-p", "0"], "must be a number > 0.0 and <= 1.0"),
        (["generate", "d", "--prompt", "x", "--temperature", "nan"], "must be a number >= 0.0"),
        (["quantize", "m", "-o", "o", "--samples", "-5"], "argument --samples: must be a whole"),
        (["quantize", "m", "-o", "o", "--group-remainder", "x"], "invalid choice: 'x'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_malformed_arguments_are_one_line(capsys, argv, message):
    """FAULTS 37: argparse's usage block is left out; the line says where --help is."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and re.search(r"see cuantiza.* --help", err)
