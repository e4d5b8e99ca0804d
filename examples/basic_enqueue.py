"""Seed example "Basic Enqueue" (docs: Producer, Python), unchanged apart from the DSN."""

from __future__ import annotations

import asyncio
import os

from pgqrs import Admin, Producer

DSN = os.environ.get("PGQRS_DSN", "postgresql://localhost/mydb")


async def main():
    # Setup
    admin = Admin(DSN)
    await admin.create_queue("notifications")

    # Create producer
    producer = Producer(
        DSN,
        "notifications",
        "notification-service",
        3000,
    )

    # Send message
    msg_id = await producer.enqueue({
        "type": "email",
        "to": "user@example.com",
        "subject": "Hello!"
    })

    print(f"Sent notification: {msg_id}")

asyncio.run(main())
