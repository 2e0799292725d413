"""What the bot says: message texts, embeds, and results fitted to the upload limit.

Pure functions of plain values, so every wording and limit is tested without Discord.
Mentions in these texts never ping: every send uses ``AllowedMentions.none()``.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

import discord
from PIL import Image

from sessions import STAGES, ChannelPolicy, EditSettings, Progress, VariationSet, Version

#: Discord refuses message content longer than this.
MAX_CONTENT = 2000
#: How much of an instruction a status line quotes.
QUOTE_CHARS = 120
#: A note under a result (why its captions were a fallback, which caption was shortened).
NOTE_CHARS = 400

STAGE_LABELS = {
    "caption": "describing the image",
    "invert": "inverting the image",
    "captions": "reading your instruction",
    "reconstruct": "reconstructing",
    "edit": "editing",
    "decode": "finishing",
}
#: Rough share of an edit's time per stage (the UNet-heavy stages dominate), for one percentage.
#: Share of an edit's time per stage. The reconstruction runs inside the edit's steps (interleaved),
#: so it has no share of its own.
STAGE_WEIGHTS = {"caption": 3, "invert": 25, "captions": 7, "edit": 62, "decode": 3}


def quote(text: str, limit: int = QUOTE_CHARS) -> str:
    """An instruction as a short, markdown-safe quotation."""
    return "“" + discord.utils.escape_markdown(_shortened(text, limit)) + "”"


def _shortened(text: str, limit: int) -> str:
    """``text`` on one line, cut with an ellipsis to at most ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def overall_percent(stage: str | None, step: int, total: int) -> int:
    """One number for the whole edit from the stage and the step within it."""
    if stage not in STAGES:
        return 0
    done_before = sum(STAGE_WEIGHTS.get(s, 0) for s in STAGES[: STAGES.index(stage)])
    within = STAGE_WEIGHTS.get(stage, 0) * (min(step, total) / total if total > 0 else 0)
    return int(100 * (done_before + within) / sum(STAGE_WEIGHTS.values()))


def status_text(progress: Progress, requester_id: str, instruction: str) -> str:
    """The status message of a job while it waits or runs."""
    head = f"<@{requester_id}> {quote(instruction)}"
    if progress.state == "queued":
        position = progress.queue_position
        where = (
            "next in line" if position == 1 else f"number {position} in the queue" if position else "queued"
        )
        return f"⏳ {head} — {where}."
    if progress.state == "running":
        if progress.stage is None:
            return f"🎨 {head} — starting…"
        label = STAGE_LABELS.get(progress.stage, progress.stage)
        percent = overall_percent(progress.stage, progress.step, progress.total)
        return f"🎨 {head} — {label}, {percent}%"
    return f"{head} — {progress.state}."


def received_text(requester_id: str, instruction: str) -> str:
    """The first status line, sent before the job is queued so the user hears back at once."""
    return f"📥 <@{requester_id}> {quote(instruction)} — received, getting it ready…"


def done_text(requester_id: str, instruction: str, seconds: float) -> str:
    return f"✅ <@{requester_id}> {quote(instruction)} — done in {seconds:.1f} s."


def cancelled_text(requester_id: str, instruction: str) -> str:
    return f"🚫 <@{requester_id}> {quote(instruction)} — cancelled."


def failed_text(requester_id: str, instruction: str, reason: str) -> str:
    return f"⚠️ <@{requester_id}> {quote(instruction)} — {reason}"


def understood_line(version: Version) -> str:
    """How the language model read the instruction, as one line."""
    if not version.before_captions or not version.after_captions:
        return ""
    before = " ".join(version.before_captions[0].split())
    after = " ".join(version.after_captions[0].split())
    how = "captions written by a person" if version.captions_by == "person" else "understood as"
    return f"{how}: {discord.utils.escape_markdown(before)} → {discord.utils.escape_markdown(after)}"


def result_text(version: Version, note: str = "") -> str:
    """The text beside a result: the instruction, who asked, and how it was understood."""
    lines = [f"{quote(version.instruction or '', 300)} — asked by <@{version.author_id}>"]
    understood = understood_line(version)
    if understood:
        lines.append(understood)
    return with_note("\n".join(lines), note, warnings=version.notes)


