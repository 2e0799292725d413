"""Gateway events and application commands: each one only relays to ``flows.Relay`` or the service.

Errors raised here go to the tree's error handler (``bot.py``), which uses the one error
policy of ``errors.py``.
"""

from __future__ import annotations

from typing import Any, Literal

import discord
from discord import app_commands
from discord.ext import commands

from handlers.discord import render
from handlers.discord.errors import NO_MENTIONS, BadRequest
from handlers.discord.flows import Relay
from handlers.discord.preferences import Preferences, channel_place
from sessions import EditService, EditSettings, Place

_LIMITS = EditSettings.LIMITS
# Option ranges of /settings defaults, the same as the engine accepts.
Steps = app_commands.Range[int, int(_LIMITS["steps"][0]), int(_LIMITS["steps"][1])]
GuidanceScale = app_commands.Range[float, _LIMITS["guidance_scale"][0], _LIMITS["guidance_scale"][1]]
AttentionGuidance = app_commands.Range[
    float, _LIMITS["cross_attention_guidance"][0], _LIMITS["cross_attention_guidance"][1]
]
Strength = app_commands.Range[float, _LIMITS["direction_strength"][0], _LIMITS["direction_strength"][1]]
Captions = app_commands.Range[int, int(_LIMITS["num_captions"][0]), int(_LIMITS["num_captions"][1])]


class MessageEvents(commands.Cog):
    """Messages: new edits (image + instruction), replies to results, undo."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        await self.relay.on_message(message)


def _settings_place(interaction: discord.Interaction) -> Place:
    """Settings belong to a channel; in a thread they are its parent channel's."""
    channel = interaction.channel
    channel_id = channel.parent_id if isinstance(channel, discord.Thread) else interaction.channel_id
    assert channel_id is not None
    return channel_place(interaction.guild_id, channel_id)


