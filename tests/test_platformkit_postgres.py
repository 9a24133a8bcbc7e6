"""The rig's PostgreSQL launcher: its own directory and port, a crash keeps what was committed,
and nothing is left behind."""

from __future__ import annotations

import os

import psycopg

from hil.sim.postgres import Postgres


def test_a_killed_server_keeps_what_was_committed_and_close_leaves_nothing() -> None:
    server = Postgres()
    with server:
        assert server.port != 5432
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (n integer)")
            conn.execute("INSERT INTO t VALUES (1)")
        if os.geteuid() == 0:  # initdb refuses root: the server runs as another user
            assert server.data_dir.stat().st_uid != 0
        pid = server.pid
        server.kill()
        assert not server.running
        server.start()  # recovers from the WAL
        assert server.pid != pid
        with psycopg.connect(server.dsn) as conn:
            assert conn.execute("SELECT n FROM t").fetchall() == [(1,)]
        other = server.create_database("other")
        with psycopg.connect(other) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("other",)
    assert not server.running
    assert not server.workdir.exists()