def variations_text(made: VariationSet, note: str = "") -> str:
    """The text above a grid of variations: each one's strength and how it read the instruction."""
    lines = [
        f"🎲 Variations of {quote(made.instruction, 200)} — asked by <@{made.requester_id}>. "
        "Press a number to keep that one."
    ]
    for variation in made.variations:
        before = " ".join(variation.before_captions[0].split()) if variation.before_captions else ""
        after = " ".join(variation.after_captions[0].split()) if variation.after_captions else ""
        strength = variation.settings.direction_strength
        lines.append(f"{variation.number}. strength {strength:g}: {quote(before, 120)} → {quote(after, 120)}")
    notes = dict.fromkeys(text for variation in made.variations for text in variation.notes)
    return with_note("\n".join(lines), note, warnings=tuple(notes))


def undo_text(version: Version, undone: Version, clicker_id: str) -> str:
    """Shown with the parent image again after an undo."""
    what = (
        "the original image"
        if version.is_original
        else f"the version from {quote(version.instruction or '')}"
    )
    return fit(
        f"↩️ <@{clicker_id}> undid {quote(undone.instruction or '')}: here is {what} again. "
        "Reply to this message to edit from here."
    )


def captions_embed(version: Version) -> discord.Embed:
    """The details behind a result, shown only to whoever asked."""
    embed = discord.Embed(title="How this edit was made", description=quote(version.instruction or "", 1000))
    if version.caption:
        embed.add_field(name="Image caption (BLIP)", value=_field(version.caption), inline=False)
    by = " (written by a person)" if version.captions_by == "person" else ""
    embed.add_field(name="Before" + by, value=_field(_bullets(version.before_captions)), inline=False)
    embed.add_field(name="After" + by, value=_field(_bullets(version.after_captions)), inline=False)
    if version.settings is not None:
        embed.add_field(name="Settings", value=_field(settings_line(version.settings)), inline=False)
    if version.seed is not None:
        embed.add_field(name="Seed", value=str(version.seed))
    if version.notes:
        embed.add_field(name="Notes", value=_field(_bullets(version.notes)), inline=False)
    embed.set_footer(
        text=f"version {version.id}" + (f" · from {version.parent_id}" if version.parent_id else "")
    )
    return embed


def settings_line(settings: EditSettings) -> str:
    parts = [
        f"steps {settings.steps}",
        f"guidance {settings.guidance_scale:g}",
        f"attention guidance {settings.cross_attention_guidance:g}",
        f"strength {settings.direction_strength:g}",
        f"{settings.num_captions} captions",
        f"template {settings.template}",
    ]
    if settings.caption_lock:
        parts.append("caption lock")
    return " · ".join(parts)


def history_text(versions: Sequence[Version], limit: int) -> str:
    """The lineage under a contact sheet, root first, numbered like the sheet.

    A lineage longer than ``limit`` shows its original and its latest steps.
    """
    lines = [f"🧬 History of this image ({len(versions)} version{'s' if len(versions) != 1 else ''}):"]
    numbered: list[tuple[int, Version | None]] = list(enumerate(versions, start=1))
    hidden = len(numbered) - limit
    if hidden > 0:
        numbered = [numbered[0], (0, None), *numbered[-(limit - 1) :]]
    for number, version in numbered:
        if version is None:
            lines.append(f"… {hidden} earlier version{'s' if hidden != 1 else ''} not shown")
        elif version.is_original:
            lines.append(f"{number}. original, uploaded by <@{version.author_id}>")
        else:
            lines.append(f"{number}. {quote(version.instruction or '', 80)} by <@{version.author_id}>")
    return fit("\n".join(lines))


def help_text(message_content: bool) -> str:
    reading = (
        "Post an image with an instruction and mention me, or post it in an edit channel, or DM me."
        if message_content
        else "Post an image with an instruction and mention me (or DM me)."
    )
    return "\n".join(
        [
            "**Conversational image editing** (Pix2Pix-OnTheFly)",
            f"• **New edit:** {reading} You can also use `/edit`, or right-click a message with an "
            "image → Apps → **Edit image**.",
            "• **Keep going:** reply to any of my results with the next instruction. Anyone can branch "
            "from any result; nothing is overwritten. Reply `undo` to get the previous version back.",
            "• **Buttons:** Undo, Retry (new seed), Stronger, Subtler, Captions (how I read your "
            "instruction, shown only to you), Fix captions (correct how I read it and redo the edit), "
            "Variations (4 alternatives in one grid; press a number to keep one), Delete (the requester "
            "or a moderator). Cancel stops a waiting or running edit.",
            "• `/history` shows the lineage of a result; `/settings` (Manage Server) sets channel "
            "defaults, edit channels, the safety check and `steering` (who may press buttons, "
            "previews, and chains: `compose` keeps long chains sharp).",
            "Write instructions like *make it snowy*, *turn the cat into a dog*, *in watercolor*.",
        ]
    )


