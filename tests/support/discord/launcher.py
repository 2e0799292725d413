"""Test-only launcher: run the real ``bot.py`` with discord.py pointed at a fake Discord.

discord.py has no base-URL option, so the two class attributes that name Discord's REST
and gateway addresses are set here, in the test process only, before the unmodified
``main()`` of the bot runs. The product itself contains no such hook.

    python tests/support/discord/launcher.py http://127.0.0.1:PORT [bot.py] -- --config CONFIG
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def main() -> None:
    separator = sys.argv.index("--") if "--" in sys.argv else len(sys.argv)
    fake_url, *script = sys.argv[1:separator]
    bot_script = Path(script[0]) if script else ROOT / "bot.py"
    sys.path[0] = str(ROOT)  # as if the bot were started from the repository root

    import discord.gateway
    import discord.http
    import yarl

    discord.http.Route.BASE = f"{fake_url}/api/v10"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake_url.replace("http", "ws", 1) + "/gw")
    sys.argv = [str(bot_script), *sys.argv[separator + 1 :]]
    runpy.run_path(str(bot_script), run_name="__main__")


if __name__ == "__main__":
    main()
