"""Ids of the things the bot records (versions, jobs, conversations)."""

from __future__ import annotations

import secrets

_ID_ALPHABET = "23456789abcdefghjkmnpqrstuvwxyz"  # no 0/o, 1/l/i: easy to read back and type


def new_id(length: int = 10) -> str:
    """A short URL-safe random id (about 50 bits) that fits in a Discord custom_id."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))
