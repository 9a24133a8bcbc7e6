"""The camera's HTTP client and call runner against the simulated camera over real HTTP(S)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from drivers.camera.calls import CallRunner
from drivers.camera.errors import (
    CameraAuthError,
    CameraBusyError,
    CameraCertificateError,
    CameraConfigError,
    CameraPrivacyError,
    CameraProtocolError,
    CameraUnavailableError,
)
from drivers.camera.http import CameraStatus, HttpCamera
from hil.sim.camera import Algorithm, SimCamera

USER = "installer"
PASSWORD = "s3cret"
RUN_TIMEOUT_S = 10.0

Report = tuple[str, str | None, str | None]


@pytest.fixture
async def sim() -> AsyncIterator[SimCamera]:
    async with SimCamera(
        user=USER, password=PASSWORD, connect_delay_s=0.1, call_duration_s=0.2
    ) as camera:
        yield camera


def client(sim: SimCamera, *, password: str = PASSWORD, timeout_s: float = 2.0) -> HttpCamera:
    return HttpCamera(
        sim.base_url,
        user=USER,
        password=password,
        fingerprint_sha256=sim.fingerprint_sha256,
        request_timeout_s=timeout_s,
    )


async def run_call(
    camera: HttpCamera, *, alarm_id: str | None = "alarm-1", total_budget_s: float = 5.0
) -> tuple[str, list[Report]]:
    reports: list[Report] = []
    runner = CallRunner(
        camera,
        lambda state, alarm, error: reports.append((state, alarm, error)),
        poll_interval_s=0.02,
        backoff_initial_s=0.02,
        backoff_cap_s=0.1,
        total_budget_s=total_budget_s,
        jitter=lambda delay_s: delay_s,
    )
    async with asyncio.timeout(RUN_TIMEOUT_S):
        final = await runner.run("alarm", alarm_id)
    return final, reports


def posts(sim: SimCamera) -> list[str | None]:
    return [r.authorization for r in sim.requests if r.method == "POST"]


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
async def test_status_with_digest(algorithm: Algorithm) -> None:
    async with (
        SimCamera(user=USER, password=PASSWORD, algorithm=algorithm) as sim,
        client(sim) as camera,
    ):
        sim.privacy_mode = True
        assert await camera.status() == CameraStatus("SimCam 1", "1.0.0", privacy_mode=True)
    assert sim.requests[-1].authorized
    assert f"algorithm={algorithm}" in (sim.requests[-1].authorization or "")


async def test_call_requested_started_ended(sim: SimCamera) -> None:
    async with client(sim) as camera:
        final, reports = await run_call(camera)
    assert final == "ended"
    assert reports == [
        ("requested", "alarm-1", None),
        ("started", "alarm-1", None),
        ("ended", "alarm-1", None),
    ]
    authorized_posts = [r for r in sim.requests if r.method == "POST" and r.authorized]
    assert [r.json for r in authorized_posts] == [
        {"reason": "alarm", "alarm_id": "alarm-1", "callee": "platform"}
    ]


async def test_client_calls_and_hang_up(sim: SimCamera) -> None:
    sim.call_duration_s = None
    async with client(sim) as camera:
        started = await camera.start_call("platform", None)
        assert started.state == "ringing"
        await camera.hang_up(started.call_id)
        state = await camera.call_state(started.call_id)
    assert (state.call_id, state.state, state.reason) == (started.call_id, "ended", "hung_up")
    assert [(r.method, r.path) for r in sim.requests if r.authorized][-2:] == [
        ("DELETE", f"/api/v1/calls/{started.call_id}"),
        ("GET", f"/api/v1/calls/{started.call_id}"),
    ]


async def test_busy_follows_the_running_call(sim: SimCamera) -> None:
    running = sim.begin_call()
    async with client(sim) as camera:
        with pytest.raises(CameraBusyError) as busy:
            await camera.start_call("alarm", "alarm-0")
        assert busy.value.call_id == running
        final, reports = await run_call(camera)
    assert final == "ended"
    assert [state for state, _, _ in reports] == ["requested", "started", "ended"]
    assert len(sim.calls) == 1  # no second call was started
    followed = {r.path for r in sim.requests if r.method == "GET" and r.authorized}
    assert followed == {f"/api/v1/calls/{running}"}


async def test_privacy_fails_without_retry(sim: SimCamera) -> None:
    sim.privacy_mode = True
    async with client(sim) as camera:
        final, reports = await run_call(camera)
        with pytest.raises(CameraPrivacyError):
            await camera.start_call("alarm", None)
    assert (final, reports) == ("failed", [("failed", "alarm-1", "privacy_mode")])
    assert sum(1 for r in sim.requests if r.method == "POST" and r.authorized) == 2
    assert sim.calls == {}


async def test_wrong_password_fails_once_without_hammering(sim: SimCamera) -> None:
    async with client(sim, password="wrong") as camera:
        final, reports = await run_call(camera)
        assert (final, reports) == ("failed", [("failed", "alarm-1", "unauthorized")])
        # One POST per attempt: Digest adds one challenge round trip (the first POST carries no
        # credentials), and exactly one POST carries them.
        assert len(posts(sim)) == 2
        assert sum(1 for a in posts(sim) if a is not None) == 1
        before = len(posts(sim))
        final, reports = await run_call(camera)  # a second attempt
        # httpx's DigestAuth reuses the cached challenge and, on 401, retries once with the
        # fresh nonce: still bounded, never a loop.
        assert 1 <= len(posts(sim)) - before <= 2
        with pytest.raises(CameraAuthError):
            await camera.status()
    assert (final, reports) == ("failed", [("failed", "alarm-1", "unauthorized")])
    assert not any(r.authorized for r in sim.requests)
    assert sim.calls == {}


async def test_503_twice_then_success(sim: SimCamera) -> None:
    sim.fail_next(2)
    async with client(sim) as camera:
        final, reports = await run_call(camera)
    assert final == "ended"
    assert [state for state, _, _ in reports] == ["requested", "started", "ended"]
    assert len(sim.calls) == 1


async def test_server_errors_exhaust_the_budget(sim: SimCamera) -> None:
    sim.fail_next(10_000)
    async with client(sim) as camera:
        with pytest.raises(CameraUnavailableError) as unavailable:
            await camera.status()
        assert unavailable.value.status == 503
        started = time.monotonic()
        final, reports = await run_call(camera, total_budget_s=0.5)
    assert (final, reports) == ("failed", [("failed", "alarm-1", "unavailable")])
    assert time.monotonic() - started < 1.5
    assert 2 <= len(posts(sim)) < 30  # retried with back-off, not hammered


async def test_hanging_camera_fails_within_budget(sim: SimCamera) -> None:
    sim.hang = True
    async with client(sim, timeout_s=0.2) as camera:
        with pytest.raises(CameraUnavailableError):
            await camera.status()
        started = time.monotonic()
        final, reports = await run_call(camera, total_budget_s=0.7)
    assert (final, reports) == ("failed", [("failed", "alarm-1", "unavailable")])
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize(
    "body", [b"<html>hello</html>", b"\xff\xfe", b"[1, 2]", b'{"call_id": null}', b'{"x": 1}']
)
async def test_garbage_gives_typed_errors(sim: SimCamera, body: bytes) -> None:
    sim.garbage = True
    sim.garbage_body = body
    async with client(sim) as camera:
        with pytest.raises(CameraProtocolError):
            await camera.status()
        with pytest.raises(CameraProtocolError):
            await camera.start_call("alarm", "alarm-1")
        final, reports = await run_call(camera)
    assert (final, reports) == ("failed", [("failed", "alarm-1", "protocol")])


async def test_garbage_while_following_fails(sim: SimCamera) -> None:
    sim.call_duration_s = None
    async with client(sim) as camera:
        task = asyncio.create_task(run_call(camera))
        async with asyncio.timeout(RUN_TIMEOUT_S):
            while not sim.calls:
                await asyncio.sleep(0.01)
        sim.garbage = True
        sim.garbage_body = b'{"call_id": "call-1", "state": "on fire"}'
        final, reports = await task
    assert final == "failed"
    assert reports[0][0] == "requested"
    assert reports[-1] == ("failed", "alarm-1", "protocol")


async def test_failed_call_reports_the_camera_reason(sim: SimCamera) -> None:
    sim.fail_calls_with = "no_answer"
    async with client(sim) as camera:
        final, reports = await run_call(camera)
    assert (final, reports) == (
        "failed",
        [("requested", "alarm-1", None), ("failed", "alarm-1", "no_answer")],
    )


async def test_https_with_the_right_pin() -> None:
    async with SimCamera(user=USER, password=PASSWORD, https=True, connect_delay_s=0.05) as sim:
        assert sim.base_url.startswith("https://")
        assert sim.fingerprint_sha256 is not None
        pin = ":".join(
            sim.fingerprint_sha256[i : i + 2] for i in range(0, 64, 2)
        ).upper()  # the installer's colon form
        async with HttpCamera(
            sim.base_url, user=USER, password=PASSWORD, fingerprint_sha256=pin
        ) as camera:
            assert (await camera.status()).model == "SimCam 1"
            sim.call_duration_s = 0.05
            final, reports = await run_call(camera)
    assert final == "ended"
    assert [state for state, _, _ in reports] == ["requested", "started", "ended"]
    assert any(r.authorized for r in sim.requests)


async def test_https_with_a_wrong_pin_sends_nothing() -> None:
    async with SimCamera(user=USER, password=PASSWORD, https=True) as sim:
        wrong = "00" * 32
        async with HttpCamera(
            sim.base_url, user=USER, password=PASSWORD, fingerprint_sha256=wrong
        ) as camera:
            with pytest.raises(CameraCertificateError) as refused:
                await camera.status()
            assert (refused.value.expected, refused.value.actual) == (
                wrong,
                sim.fingerprint_sha256,
            )
            final, reports = await run_call(camera)
    assert (final, reports) == ("failed", [("failed", "alarm-1", "certificate")])
    # The handshake was aborted: the camera never saw a request, so neither credentials nor body.
    assert sim.requests == []
    assert not any(r.authorization for r in sim.requests)


def test_config_errors() -> None:
    with pytest.raises(CameraConfigError):
        HttpCamera("https://127.0.0.1:1", user=USER, password=PASSWORD)
    with pytest.raises(CameraConfigError):
        HttpCamera("https://127.0.0.1:1", user=USER, password=PASSWORD, fingerprint_sha256="ab")
    with pytest.raises(CameraConfigError):
        HttpCamera("http://127.0.0.1:1", user=USER, password=PASSWORD, fingerprint_sha256="00" * 32)
    with pytest.raises(CameraConfigError):
        HttpCamera("ftp://127.0.0.1:1", user=USER, password=PASSWORD)


async def test_unexpected_statuses_with_mock_transport() -> None:
    answers = iter([httpx.Response(302), httpx.Response(409, json={"error": "busy"})])
    transport = httpx.MockTransport(lambda request: next(answers))
    async with HttpCamera(
        "http://camera.invalid", user=USER, password=PASSWORD, transport=transport
    ) as camera:
        with pytest.raises(CameraProtocolError):
            await camera.status()
        with pytest.raises(CameraProtocolError):
            await camera.start_call("alarm", None)


async def test_refused_connection_is_unavailable() -> None:
    async with SimCamera() as sim:
        url = sim.base_url
    async with HttpCamera(url, user=USER, password=PASSWORD, request_timeout_s=1.0) as camera:
        with pytest.raises(CameraUnavailableError):
            await camera.status()
