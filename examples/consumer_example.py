"""Consumer and Admin full example: drain the "tasks" queue the Full Example filled."""

from __future__ import annotations

import asyncio
import os

from pgqrs import Admin, Consumer


async def main():
    dsn = os.environ.get("PGQRS_DSN", "postgresql://localhost/mydb")
    admin = Admin(dsn)

    async with Consumer(dsn, "tasks", "consumer-1", 4000, visibility_timeout=30) as consumer:
        while messages := await consumer.dequeue(limit=10):
            for message in messages:
                print(f"Processing {message.id}: {message.payload}")
            archived = await consumer.archive_batch([m.id for m in messages])
            print(f"Archived {sum(archived)} of {len(messages)}")

    metrics = await admin.queue_metrics("tasks")
    print(f"pending={metrics.pending_messages} archived={metrics.archived_messages}")
    print(f"workers: {(await admin.system_stats()).workers_by_status}")
    await admin.close()

if __name__ == "__main__":
    asyncio.run(main())
