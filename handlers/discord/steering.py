"""The flows that let people steer an edit: fix its captions, ask for variations and pick one,
delete it, and (per channel) keep its buttons to the person who asked.

:class:`flows.Relay` hands these buttons and modals over here; the service decides what is
allowed and what runs, as for every other flow.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import discord

from handlers.discord import intake, render
from handlers.discord.delivery import Delivery, Received, respond_with_image
from handlers.discord.errors import NO_MENTIONS, BadRequest
from handlers.discord.links import Links
from handlers.discord.views import FixCaptionsModal, result_view
from sessions import Author, EditService, Place, Version

#: Answers an interaction with a job's status message (``Relay._respond_received``).
Respond = Callable[[discord.Interaction, Author, str], Awaitable[Received]]
#: Where an interaction's request is made (``Relay.place_of``): the service checks against it.
PlaceOf = Callable[[discord.Interaction], Place]
#: Buttons anyone may press even where only the requester may steer: they change nothing.
READ_ONLY = frozenset({"captions"})


class Steering:
    """Fix captions, Variations and their picks, Delete, and who may press a result's buttons."""

    def __init__(
        self, service: EditService, delivery: Delivery, links: Links, respond: Respond, place_of: PlaceOf
    ) -> None:
        self._service = service
        self._delivery = delivery
        self._links = links
        self._respond = respond
        self._place_of = place_of

    def check_may_press(self, author: Author, version: Version, action: str) -> None:
        """Where the channel keeps buttons to the requester, refuse anyone else but moderators."""
        if action not in READ_ONLY:
            self._check_requester(author, version.author_id, version)

    def _check_requester(self, author: Author, requester_id: str, version: Version) -> None:
        if author.is_moderator or author.id == requester_id:
            return
        if self._service.channel_policy(self._service.place_of(version)).requester_only:
            raise BadRequest(
                f"In this channel only <@{requester_id}>, who asked for this edit, "
                "or a moderator can use its buttons."
            )

    async def variations(self, interaction: discord.Interaction, version: Version) -> None:
        """The Variations button: alternatives of this edit, posted as one numbered grid."""
        author = intake.author_of_interaction(interaction)
        self._service.check_admission(author)
        received = await self._respond(interaction, author, version.instruction or "")
        place = self._place_of(interaction)
        await self._delivery.submit(received, self._service.variations, version.id, author, place=place)

    async def pick(self, interaction: discord.Interaction, job_id: str, number: int) -> None:
        """A number under a grid: that variation becomes a version, posted with its buttons."""
        place = self._place_of(interaction)
        made = self._service.variation_set(job_id, place=place)
        author = intake.author_of_interaction(interaction)
        source = self._service.get_version(made.source_version_id, place=place)
        self._check_requester(author, made.requester_id, source)
        await interaction.response.defer(thinking=True)
        version = await self._service.pick_variation(job_id, number, author, place=place)
        assert interaction.channel_id is not None
        async with self._links.posting_in(interaction.channel_id):
            png = self._service.image_png(version.id, place=place)
            text = render.with_note(
                render.result_text(version), f"variation {number}, picked by <@{author.id}>"
            )
            shown = await respond_with_image(
                interaction, png, f"edit-{version.id}", text, result_view(version)
            )
            await self._links.link(shown.id, version.id)

    async def open_fix(self, interaction: discord.Interaction, version: Version) -> None:
        """The Fix captions button: a modal with the before and after captions, one per line."""
        if version.is_original:
            raise BadRequest("This is the original image; it has no captions to fix.")
        await interaction.response.send_modal(FixCaptionsModal(version))

    async def fix_from_modal(
        self, interaction: discord.Interaction, version_id: str, before: str, after: str
    ) -> None:
        """Bad captions are refused in the modal's reply (nothing queued); good ones re-run the edit."""
        before_lines, after_lines = before.splitlines(), after.splitlines()
        place = self._place_of(interaction)
        self._service.check_fix(version_id, before_lines, after_lines, place=place)
        version = self._service.get_version(version_id, place=place)
        author = intake.author_of_interaction(interaction)
        self._service.check_admission(author)
        received = await self._respond(interaction, author, version.instruction or "")
        await self._delivery.submit(
            received, self._service.fix_captions, version_id, author, before_lines, after_lines, place=place
        )

    async def delete(self, interaction: discord.Interaction, version: Version) -> None:
        """The Delete button: the message goes, the version stays in the tree marked deleted."""
        author = intake.author_of_interaction(interaction)
        await self._service.delete_version(version.id, author, place=self._place_of(interaction))
        await interaction.response.send_message(
            "🗑️ Deleted. Edits made from it are kept.", ephemeral=True, allowed_mentions=NO_MENTIONS
        )
        if interaction.message is not None:
            await interaction.message.delete()
