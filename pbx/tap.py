"""``twistd pbx`` options and service construction [twisted.names ``tap.py``].

The options read and check the whole config before anything starts; a
config with mistakes stops twistd with every mistake listed on stderr, each
naming the file, the key and what was expected, and exit status 1. Only the
mistakes: twistd answers a `usage.UsageError` by printing its whole usage
text first (`twisted.application.app.run`), a page of options that buried
them, and a mistake in the file is not a mistake on the command line.
``--check`` does the same and stops there, printing one OK line for a good
file.
"""

from __future__ import annotations

import sys

from twisted.application.service import IService
from twisted.python import usage

from pbx.config import ConfigError, load_config
from pbx.memory import leave_tls_unloaded


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the PBX: SIP over UDP, TCP, TLS and WebSocket, a registrar for the "
        "users in the config, calls routed by the dialplan. `kill -HUP` re-reads "
        "the config. Ordinary twistd options (--logfile, --pidfile, -n) apply."
    )
    optParameters = [
        ["config", "c", "etc/pbx.toml", "The TOML configuration file."],
    ]
    optFlags = [
        ["debug", "d", "Log every SIP message in full (overrides pbx.debug)."],
        ["check", None, "Check the config, print the result and exit."],
    ]

    def postOptions(self) -> None:
        try:
            self["loaded_config"] = config = load_config(self["config"])
        except ConfigError as error:
            print(error, file=sys.stderr)  # answering the operator, before any logging
            raise SystemExit(1) from None
        if not config.sip.needs_tls:
            leave_tls_unloaded()  # the reactor is imported after this
        if self["check"]:
            print(f"{self['config']}: OK")  # answering a command-line question
            raise SystemExit(0)


def makeService(options: Options) -> IService:
    from pbx.service import PbxService

    return PbxService(options["loaded_config"], config_path=options["config"],
                      force_debug=bool(options["debug"]))
