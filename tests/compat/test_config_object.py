"""``pgqrs.Config`` and ``Admin(config)``: the original binding's configuration style."""

from __future__ import annotations

import math

import asyncpg
import pytest

import pgqrs
from pgqrs import Admin, Config, ConfigurationError, Consumer, Producer, QueuePolicy, Settings

FIELDS = {
    "schema": "jobs",
    "max_connections": 42,
    "connection_timeout_seconds": 60,
    "default_lock_time_seconds": 120,
    "default_max_batch_size": 500,
    "max_read_ct": 10,
    "heartbeat_interval_seconds": 15,
}


def test_fields_are_settable_and_read_back() -> None:
    config = pgqrs.Config.from_dsn("postgresql://localhost/mydb")
    for name, value in FIELDS.items():
        setattr(config, name, value)
        assert getattr(config, name) == value
    with pytest.raises(AttributeError):
        config.max_conections = 5  # type: ignore[attr-defined]  # a typo fails loudly


def test_defaults_are_pgqrs_defaults() -> None:
    config = Config.from_dsn("postgresql://localhost/mydb")
    settings = Settings()
    assert config.schema == settings.schema
    assert config.max_connections == settings.pool_size
    assert config.connection_timeout_seconds == settings.connect_timeout
    assert config.heartbeat_interval_seconds == settings.heartbeat_interval
    admin = Admin("postgresql://localhost/mydb")
    # The two queue rules are the defaults of the queues an Admin creates.
    assert config.max_read_ct == admin.max_read_ct == QueuePolicy().max_read_ct
    assert config.default_lock_time_seconds == admin.settings.visibility_timeout
    consumer = Consumer("postgresql://localhost/mydb", "q", "h", 1)
    assert (consumer.visibility_timeout, consumer.max_read_ct) == (None, None)  # the queue's


def test_from_dsn_ignores_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGQRS_SCHEMA", "from_env")
    monkeypatch.setenv("PGQRS_HEARTBEAT_INTERVAL", "9")
    admin = Admin(Config.from_dsn("postgresql://localhost/mydb"))
    assert (admin.schema, admin.settings.heartbeat_interval) == ("public", 5.0)


def test_repr_hides_the_password() -> None:
    config = Config.from_dsn("postgresql://alice:s3cret@db.example/app")
    assert "s3cret" not in repr(config)
    assert "alice" in repr(config) and "heartbeat_interval_seconds=" in repr(config)


@pytest.mark.parametrize("dsn", [None, 5, ""])
def test_from_dsn_needs_a_string(dsn: object) -> None:
    with pytest.raises(ConfigurationError, match="DSN string"):
        Config.from_dsn(dsn)  # type: ignore[arg-type]


def test_admin_maps_every_field() -> None:
    config = Config.from_dsn("postgresql://localhost/mydb")
    for name, value in FIELDS.items():
        setattr(config, name, value)
    admin = Admin(config)
    s = admin.settings
    assert (s.schema, s.pool_size, s.connect_timeout, s.heartbeat_interval) == ("jobs", 42, 60, 15)
    assert (admin.max_read_ct, s.visibility_timeout) == (10, 120)  # of the queues it creates
    consumer = Consumer(admin, "q", "h", 1)
    assert consumer.visibility_timeout is None  # it follows its queue's
    assert consumer.settings is admin.settings
    assert Consumer(admin, "q", "h", 2, visibility_timeout=7).visibility_timeout == 7


def test_admin_keywords_override_the_config() -> None:
    config = Config.from_dsn("postgresql://localhost/mydb")
    config.schema, config.max_read_ct = "jobs", 10
    admin = Admin(config, schema="other", max_read_ct=3, heartbeat_interval=2)
    assert (admin.schema, admin.max_read_ct, admin.settings.heartbeat_interval) == ("other", 3, 2)


@pytest.mark.parametrize("field", ["max_connections", "default_max_batch_size", "max_read_ct"])
@pytest.mark.parametrize("value", [0, -1, 2.5, "5", True, None])
def test_bad_counts_are_refused_when_used(field: str, value: object) -> None:
    config = Config.from_dsn("postgresql://localhost/mydb")
    setattr(config, field, value)  # accepted here, as in the original...
    with pytest.raises(ConfigurationError, match=rf"Config\.{field} must be a positive integer"):
        Admin(config)  # ...and refused, naming the field, when the Admin is built


@pytest.mark.parametrize("field", ["connection_timeout_seconds", "default_lock_time_seconds",
                                   "heartbeat_interval_seconds"])
@pytest.mark.parametrize("value", [0, -1, math.nan, math.inf, "5", False])
def test_bad_durations_are_refused_when_used(field: str, value: object) -> None:
    config = Config.from_dsn("postgresql://localhost/mydb")
    setattr(config, field, value)
    with pytest.raises(ConfigurationError, match=rf"Config\.{field} must be a positive"):
        Admin(config)


def test_bad_schema_and_dsn_are_refused_when_used() -> None:
    config = Config.from_dsn("postgresql://localhost/mydb")
    config.schema = "x; DROP TABLE y"
    with pytest.raises(ConfigurationError, match="Invalid schema name"):
        Admin(config)
    with pytest.raises(ConfigurationError, match="Unsupported DSN scheme"):
        Admin(Config.from_dsn("mysql://localhost/mydb"))


async def test_admin_from_config_end_to_end(dsn: str) -> None:
    config = Config.from_dsn(dsn)
    config.schema = "compat_cfg"
    config.max_connections = 5
    config.default_lock_time_seconds = 45
    config.heartbeat_interval_seconds = 2
    async with Admin(config) as admin:
        await admin.install()
        await admin.verify()
        await admin.create_queue("cfg")
        async with (Producer(admin, "cfg", "prod_conf", 1) as producer,
                    Consumer(admin, "cfg", "cons_conf", 1) as consumer):
            mid = await producer.enqueue({"key": "val"})
            (message,) = await consumer.dequeue()
            assert (message.id, message.payload) == (mid, {"key": "val"})
            assert message.vt is not None and message.dequeued_at is not None
            assert math.isclose((message.vt - message.dequeued_at).total_seconds(), 45,
                                abs_tol=1)
            assert producer.settings.heartbeat_interval == 2
    conn = await asyncpg.connect(dsn.replace("postgresql+asyncpg", "postgresql"))
    try:  # everything went to the Config's schema
        assert await conn.fetchval("SELECT count(*) FROM compat_cfg.pgqrs_messages") == 1
        assert await conn.fetchval("SELECT count(*) FROM public.pgqrs_messages") == 0
    finally:
        await conn.close()
