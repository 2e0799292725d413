"""The Discord front end: ``handlers.discord.bot.run_discord(config, service, token)`` runs the bot.

Nothing is imported here, so importing a sibling (or the console) never loads discord.py.
"""
