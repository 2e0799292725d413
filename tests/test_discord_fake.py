"""The fake Discord itself: an unmodified discord.py client logs in, talks and is observed."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import discord
import pytest
import yarl
from discord import app_commands

from tests.support.discord import EPHEMERAL, FakeDiscord, buttons


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    server = FakeDiscord()
    await server.start()
    monkeypatch.setattr(discord.http.Route, "BASE", server.api_base)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(server.gateway_url))
    yield server
    await server.stop()


class EchoClient(discord.Client):
    """Replies to "ping" with a file, and answers a slash command and a button."""

    def __init__(self, message_content: bool) -> None:
        intents = discord.Intents.default()
        intents.message_content = message_content
        super().__init__(intents=intents, guild_ready_timeout=0.1)
        self.tree = app_commands.CommandTree(self)
        self.ready = asyncio.Event()
        self.seen: list[discord.Message] = []

        @self.tree.command(name="hello", description="Say hello")
        async def hello(interaction: discord.Interaction, name: str) -> None:
            view = discord.ui.View()
            view.add_item(discord.ui.Button(label="Again", custom_id="again"))
            await interaction.response.send_message(f"hello {name}", view=view)

    async def setup_hook(self) -> None:
        await self.tree.sync()

    async def on_ready(self) -> None:
        self.ready.set()

    async def on_message(self, message: discord.Message) -> None:
        if message.author.bot:
            return
        self.seen.append(message)
        if message.attachments:
            data = await message.attachments[0].read()
            await message.reply(
                f"got {len(data)} bytes",
                file=discord.File(io.BytesIO(data[::-1]), "reversed.bin"),
                allowed_mentions=discord.AllowedMentions.none(),
            )

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        if interaction.data and interaction.data.get("custom_id") == "again":
            await interaction.response.send_message("again!", ephemeral=True)


async def _run(client: EchoClient, fake: FakeDiscord) -> asyncio.Task[None]:
    task = asyncio.create_task(client.start(fake.token))
    await asyncio.wait_for(client.ready.wait(), 15)
    return task


async def _close(client: EchoClient, task: asyncio.Task[None]) -> None:
    await client.close()
    await asyncio.wait_for(task, 10)


async def test_login_message_file_reply_and_interactions(fake: FakeDiscord) -> None:
    client = EchoClient(message_content=True)
    task = await _run(client, fake)
    try:
        assert client.user is not None
        assert client.user.id == int(fake.bot_user["id"])
        guild = client.get_guild(int(fake.guild_id))
        assert guild is not None
        assert {c.name for c in guild.text_channels} == {"general", "edits", "random"}
        moderator = guild.get_role(int(fake.moderator_role["id"]))
        assert moderator is not None
        assert moderator.permissions.manage_guild

        channel_id = fake.channels["general"]["id"]
        sent = await fake.send_message("alice", channel_id, "look", files=[("a.bin", b"abc")])
        reply = await fake.wait_for_message(
            lambda m: m.get("message_reference", {}).get("message_id") == sent["id"]
        )
        assert reply["content"] == "got 3 bytes"
        assert fake.attachment_bytes(reply["attachments"][0]) == b"cba"
        assert reply["allowed_mentions"] == {"parse": []}

        await fake.slash_command("bob", channel_id, "hello", {"name": "Bob"})
        answer = await fake.wait_for_message(lambda m: m["content"] == "hello Bob")
        await fake.click("bob", answer, buttons(answer)["Again"])
        again = await fake.wait_for_message(lambda m: m["content"] == "again!")
        assert again["flags"] & EPHEMERAL
    finally:
        await _close(client, task)


async def test_without_message_content_intent_content_is_blank_unless_mentioned(fake: FakeDiscord) -> None:
    client = EchoClient(message_content=False)
    task = await _run(client, fake)
    try:
        channel_id = fake.channels["general"]["id"]
        await fake.send_message("alice", channel_id, "hidden words")
        await fake.send_message("alice", channel_id, "visible words", mention_bot=True)
        for _ in range(100):
            if len(client.seen) == 2:
                break
            await asyncio.sleep(0.02)
        assert [m.content for m in client.seen] == ["", f"<@{fake.bot_user['id']}> visible words"]
    finally:
        await _close(client, task)


async def test_injected_failures_are_retried_by_discord_py(fake: FakeDiscord) -> None:
    client = EchoClient(message_content=True)
    task = await _run(client, fake)
    try:
        channel = client.get_channel(int(fake.channels["general"]["id"]))
        assert isinstance(channel, discord.TextChannel)
        fake.fail_next("POST", r"/channels/\d+/messages$", status=429, retry_after=0.05)
        await channel.send("after a rate limit")
        assert [r.result for r in fake.records("failed")] == [{"status": 429}]
        await fake.wait_for_message(lambda m: m["content"] == "after a rate limit")

        fake.fail_next(
            "POST", r"/channels/\d+/messages$", status=403, body={"message": "Missing Access", "code": 50001}
        )
        with pytest.raises(discord.Forbidden):
            await channel.send("never arrives")
        too_big = discord.File(io.BytesIO(b"x" * (fake.upload_limit + 1)), "big.bin")
        with pytest.raises(discord.HTTPException) as error:
            await channel.send(file=too_big)
        assert error.value.status == 413
    finally:
        await _close(client, task)


async def test_privileged_intent_not_granted_closes_the_gateway() -> None:
    fake = FakeDiscord(grant_message_content=False)
    await fake.start()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(discord.http.Route, "BASE", fake.api_base)
            patch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url))
            client = EchoClient(message_content=True)
            with pytest.raises(discord.PrivilegedIntentsRequired):
                await asyncio.wait_for(client.start(fake.token), 15)
            await client.close()
    finally:
        await fake.stop()
