"""Exit codes a release gate can rely on, an --out checked before any work, and a
reader that goes away (``| head``) ending the command quietly. Real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

TINY = (
    *("audit", "--scenario", "topics-tiny-v1", "--policy", "myopic", "--references", "natural"),
    *("--users", "5", "--steps", "2", "--replicates", "2", "--in-process", "--no-track"),
    "--no-progress",
)


def test_an_internal_error_has_its_own_exit_code_apart_from_flag(tmp_path):
    """A crash inside a command exits 4 (FLAG is 1), with one line on stderr."""
    code = (
        "import sys, recaudit.cli as c\n"
        "def boom(args):\n"
        "    raise RuntimeError('boom')\n"
        "c.COMMANDS['policies'] = boom\n"
        "sys.exit(c.main(['policies']))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RECAUDIT_DEBUG"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr == (
        "recaudit: internal error: RuntimeError: boom (set RECAUDIT_DEBUG=1 for a traceback)\n"
    )


def test_help_documents_every_exit_code(recaudit_bin):
    top = subprocess.run([recaudit_bin, "--help"], capture_output=True, text=True, timeout=60)
    assert "4 internal error" in " ".join(top.stdout.split())
    audit = subprocess.run(
        [recaudit_bin, "audit", "--help"], capture_output=True, text=True, timeout=60
    )
    text = " ".join(audit.stdout.split())
    assert "0 pass, 1 flag, 3 inconclusive, 2 bad input, 4 internal error" in text


@pytest.mark.parametrize("command", ["audit", "simulate"])
def test_an_out_directory_that_cannot_be_created_is_bad_input_before_any_work(
    recaudit_bin, tmp_path, command
):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = blocker / "report"  # under a regular file: cannot be created
    args = (
        TINY
        if command == "audit"
        else (
            *("simulate", "--scenario", "topics-tiny-v1", "--policy", "myopic"),
            *("--users", "5", "--steps", "2", "--seeds", "1", "--no-progress"),
        )
    )
    env = {**os.environ, "RECAUDIT_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [recaudit_bin, *args, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "cannot create it" in proc.stderr
    assert proc.stdout == ""  # no table: nothing ran


@pytest.mark.parametrize("args", [("policies", "--json"), ("scenarios",), ("--help",)])
def test_a_closed_pipe_ends_the_command_quietly(recaudit_bin, args):
    """``recaudit policies --json | head``: the reader is gone before the output is
    written; no 'internal error', no traceback, exit 0 or 141 (SIGPIPE's shell code)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will ever read: the first write fails with EPIPE
    try:
        proc = subprocess.run(
            [recaudit_bin, *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert proc.returncode in (0, 141), proc.stderr
    assert proc.stderr == ""


def test_policies_json_into_head_in_a_shell(recaudit_bin):
    proc = subprocess.run(
        f"'{recaudit_bin}' policies --json | head -n 1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout == "[\n"
    assert "Error" not in proc.stderr and "internal error" not in proc.stderr
