"""The Discord front end: ``run_discord(config, service, token)`` runs the bot until closed."""

from handlers.discord.bot import EditBot, run_discord

__all__ = ["EditBot", "run_discord"]
