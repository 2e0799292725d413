"""A fake Discord for the tests and benchmarks, and the real bot run against it."""

from tests.support.discord.server import FakeDiscord
from tests.support.discord.wire import EPHEMERAL, Record, buttons

__all__ = ["EPHEMERAL", "FakeDiscord", "Record", "buttons"]