def policy_line(policy: ChannelPolicy) -> str:
    """A channel's steering choices as one line."""
    buttons = "the requester and moderators" if policy.requester_only else "everyone"
    previews = "on" if policy.previews else "off"
    return f"buttons: {buttons} · previews {previews} · chains: {policy.chain}"


def settings_text(
    settings: EditSettings, policy: ChannelPolicy, edit_channel_ids: Sequence[str], safety_check: bool | None
) -> str:
    channels = ", ".join(f"<#{c}>" for c in edit_channel_ids) or "none"
    safety = "not available on this bot" if safety_check is None else ("on" if safety_check else "off")
    return "\n".join(
        [
            "⚙️ **Settings of this channel**",
            settings_line(settings),
            policy_line(policy),
            f"Edit channels of this server: {channels}",
            f"Safety check of results in this server: {safety}",
        ]
    )


_LINK = re.compile(r"https?://(?:\w+\.)?discord(?:app)?\.com/channels/(?:@me|\d+)/(\d+)/(\d+)")


def parse_message_reference(text: str) -> tuple[int | None, int] | None:
    """(channel id, message id) from a message link, or (None, id) from a bare message id."""
    text = text.strip()
    link = _LINK.fullmatch(text)
    if link:
        return int(link.group(1)), int(link.group(2))
    if text.isdigit() and 15 <= len(text) <= 21:
        return None, int(text)
    return None


def without_bot_mention(content: str, bot_id: int) -> str:
    """The instruction in a message that mentions the bot: the mention removed, spaces tidied."""
    return " ".join(re.sub(rf"<@!?{bot_id}>", " ", content).split())


def describe_bytes(count: int) -> str:
    if count >= 1024 * 1024:
        return f"{count / (1024 * 1024):.1f} MB"
    return f"{max(1, round(count / 1024))} KB"


@dataclass(frozen=True)
class FittedImage:
    data: bytes
    filename: str
    #: What was done to fit the upload limit, for the message text ("" when nothing was).
    note: str


#: Lossy qualities tried, best first, before shrinking the image.
_QUALITIES = (92, 80, 65)
_SHRINK = 0.75
_SMALLEST_SIDE = 64


def fit_image(png: bytes, limit: int, stem: str) -> FittedImage:
    """The result as PNG when it fits ``limit`` bytes, else WebP, else a smaller WebP.

    Raises ValueError when even a tiny version does not fit (a limit far below any image).
    """
    if len(png) <= limit:
        return FittedImage(png, f"{stem}.png", "")
    with Image.open(io.BytesIO(png)) as opened:
        image = opened.convert("RGB")
    original_size = image.size
    while True:
        for quality in _QUALITIES:
            buffer = io.BytesIO()
            image.save(buffer, format="WEBP", quality=quality, method=4)
            if buffer.tell() <= limit:
                size_note = "" if image.size == original_size else f", {image.width}×{image.height}"
                note = f"sent as WebP{size_note} to fit the {describe_bytes(limit)} upload limit"
                return FittedImage(buffer.getvalue(), f"{stem}.webp", note)
        width, height = (max(1, int(side * _SHRINK)) for side in image.size)
        if min(width, height) < _SMALLEST_SIDE:
            raise ValueError(f"the image cannot be made to fit {describe_bytes(limit)}")
        image = image.resize((width, height), Image.Resampling.LANCZOS)


def fit(text: str, tail: str = "") -> str:
    """``text`` + ``tail`` within Discord's content limit: the one place every outgoing text passes.

    The text is cut (with an ellipsis) so the ``tail`` (a note, a hint) always shows whole.
    """
    room = MAX_CONTENT - len(tail)
    if len(text) > room:
        text = text[: max(0, room - 1)] + "…"
    return (text + tail)[:MAX_CONTENT]


def with_note(text: str, note: str, *, warnings: Sequence[str] = ()) -> str:
    """A text with small print under it, kept whole when the text is cut: ``warnings`` about
    how an edit was made (each shortened, markdown-safe), then ``note`` (how it was sent)."""
    tail = "".join(f"\n-# ⚠️ {discord.utils.escape_markdown(_shortened(w, NOTE_CHARS))}" for w in warnings)
    return fit(text, tail + (f"\n-# {note}" if note else ""))


def _field(text: str) -> str:
    return text if len(text) <= 1024 else text[:1023] + "…"


def _bullets(items: Sequence[str]) -> str:
    return "\n".join(f"• {discord.utils.escape_markdown(item)}" for item in items) or "—"
