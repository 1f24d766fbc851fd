"""The dialplan of a small office: a worked example to copy and change.

The office: extensions 1001-1099 (Alice at reception is 1001), a sales
ring group on 600 that rings everyone in sales at once, a support line on
601 that tries the support staff one after another, and a number that is
refused. Anything else is answered 404.

A dialplan imports only `pbx.dialplan` and the standard library. It is
loaded when the PBX starts and again on ``kill -HUP``; if an edited file
does not import, the PBX keeps the one it had and logs why. Its tests are
in tests/unit/test_office_dialplan.py: copy them along with the file.
"""

from pbx.dialplan import Answered, Busy, Call, Dialplan, NoAnswer

RECEPTION = "1001"
SALES = ("1002", "1003")
SUPPORT = ("1003", "1002")
RING_S = 20

dialplan = Dialplan()


@dialplan.route("600")
async def sales(call: Call) -> None:
    """Ring group, all at once: the first of sales to pick up gets the call."""
    result = await call.dial(*SALES, timeout_s=RING_S)
    if not isinstance(result, Answered):
        await call.forward(RECEPTION, timeout_s=RING_S)


@dialplan.route("601")
async def support(call: Call) -> None:
    """Ring group, one after another: each rings for 10 seconds."""
    await call.dial(*SUPPORT, timeout_s=10, sequential=True)


@dialplan.route("666")
async def refused(call: Call) -> None:
    """A number nobody should call: 603 Decline, with a reason the phone can show."""
    await call.reject(603, "This number is not in service")


@dialplan.route(pattern=r"10\d\d")
async def extension(call: Call) -> None:
    """Ring the extension's phones; when busy or not answering, go to reception."""
    if not call.users.exists(call.dialed):
        await call.reject(404, "No such extension")
        return
    result = await call.dial(call.dialed, timeout_s=RING_S)
    if isinstance(result, (Busy, NoAnswer)) and call.dialed != RECEPTION:
        await call.forward(RECEPTION, timeout_s=RING_S)
    # Otherwise the caller hears what happened: busy, not available, ...
