"""The per-request log lines (``[pbx] log_requests``): every answer, routine traffic once an hour.

Every request the PBX answers gets a line: method, peer, status, Call-ID,
and for a challenge what was offered to which User-Agent (issue 19: the
first thing to know when a phone will not authenticate). Most of what a
PBX answers is routine, though: each phone refreshes its registration every
few minutes (some every 30 s, as a NAT keep-alive), and each refresh is a
REGISTER answered 401 and a REGISTER answered 200; some phones also send
OPTIONS as keep-alives. Logged every time, that is two lines a minute per
phone, which buries what an admin looks for, and a line costs as much as
the registration itself (Twisted's logger formats and writes each event in
the reactor thread; docs/benchmarks.md, "Request log").

So routine answers are logged at info the first time for a phone and then
once every `ROUTINE_REPEAT_S`; the repeats in between go to debug (seen with
``debug = true``). Routine means:

- a 401 or 407 to a request that carried no credentials (the challenge every
  registration and call starts with), per source address, User-Agent and
  what was offered: a phone that never answers it (baresip giving up on a
  SHA-256 challenge) is seen the first time and every hour;
- a 2xx to REGISTER, per AOR and Contact: a new binding and a removal are
  also logged as lifecycle events ("Registered ...") whatever this says;
- a 2xx to OPTIONS, per source address and User-Agent.

Everything else (a challenge to wrong or stale credentials, 403, 404, 486,
5xx, a call's INVITE, BYE, ...) is logged every time.

The line is formatted here with ``str.format`` and handed to the logger as
its own format (braces doubled), the fields beside it for the JSON log:
Twisted's formatter is a pure-Python `string.Formatter`, several times the
cost of the line itself.
"""

from __future__ import annotations

import re
from typing import Final

from twisted.logger import Logger

from pbx.sip.message import Request, Response
from pbx.sip.peer import Peer

ROUTINE_REPEAT_S: Final = 3600.0
"""How often a routine answer to the same phone is logged at info again."""

MAX_REMEMBERED: Final = 65_536
"""Routine keys remembered at most; past it the memory starts afresh (a few lines again)."""

_CHALLENGE_HEADERS: Final = {401: "www-authenticate", 407: "proxy-authenticate"}
_CREDENTIALS_HEADERS: Final = {401: "authorization", 407: "proxy-authorization"}
_ALGORITHM_PARAM = re.compile(r'(?i)\balgorithm\s*=\s*"?([^",\s]+)')


class RequestLog:
    """Writes the line for each answered request; remembers when routine ones were last at info."""

    def __init__(self, log: Logger, *, enabled: bool = True, debug: bool = False,
                 repeat_s: float = ROUTINE_REPEAT_S) -> None:
        self.log = log
        self.enabled = enabled
        """``[pbx] log_requests``: False logs no request line (lifecycle events still are)."""
        self.debug = debug
        """``[pbx] debug``: repeats of routine lines are logged (at debug) only then."""
        self.repeat_s = repeat_s
        self._last_at: dict[tuple[str, ...], float] = {}

    def answered(self, request: Request, peer: Peer, response: Response, now: float) -> None:
        """Log the line for `response` to `request` from `peer` (at info, or debug if a repeat)."""
        if not self.enabled:
            return
        status = response.status
        method = request.method
        challenge = _CHALLENGE_HEADERS.get(status)
        if challenge is not None:
            algorithms = ",".join(_algorithms(response.headers.get_all(challenge)))
            user_agent = request.headers.get("user-agent") or ""
            routine = (request.headers.get(_CREDENTIALS_HEADERS[status]) is None
                       and self._is_repeat(("challenge", method, peer.host, user_agent,
                                            algorithms), now))
            if not routine or self.debug:
                self._emit(
                    routine,
                    f"{method} from {peer} answered {status} {response.reason} offering "
                    f"{algorithms} to User-Agent {user_agent!r} (call-id {request.call_id})",
                    method=method, peer=str(peer), status=status, reason=response.reason,
                    algorithms=algorithms, user_agent=user_agent, call_id=request.call_id)
            return
        routine = False
        if 200 <= status < 300:
            if method == "REGISTER":
                routine = self._is_repeat(
                    ("register", request.to_addr.sip_user or "",
                     request.headers.get("contact") or ""), now)
            elif method == "OPTIONS":
                routine = self._is_repeat(
                    ("options", peer.host, request.headers.get("user-agent") or ""), now)
            if routine and not self.debug:
                return
            algorithm = credentials_algorithm(request)
            if algorithm is not None:
                self._emit(routine,
                           f"{method} from {peer} answered {status} {response.reason}, "
                           f"authenticated with {algorithm} (call-id {request.call_id})",
                           method=method, peer=str(peer), status=status,
                           reason=response.reason, algorithm=algorithm,
                           call_id=request.call_id)
                return
        self._emit(routine,
                   f"{method} from {peer} answered {status} {response.reason} "
                   f"(call-id {request.call_id})",
                   method=method, peer=str(peer), status=status, reason=response.reason,
                   call_id=request.call_id)

    def _is_repeat(self, key: tuple[str, ...], now: float) -> bool:
        """True when `key` was logged at info less than `repeat_s` ago; else remember now."""
        last_at = self._last_at.get(key)
        if last_at is not None and now - last_at < self.repeat_s:
            return True
        if last_at is None and len(self._last_at) >= MAX_REMEMBERED:
            self._last_at.clear()
        self._last_at[key] = now
        return False

    def _emit(self, routine: bool, line: str, **fields: object) -> None:
        text = line.replace("{", "{{").replace("}", "}}")
        if routine:
            self.log.debug(text, **fields)
        else:
            self.log.info(text, **fields)


def _algorithms(challenges: list[str]) -> list[str]:
    """The algorithm of each challenge, in order (MD5 where none is named, RFC 3261 §22.4)."""
    names = []
    for value in challenges:
        found = _ALGORITHM_PARAM.search(value)
        names.append(found.group(1) if found is not None else "MD5")
    return names


def credentials_algorithm(request: Request) -> str | None:
    """The algorithm of the request's digest credentials, if it carries any."""
    for header in ("authorization", "proxy-authorization"):
        value = request.headers.get(header)
        if value is not None:
            found = _ALGORITHM_PARAM.search(value)
            return found.group(1) if found is not None else "MD5"
    return None
