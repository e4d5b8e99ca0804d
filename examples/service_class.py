"""Seed pattern "Producer Service Class", unchanged apart from the DSN."""

from __future__ import annotations

import asyncio
import os

from pgqrs import Admin, Producer

DSN = os.environ.get("PGQRS_DSN", "postgresql://localhost/mydb")


class NotificationService:
    def __init__(self, dsn: str):
        self.producer = Producer(dsn, "notifications", "notification-svc", 3000)

    async def send_welcome_email(self, user_id: int, email: str):
        return await self.producer.enqueue({
            "type": "welcome_email",
            "user_id": user_id,
            "email": email
        })

    async def send_password_reset(self, user_id: int, token: str):
        return await self.producer.enqueue({
            "type": "password_reset",
            "user_id": user_id,
            "token": token
        })

    async def send_notification(self, user_id: int, message: str):
        return await self.producer.enqueue({
            "type": "push_notification",
            "user_id": user_id,
            "message": message
        })

# Usage
async def main():
    await Admin(DSN).create_queue("notifications")
    notifications = NotificationService(DSN)

    # Send various notifications
    await notifications.send_welcome_email(123, "user@example.com")
    await notifications.send_notification(123, "Your order shipped!")
    print("Sent 2 notifications")

asyncio.run(main())
