"""Seed pattern "Error Handling": retry on RuntimeError (every pgqrs error is one)."""

from __future__ import annotations

import asyncio
import os

from pgqrs import Admin, Producer

DSN = os.environ.get("PGQRS_DSN", "postgresql://localhost/mydb")


async def safe_enqueue(producer, payload, max_retries=3):
    """Enqueue with retry logic."""
    for attempt in range(max_retries):
        try:
            return await producer.enqueue(payload)
        except RuntimeError as e:
            if attempt == max_retries - 1:
                raise
            print(f"Attempt {attempt + 1} failed: {e}")
            await asyncio.sleep(1 * (attempt + 1))  # Exponential backoff


async def main():
    await Admin(DSN).create_queue("jobs")
    producer = Producer(DSN, "jobs", "retrying-producer", 3002)
    print(f"Enqueued: {await safe_enqueue(producer, {'job': 'resize', 'id': 7})}")
    # A payload pgqrs rejects raises ValidationError, a RuntimeError: retried, then re-raised.
    try:
        await safe_enqueue(producer, {"bad": float("nan")}, max_retries=2)
    except RuntimeError as e:
        print(f"Gave up: {type(e).__name__}")

asyncio.run(main())
