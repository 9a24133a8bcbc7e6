"""First-boot provisioning (`carebed provision`): a bundle on the boot partition into /etc/carebed.

Real files, a real PKI (the session's `pki`), the real command line; the boot partition and
/etc/carebed are directories under tmp_path (--boot-dir, --etc-dir).
"""

from __future__ import annotations

import datetime
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.app import provision
from gateway.cli.main import main
from gateway.core import i18n
from hil.sim.pki import Pki

GATEWAY = "gw-a"
CONFIG = f"""\
[gateway]
id = "{GATEWAY}"

[mqtt]
host = "mqtt.care.example"
port = 8883
"""
EXIT_INVALID = 78


@dataclass(frozen=True)
class Site:
    boot: Path  # the boot partition
    etc: Path  # /etc/carebed
    owner: str
    uid: int
    gid: int
    key_uid: int  # the service user, the key's owner

    @property
    def bundle(self) -> Path:
        return self.boot / "carebed"

    def run(self, *extra: str) -> int:
        return main(
            [
                "provision",
                "--boot-dir",
                str(self.boot),
                "--etc-dir",
                str(self.etc),
                "--owner",
                self.owner,
                "--key-owner",
                str(self.key_uid),
                "--no-start",
                *extra,
            ]
        )

    def snapshot(self) -> dict[str, bytes]:
        """Every file under etc, by relative path (nothing half-installed shows up here)."""
        return {
            str(path.relative_to(self.etc)): path.read_bytes()
            for path in sorted(self.etc.rglob("*"))
            if path.is_file()
        }


@pytest.fixture
def site(tmp_path: Path) -> Site:
    boot = tmp_path / "boot"
    boot.mkdir()
    etc = tmp_path / "etc" / "carebed"
    if os.geteuid() == 0:
        # root:nogroup, and nobody for the key, so that each change of owner shows
        uid, gid, key_uid = 0, 65534, 65534
    else:
        uid, gid, key_uid = os.getuid(), os.getgid(), os.getuid()
    return Site(boot, etc, f"{uid}:{gid}", uid, gid, key_uid)


def _bundle(site: Site, pki: Pki, *, config: str = CONFIG, cn: str = GATEWAY) -> Path:
    client = pki.client(cn)
    site.bundle.mkdir()
    (site.bundle / "carebed.toml").write_text(config)
    shutil.copyfile(pki.ca_cert, site.bundle / "ca.crt")
    shutil.copyfile(client.cert, site.bundle / "gateway.crt")
    shutil.copyfile(client.key, site.bundle / "gateway.key")
    return site.bundle


def _mode_owner(path: Path) -> tuple[int, int, int]:
    info = path.lstat()
    return stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid


