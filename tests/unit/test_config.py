"""Settings, DSN parsing, redaction and payload validation: no database needed."""

from __future__ import annotations

import pytest

import pgqrs
from pgqrs import ConfigurationError, Producer, Settings, ValidationError, _dsn, _validation


def test_public_api_is_curated() -> None:
    exported = sorted(n for n in dir(pgqrs) if not n.startswith("_") and n[0].isupper())
    assert sorted(n for n in pgqrs.__all__ if n[0].isupper()) == exported
    assert pgqrs.__all__ == sorted(pgqrs.__all__)
    assert issubclass(pgqrs.PgqrsError, RuntimeError)
    assert issubclass(pgqrs.DatabaseUnavailableError, ConnectionError)


@pytest.mark.parametrize("schema", ["public", "jobs", "_x1"])
def test_valid_schemas(schema: str) -> None:
    assert Settings(schema=schema).schema == schema


@pytest.mark.parametrize("schema", ["", "1abc", 'x"; DROP TABLE y; --', "a b", "ü", "x" * 64])
def test_invalid_schemas_are_rejected(schema: str) -> None:
    with pytest.raises(ConfigurationError, match="Invalid schema name"):
        Settings(schema=schema)


def test_options_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGQRS_SCHEMA", "jobs")
    monkeypatch.setenv("PGQRS_POOL_SIZE", "7")
    monkeypatch.setenv("PGQRS_PGBOUNCER", "true")
    settings = Settings.build(pool_size=3)
    assert (settings.schema, settings.pool_size, settings.pgbouncer) == ("jobs", 3, True)
    monkeypatch.setenv("PGQRS_HEARTBEAT_INTERVAL", "fast")
    with pytest.raises(ConfigurationError, match="PGQRS_HEARTBEAT_INTERVAL"):
        Settings.build()


def test_unknown_and_bad_options() -> None:
    with pytest.raises(ConfigurationError, match="Unknown option"):
        Settings.build(pool_sise=3)
    with pytest.raises(ConfigurationError, match="pool_size"):
        Settings.build(pool_size=0)
    with pytest.raises(ConfigurationError, match="heartbeat_interval"):
        Settings.build(heartbeat_interval=-1)


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://u:p@h:5433/db", "postgresql://u:p@h:5433/db"),
        ("postgres://u@h/db", "postgresql://u@h/db"),
        ("postgresql+asyncpg://u@h/db?sslmode=require", "postgresql://u@h/db?sslmode=require"),
        ("postgresql://u@/db?host=/var/run/pg", "postgresql://u@/db?host=%2Fvar%2Frun%2Fpg"),
    ],
)
def test_dsn_forms(dsn: str, expected: str) -> None:
    assert _dsn.parse(dsn).libpq_url == expected


def test_connect_timeout_is_client_side() -> None:
    parsed = _dsn.parse("postgresql://u@h/db?connect_timeout=3&application_name=x")
    assert parsed.connect_timeout == 3.0
    assert parsed.libpq_url == "postgresql://u@h/db?application_name=x"


@pytest.mark.parametrize("dsn", ["", "mysql://u:secret@h/db", "not a url", "postgresql://h:x/db"])
def test_bad_dsns(dsn: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Producer(dsn, "q", "h", 1)
    assert "secret" not in str(info.value)


def test_redaction() -> None:
    assert _dsn.redact("postgresql://user:s3cret@host/db") == "postgresql://user:***@host/db"
    assert "s3cret" not in _dsn.redact("host=x password=s3cret user=y")
    assert "s3cret" not in repr(_dsn.parse("postgresql://user:s3cret@host/db"))


@pytest.mark.parametrize(
    ("hostname", "port"),
    [("", 1), ("h", -1), ("h", 70000), ("h", True), (None, 1), ("h\n", 1), ("x" * 300, 1)],
)
def test_bad_worker_identities(hostname: object, port: object) -> None:
    with pytest.raises(ValidationError):
        Producer("postgresql://u@h/db", "q", hostname, port)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "   ", "x" * 256, "tab\there", 3])
def test_bad_queue_names(name: object) -> None:
    with pytest.raises(ValidationError):
        _validation.queue_name(name)


def test_payload_encoding_is_compact_and_unicode() -> None:
    encoded = _validation.encode_payload({"a": "é", "b": [1, 2.5, None, True]},
                                         max_bytes=100, max_depth=5)
    assert encoded == '{"a":"é","b":[1,2.5,null,true]}'