class EditCommands(commands.Cog):
    """/edit, /history, /help, /settings and the "Edit image" message menu."""

    settings = app_commands.Group(
        name="settings",
        description="Channel defaults, edit channels and the safety check (Manage Server)",
        guild_only=True,
        default_permissions=discord.Permissions(manage_guild=True),
    )

    def __init__(
        self,
        bot: commands.Bot,
        relay: Relay,
        service: EditService,
        preferences: Preferences,
        message_content: bool,
    ) -> None:
        self.bot = bot
        self.relay = relay
        self.service = service
        self.preferences = preferences
        self.message_content = message_content
        self.edit_menu = app_commands.ContextMenu(name="Edit image", callback=self.edit_image_menu)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.edit_menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.edit_menu.name, type=self.edit_menu.type)

    @app_commands.command(name="edit", description="Edit an image with an instruction")
    @app_commands.describe(image="The image to edit", instruction="What to change, e.g. make it snowy")
    async def edit(
        self, interaction: discord.Interaction, image: discord.Attachment, instruction: str
    ) -> None:
        await self.relay.edit_command(interaction, image, instruction)

    async def edit_image_menu(self, interaction: discord.Interaction, message: discord.Message) -> None:
        await self.relay.open_modal(interaction, message)

    @app_commands.command(name="history", description="Show how a result came to be, step by step")
    @app_commands.describe(message="A link to (or the id of) one of my results; default: the latest here")
    async def history(self, interaction: discord.Interaction, *, message: str | None = None) -> None:
        await self.relay.history(interaction, message)

    @app_commands.command(name="help", description="How to edit images with this bot")
    async def help(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(
            render.fit(render.help_text(self.message_content)), ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    def _settings_summary(self, interaction: discord.Interaction) -> str:
        assert interaction.guild_id is not None
        place = _settings_place(interaction)
        return render.fit(
            render.settings_text(
                self.service.channel_settings(place),
                self.service.channel_policy(place),
                self.preferences.edit_channels(interaction.guild_id),
                self.preferences.safety_check(interaction.guild_id),
            )
        )

    @settings.command(name="show", description="Show this channel's settings")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def settings_show(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(
            self._settings_summary(interaction), ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    @settings.command(name="defaults", description="Change the edit settings of this channel")
    @app_commands.describe(
        steps="Diffusion steps (more: slower, finer)",
        guidance_scale="How strongly the edit follows the captions",
        attention_guidance="How strongly the layout of the original is kept",
        strength="How far the edit goes",
        captions="Captions the language model writes per side",
        template="Prompt template of the language model",
        caption_lock="Start the before-captions with the image's own caption",
        reset="Go back to the bot's defaults first",
    )
    @app_commands.checks.has_permissions(manage_guild=True)
    async def settings_defaults(
        self,
        interaction: discord.Interaction,
        *,
        steps: Steps | None = None,
        guidance_scale: GuidanceScale | None = None,
        attention_guidance: AttentionGuidance | None = None,
        strength: Strength | None = None,
        captions: Captions | None = None,
        template: str | None = None,
        caption_lock: bool | None = None,
        reset: bool = False,
    ) -> None:
        place = _settings_place(interaction)
        changes: dict[str, Any] = {
            "steps": steps,
            "guidance_scale": guidance_scale,
            "cross_attention_guidance": attention_guidance,
            "direction_strength": strength,
            "num_captions": captions,
            "template": template,
            "caption_lock": caption_lock,
        }
        chosen = {name: value for name, value in changes.items() if value is not None}
        if not chosen and not reset:
            raise BadRequest(
                "Give at least one setting to change, or `reset: True` to go back to the defaults."
            )
        # One update: with reset, a refused value (e.g. an unknown template) must not leave the
        # channel reset while the user is told that nothing changed.
        update = {**dict.fromkeys(changes), **chosen} if reset else chosen
        settings = await self.service.update_channel_settings(place, **update)
        summary = render.settings_line(settings)
        await interaction.response.send_message(
            render.fit(f"⚙️ <@{interaction.user.id}> changed the settings of this channel: {summary}"),
            allowed_mentions=NO_MENTIONS,
        )

    @settings.command(name="steering", description="Who may press result buttons, previews, chain mode")
    @app_commands.describe(
        requester_only="Only the requester (and moderators) may press a result's buttons",
        previews="Show the edit forming on the status message",
        chain="reinvert: each turn inverts the last result; compose: no drift over long chains",
    )
    @app_commands.checks.has_permissions(manage_guild=True)
    async def settings_steering(
        self,
        interaction: discord.Interaction,
        *,
        requester_only: bool | None = None,
        previews: bool | None = None,
        chain: Literal["reinvert", "compose"] | None = None,
    ) -> None:
        changes = {"requester_only": requester_only, "previews": previews, "chain": chain}
        chosen = {name: value for name, value in changes.items() if value is not None}
        if not chosen:
            raise BadRequest("Give at least one of requester_only, previews or chain to change.")
        policy = await self.service.update_channel_policy(_settings_place(interaction), **chosen)
        await interaction.response.send_message(
            render.fit(f"⚙️ <@{interaction.user.id}> changed this channel: {render.policy_line(policy)}"),
            allowed_mentions=NO_MENTIONS,
        )

    @settings.command(
        name="edit_channel", description="Make a channel one where every image with text is edited"
    )
    @app_commands.describe(channel="The channel (default: this one)", enabled="Edit channel or not")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def settings_edit_channel(
        self, interaction: discord.Interaction, *, enabled: bool, channel: discord.TextChannel | None = None
    ) -> None:
        assert interaction.guild_id is not None
        assert interaction.channel_id is not None
        channel_id = channel.id if channel is not None else _settings_place(interaction).channel_id
        await self.preferences.set_edit_channel(interaction.guild_id, int(channel_id), enabled)
        state = "is now an edit channel" if enabled else "is no longer an edit channel"
        note = (
            ""
            if self.message_content
            else " (this bot runs without the message content intent, so it still needs a mention)"
        )
        await interaction.response.send_message(
            f"⚙️ <#{channel_id}> {state}{note}.", allowed_mentions=NO_MENTIONS
        )

    @settings.command(name="safety_check", description="Check results with the safety checker before posting")
    @app_commands.checks.has_permissions(manage_guild=True)
    async def settings_safety(self, interaction: discord.Interaction, *, enabled: bool) -> None:
        assert interaction.guild_id is not None
        if self.preferences.safety_check(interaction.guild_id) is None:
            raise BadRequest(
                "This bot has no safety checker (its `discord.safety_model` is empty), so results "
                "can't be checked here. Ask the bot's operator to configure one."
            )
        await self.preferences.set_safety_check(interaction.guild_id, enabled)
        state = "on" if enabled else "off"
        await interaction.response.send_message(
            f"⚙️ The safety check of results is now {state} in this server.", allowed_mentions=NO_MENTIONS
        )
