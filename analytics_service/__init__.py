"""Visitor analytics service: live counters in Redis, durable history in SQL."""
