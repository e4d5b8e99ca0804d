"""``pgqrs message enqueue --priority --dedup-key --header --group``, and the fields shown."""

from __future__ import annotations

import json

from test_cli import as_json, pgqrs


def test_enqueue_with_options_and_see_them_in_get_and_archive(dsn: str) -> None:
    assert pgqrs("queue", "create", "jobs", dsn=dsn).returncode == 0
    first = as_json("message", "enqueue", "jobs", '{"n": 1}', "--priority", "5",
                    "--dedup-key", "order-42", "--header", "tenant=acme",
                    "--header", "traceparent=00-ab-cd-01", "--group", "customer-17", dsn=dsn)
    again = as_json("message", "enqueue", "jobs", '{"n": 2}', "--dedup-key", "order-42",
                    dsn=dsn)
    assert again == first  # the live message's id; nothing written
    got = as_json("message", "get", str(first["id"]), dsn=dsn)  # type: ignore[index]
    assert {k: got[k] for k in ("priority", "dedup_key", "group", "headers")} == {  # type: ignore[index]
        "priority": 5, "dedup_key": "order-42", "group": "customer-17",
        "headers": {"tenant": "acme", "traceparent": "00-ab-cd-01"}}
    table = pgqrs("message", "get", str(first["id"]), dsn=dsn)  # type: ignore[index]
    assert "customer-17" in table.stdout and "order-42" in table.stdout
    (claimed,) = as_json("message", "dequeue", "jobs", dsn=dsn)  # type: ignore[misc]
    assert claimed["group"] == "customer-17"
    assert as_json("message", "archive", str(first["id"]), dsn=dsn)["archived"] is True  # type: ignore[index]
    (archived,) = as_json("archive", "list", "--queue", "jobs", dsn=dsn)  # type: ignore[misc]
    assert archived["headers"] == {"tenant": "acme", "traceparent": "00-ab-cd-01"}
    assert (archived["priority"], archived["group"]) == (5, "customer-17")


def test_a_file_of_messages_in_one_group_keeps_its_order(dsn: str) -> None:
    assert pgqrs("queue", "create", "bulk", dsn=dsn).returncode == 0
    lines = "\n".join(json.dumps({"i": i}) for i in range(3))
    result = pgqrs("message", "enqueue", "bulk", "--file", "-", "--group", "g", "--priority",
                   "2", "--format", "json", dsn=dsn, stdin=lines)
    assert result.returncode == 0, result.stderr
    claimed = as_json("message", "dequeue", "bulk", "--limit", "10", dsn=dsn)
    assert [m["payload"] for m in claimed] == [{"i": 0}]  # type: ignore[union-attr,index]
    refused = pgqrs("message", "enqueue", "bulk", "--file", "-", "--dedup-key", "k", dsn=dsn,
                    stdin=lines)
    assert refused.returncode == 1 and "--dedup-key" in refused.stderr


def test_bad_options_are_usage_or_validation_errors(dsn: str) -> None:
    assert pgqrs("queue", "create", "jobs", dsn=dsn).returncode == 0
    bad_header = pgqrs("message", "enqueue", "jobs", "{}", "--header", "novalue", dsn=dsn)
    assert bad_header.returncode == 2 and "name=value" in bad_header.stderr
    bad_priority = pgqrs("message", "enqueue", "jobs", "{}", "--priority", "99999", dsn=dsn)
    assert bad_priority.returncode == 1 and "priority" in bad_priority.stderr
