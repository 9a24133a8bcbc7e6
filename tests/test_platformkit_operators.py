"""The desk's operators file, its password hashes and sessions, and `operator add`."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from platformkit.ingest.operators import (
    LOGIN_FAILURE_WINDOW_S,
    MAX_LOGIN_FAILURES,
    SESSION_IDLE_S,
    Operators,
    OperatorsError,
    add_operator,
    check_password,
    hash_password,
    read_operators,
)

CLI_TIMEOUT_S = 60.0
FAST_N = 2**4  # the cost parameter, low for property tests only
PASSWORD = "anna's long password"


@given(st.text(max_size=64).filter(lambda p: "\0" not in p), st.text(max_size=64))
def test_a_password_matches_its_hash_and_no_other(password: str, other: str) -> None:
    stored = hash_password(password, n=FAST_N)
    assert check_password(password, stored)
    assert check_password(other, stored) == (other == password)


def test_trailing_nul_characters_match_nothing_and_are_refused_in_a_password() -> None:
    """scrypt pads a short key with zero bytes, so "pw" and "pw\0" hash alike: a password
    with a NUL is refused when it is set and never matches when it is checked."""
    stored = hash_password("", n=FAST_N)
    assert not check_password("\0", stored)
    assert not check_password("a long password\0", hash_password("a long password", n=FAST_N))
    with pytest.raises(ValueError, match="NUL"):
        hash_password("pw\0", n=FAST_N)


def test_operator_add_refuses_a_password_with_a_nul(tmp_path: Path) -> None:
    with pytest.raises(OperatorsError, match="NUL"):
        add_operator(tmp_path / "operators", "anna", PASSWORD + "\0")
    assert not (tmp_path / "operators").exists()


@given(
    st.one_of(
        st.text(),
        st.builds(
            "$".join,
            st.lists(st.one_of(st.text(max_size=8), st.integers(-1, 2**40).map(str)), max_size=7),
        ),
    )
)
def test_a_stored_hash_of_any_form_is_refused_not_raised(stored: str) -> None:
    assert check_password("x", stored) is False


def test_hashes_are_salted() -> None:
    assert hash_password(PASSWORD, n=FAST_N) != hash_password(PASSWORD, n=FAST_N)


@given(st.text())
def test_any_operators_file_is_read_or_refused_with_operators_error(text: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "operators"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        error = None
        try:
            operators = read_operators(path)
        except OperatorsError as exc:
            error, operators = str(exc), {}
        assert error is None or str(path) in error
        assert all(stored.startswith("scrypt$") for stored in operators.values())


def test_add_writes_a_private_file_and_changes_a_password(tmp_path: Path) -> None:
    path = tmp_path / "operators"
    assert add_operator(path, "anna", PASSWORD) is True
    assert add_operator(path, "ben", "ben's long password") is True
    assert add_operator(path, "anna", "a new long password") is False
    assert path.stat().st_mode & 0o777 == 0o600
    stored = read_operators(path)
    assert list(stored) == ["anna", "ben"]
    assert check_password("a new long password", stored["anna"])
    assert PASSWORD not in path.read_text()
    for name, password in [("bad name", PASSWORD), ("anna", "short"), ("x:y", PASSWORD)]:
        with pytest.raises(OperatorsError):
            add_operator(path, name, password)


def test_sessions_end_when_idle_or_the_operator_is_removed_and_failures_expire(
    tmp_path: Path,
) -> None:
    path = tmp_path / "operators"
    add_operator(path, "anna", PASSWORD)
    add_operator(path, "ben", "ben's long password")
    now = [1000.0]
    operators = Operators(path, clock=lambda: now[0])
    operators.load()
    assert operators.check("anna", PASSWORD)
    assert not operators.check("nobody", PASSWORD)
    token = operators.open_session("anna")
    assert operators.session(token) == "anna"
    now[0] += SESSION_IDLE_S - 1
    assert operators.session(token) == "anna"  # used: idle again from now
    now[0] += SESSION_IDLE_S + 1
    assert operators.session(token) is None
    assert operators.session("forged") is None

    for n in range(1, MAX_LOGIN_FAILURES + 1):
        assert not operators.locked("ben")
        assert operators.failed("ben") == n
    assert operators.locked("ben")
    now[0] += LOGIN_FAILURE_WINDOW_S + 1
    assert not operators.locked("ben")

    token = operators.open_session("ben")
    path.write_text(path.read_text().splitlines()[0] + "\n")  # ben removed
    operators.load()
    assert operators.session(token) is None


def test_operator_add_reads_the_password_from_stdin(tmp_path: Path) -> None:
    path = tmp_path / "operators"
    command = [sys.executable, "-m", "platformkit.ingest", "operator", "add"]
    done = subprocess.run(
        [*command, "anna", "--operators", str(path)],
        input=f"{PASSWORD}\n",
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "operator anna: added" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr
    assert check_password(PASSWORD, read_operators(path)["anna"])
    short = subprocess.run(
        [*command, "ben", "--operators", str(path)],
        input="short\n",
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert short.returncode == 2
    assert "8 to 1024 characters" in short.stderr


def test_a_desk_without_operators_does_not_start_unless_told(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("# nobody yet\n")
    base = [sys.executable, "-m", "platformkit.ingest", "--dsn", "host=/nonexistent"]
    for extra, expected in [
        ((), "missing --operators FILE"),
        (("--operators", str(empty)), "holds no operator"),
        (("--operators", str(tmp_path / "absent")), "No such file"),
        (("--operators", str(empty), "--no-login"), "--no-login contradicts --operators"),
    ]:
        done = subprocess.run(
            [*base, "--plaintext", "desk", *extra],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
            check=False,
        )
        assert done.returncode == 2, (extra, done.stderr)
        assert expected in done.stderr, (extra, done.stderr)
