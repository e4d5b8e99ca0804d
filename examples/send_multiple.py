"""Seed example "Sending Multiple Messages", unchanged apart from the DSN and a main()."""

from __future__ import annotations

import asyncio
import os

from pgqrs import Admin, Producer

DSN = os.environ.get("PGQRS_DSN", "postgresql://localhost/mydb")


async def send_batch_emails(producer, emails):
    """Send multiple messages one at a time."""
    message_ids = []

    for email in emails:
        msg_id = await producer.enqueue({
            "type": "email",
            "to": email["to"],
            "subject": email["subject"],
            "body": email["body"]
        })
        message_ids.append(msg_id)

    return message_ids


async def main():
    await Admin(DSN).create_queue("emails")
    producer = Producer(DSN, "emails", "email-sender", 3001)
    # Usage
    emails = [
        {"to": "user1@example.com", "subject": "Hello", "body": "..."},
        {"to": "user2@example.com", "subject": "Hello", "body": "..."},
    ]
    ids = await send_batch_emails(producer, emails)
    print(f"Sent {len(ids)} emails")

asyncio.run(main())
