"""Seed "Full Example", unchanged apart from the DSN."""

from __future__ import annotations

import asyncio
import os

from pgqrs import Admin, Producer


async def main():
    dsn = os.environ.get("PGQRS_DSN", "postgresql://localhost/mydb")

    # Setup
    admin = Admin(dsn)
    await admin.install()
    await admin.create_queue("tasks")

    # Create producer
    producer = Producer(dsn, "tasks", "producer-1", 3000)

    # Send immediate messages
    for i in range(5):
        msg_id = await producer.enqueue({
            "task_id": i,
            "action": "process",
            "data": {"value": i * 10}
        })
        print(f"Sent task {i}: message ID {msg_id}")

    print("\nAll messages sent!")

if __name__ == "__main__":
    asyncio.run(main())