def _assert_refused(site: Site, capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    before_bundle = {p.name: p.read_bytes() for p in site.bundle.iterdir() if p.is_file()}
    before_etc = site.snapshot() if site.etc.exists() else {}
    done_before = (site.boot / provision.DONE).exists()
    assert site.run() == EXIT_INVALID
    report = (site.bundle / provision.ERROR_FILE).read_text(encoding="utf-8")
    err = capsys.readouterr().err
    for text in expected:
        assert text in report, report
        assert text in err
    assert "(fix: " in report
    assert "NOT installed" in report
    # The bundle stays as it was (plus the report), nothing was installed or left behind.
    after_bundle = {
        p.name: p.read_bytes()
        for p in site.bundle.iterdir()
        if p.is_file() and p.name != provision.ERROR_FILE
    }
    assert after_bundle == {k: v for k, v in before_bundle.items() if k != provision.ERROR_FILE}
    assert (site.snapshot() if site.etc.exists() else {}) == before_etc
    assert not list(site.etc.glob(".provision*")) if site.etc.exists() else True
    assert (site.boot / provision.DONE).exists() == done_before
    return report


# --- a valid bundle ---------------------------------------------------------------------------


def test_a_valid_bundle_is_installed_with_owners_and_modes(
    site: Site, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    _bundle(site, pki)
    assert site.run() == 0
    out = capsys.readouterr().out
    assert f"provisioned gateway {GATEWAY} (broker mqtt.care.example:8883)" in out

    tls = site.etc / "tls"
    assert _mode_owner(site.etc) == (0o750, site.uid, site.gid)
    assert _mode_owner(tls) == (0o750, site.uid, site.gid)
    for path in (site.etc / "carebed.toml", tls / "ca.crt", tls / "gateway.crt"):
        assert _mode_owner(path) == (0o640, site.uid, site.gid), path
    # The key is the service user's alone, as `carebed tls request` makes it.
    assert _mode_owner(tls / "gateway.key") == (0o600, site.key_uid, site.gid)
    assert (tls / "gateway.key").read_bytes() == pki.client(GATEWAY).key.read_bytes()
    assert (tls / "ca.crt").read_bytes() == pki.ca_cert.read_bytes()
    # The installed configuration is the bundle's, with [mqtt.tls] naming the installed files,
    # and passes check-config from where it is.
    installed = (site.etc / "carebed.toml").read_text()
    assert installed.startswith(CONFIG)
    assert 'key_file = "tls/gateway.key"' in installed
    assert main(["check-config", str(site.etc / "carebed.toml")]) == 0
    assert sorted(p.name for p in site.etc.iterdir()) == ["carebed.toml", "tls"]


def test_the_secrets_are_overwritten_and_removed_from_the_boot_partition(
    site: Site, pki: Pki
) -> None:
    bundle = _bundle(site, pki)
    key_bytes = (bundle / "gateway.key").read_bytes()
    # Whoever still holds the old file sees what is left on the medium: zeros.
    held = os.open(bundle / "gateway.key", os.O_RDONLY)
    try:
        assert site.run() == 0
        assert os.pread(held, len(key_bytes), 0) == b"\0" * len(key_bytes)
    finally:
        os.close(held)
    assert not bundle.exists()
    done = site.boot / provision.DONE
    # The certificates (public) stay for reference; the key and the configuration (which may
    # hold passwords) are gone, and the bundle is not read again at the next boot.
    assert sorted(p.name for p in done.iterdir()) == ["ca.crt", "gateway.crt"]
    assert _mode_owner(site.etc / "tls" / "gateway.key") == (0o600, site.key_uid, site.gid)


def test_a_key_made_on_the_device_is_kept(site: Site, pki: Pki) -> None:
    bundle = _bundle(site, pki)
    (site.etc / "tls").mkdir(parents=True)
    shutil.move(bundle / "gateway.key", site.etc / "tls" / "gateway.key")
    assert site.run() == 0
    assert (site.etc / "tls" / "gateway.key").read_bytes() == pki.client(GATEWAY).key.read_bytes()
    assert _mode_owner(site.etc / "tls" / "gateway.key") == (0o600, site.key_uid, site.gid)


def test_a_second_provisioning_replaces_the_first(site: Site, pki: Pki) -> None:
    _bundle(site, pki)
    assert site.run() == 0
    _bundle(site, pki, config=CONFIG.replace(GATEWAY, "gw-b"), cn="gw-b")
    assert site.run() == 0
    assert 'id = "gw-b"' in (site.etc / "carebed.toml").read_text()
    assert (site.etc / "tls" / "gateway.crt").read_bytes() == pki.client("gw-b").cert.read_bytes()


def test_names_from_a_windows_or_mac_card_are_accepted(site: Site, pki: Pki) -> None:
    bundle = _bundle(site, pki)
    (bundle / "ca.crt").rename(bundle / "CA.CRT")
    (bundle / "._carebed.toml").write_bytes(b"\0\5\26\7 mac resource fork")
    assert site.run() == 0


# --- invalid bundles: nothing installed, the bundle stays with its report ----------------------


def test_a_certificate_for_another_gateway_is_refused(
    site: Site, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    _bundle(site, pki, config=CONFIG.replace(GATEWAY, "gw-c"))
    _assert_refused(site, capsys, "gateway.crt: its CN is 'gw-a', not the gateway id 'gw-c'")


def test_a_key_that_is_not_the_certificates_is_refused(
    site: Site, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = _bundle(site, pki)
    shutil.copyfile(pki.client("gw-b").key, bundle / "gateway.key")
    _assert_refused(site, capsys, "gateway.key is not the key of the certificate gateway.crt")


def _certificate(pki: Pki, *, valid_from_days: int, valid_to_days: int) -> bytes:
    """A certificate for GATEWAY's key, signed by the CA, valid between the days from now."""
    key = serialization.load_pem_private_key(pki.client(GATEWAY).key.read_bytes(), None)
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, GATEWAY)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=valid_from_days))
        .not_valid_after(now + datetime.timedelta(days=valid_to_days))
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_an_expired_certificate_is_refused(
    site: Site, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = _bundle(site, pki)
    (bundle / "gateway.crt").write_bytes(_certificate(pki, valid_from_days=-60, valid_to_days=-1))
    _assert_refused(site, capsys, "gateway.crt: expired on")


def test_a_certificate_from_the_future_is_accepted_for_a_clock_not_yet_set(
    site: Site, pki: Pki
) -> None:
    """A Pi's clock at first boot is the image's: a fresh certificate may look not yet valid."""
    bundle = _bundle(site, pki)
    (bundle / "gateway.crt").write_bytes(_certificate(pki, valid_from_days=30, valid_to_days=400))
    assert site.run() == 0


def test_a_missing_key_is_named_with_both_fixes(
    site: Site, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = _bundle(site, pki)
    (bundle / "gateway.key").unlink()
    report = _assert_refused(site, capsys, "gateway.key: missing")
    assert "make the key on the device with `carebed tls request`" in report


def test_every_problem_is_named_at_once(
    site: Site, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = _bundle(site, pki)
    (bundle / "carebed.toml").unlink()
    (bundle / "ca.crt").unlink()
    (bundle / "gateway.cert").write_text("misnamed")
    _assert_refused(
        site,
        capsys,
        "carebed.toml: missing",
        "ca.crt: missing",
        "gateway.cert: not a file of a provisioning bundle",
    )


def test_configuration_errors_are_those_of_check_config(
    site: Site, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    _bundle(site, pki, config=CONFIG + "pasword = 'x'\n[mqtt.tls]\nca_file = '/etc/ca.pem'\n")
    _assert_refused(
        site,
        capsys,
        "mqtt.pasword: unknown key (did you mean mqtt.password?)",
        "delete the [mqtt.tls] table",
    )


def test_a_symbolic_link_out_of_the_bundle_is_not_followed(
    site: Site, pki: Pki, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bundle = _bundle(site, pki)
    outside = tmp_path / "elsewhere.key"
    shutil.move(bundle / "gateway.key", outside)
    (bundle / "gateway.key").symlink_to(outside)
    _assert_refused(site, capsys, "gateway.key: is a symbolic link")
    assert outside.read_bytes() == pki.client(GATEWAY).key.read_bytes()


def test_an_invalid_bundle_leaves_the_previous_installation_alone(
    site: Site, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    _bundle(site, pki)
    assert site.run() == 0
    installed = site.snapshot()
    _bundle(site, pki, config=CONFIG.replace("port = 8883", 'port = "eighty"'))
    _assert_refused(site, capsys, "mqtt.port")
    assert site.snapshot() == installed


def test_a_fixed_bundle_is_installed_and_its_report_goes(site: Site, pki: Pki) -> None:
    bundle = _bundle(site, pki, config=CONFIG.replace(GATEWAY, "gw-c"))
    assert site.run() == EXIT_INVALID
    (bundle / "carebed.toml").write_text(CONFIG)
    assert site.run() == 0
    assert not (site.boot / provision.DONE / provision.ERROR_FILE).exists()


def test_no_bundle_or_a_linked_one_is_said_plainly(
    site: Site, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert site.run() == 1
    assert "no provisioning bundle at" in capsys.readouterr().err
    (tmp_path / "real").mkdir()
    site.bundle.symlink_to(tmp_path / "real")
    assert site.run() == 1
    assert "is not a directory (a symbolic link or a file)" in capsys.readouterr().err


def test_an_unknown_owner_is_a_usage_error(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    site.bundle.mkdir()
    assert main(["provision", "--boot-dir", str(site.boot), "--owner", "root:no-such-group-x"]) == 2
    assert "no group 'no-such-group-x'" in capsys.readouterr().err
    command = [
        *("provision", "--boot-dir", str(site.boot), "--owner", site.owner),
        *("--key-owner", "no-such-user-x"),
    ]
    assert main(command) == 2
    assert "--key-owner: no user 'no-such-user-x'" in capsys.readouterr().err


def test_the_report_is_in_the_run_s_language_and_in_english(
    site: Site, pki: Pki, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under zh_CN the installer's terminal and the error file are Chinese, and the file has
    the English beneath: whoever opens the boot partition may not read Chinese."""
    _bundle(site, pki, config=CONFIG.replace("port = 8883", 'port = "eighty"'))
    (site.bundle / "gateway.key").unlink()
    monkeypatch.setenv("LANGUAGE", "zh_CN")
    i18n.translation.cache_clear()
    try:
        assert site.run() == EXIT_INVALID
    finally:
        monkeypatch.undo()
        i18n.translation.cache_clear()
    err = capsys.readouterr().err
    assert "没有安装" in err and "缺少" in err, err
    report = (site.bundle / provision.ERROR_FILE).read_text(encoding="utf-8")
    chinese, english = report.split("-" * 72)
    assert "没有安装" in chinese and "缺少" in chinese and "mqtt.port" in chinese
    assert "NOT installed" in english and "gateway.key: missing (fix: " in english
    assert "mqtt.port" in english and not any("\u4e00" <= c <= "\u9fff" for c in english)


@settings(max_examples=40)
@given(config=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_configuration_bytes_get_a_report_never_a_crash(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, config: bytes
) -> None:
    base = tmp_path_factory.mktemp("any")
    site = Site(base / "boot", base / "etc", f"{os.getuid()}:{os.getgid()}", 0, 0, os.getuid())
    site.boot.mkdir()
    _bundle(site, pki)
    (site.bundle / "carebed.toml").write_bytes(config)
    code = site.run()
    assert code in (0, EXIT_INVALID)
    if code == EXIT_INVALID:
        report = (site.bundle / provision.ERROR_FILE).read_bytes()
        assert b"(fix: " in report
        assert not site.etc.exists() or not any(site.etc.iterdir())
