"""The dialplan of a small office: a worked example to copy and change.

The office: extensions 1000-1099 (Alice at reception is 1001), a sales
ring group on 600 that rings everyone in sales at once, a support line on
601 that tries the support staff one after another, and a number that is
refused. Anything else is answered 404.

The PBX never rings the caller's own phone: when reception is the one
calling, the forwards to reception below ring nobody, and the caller hears
what happened before (busy is 486 Busy Here, a phone that declined 603...).
Likewise a member of a ring group or hunt who calls it rings the others.

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
    """Ring group, all at once: the first of sales to pick up gets the call.

    When none of them picks up (busy, no answer, declined, no phone
    registered), the call goes to reception for another 20 seconds.
    """
    result = await call.dial(*SALES, timeout_s=RING_S)
    if not isinstance(result, Answered):
        await call.forward(RECEPTION, timeout_s=RING_S)


@dialplan.route("601")
async def support(call: Call) -> None:
    """Hunt, one after another: each rings for 10 seconds (or until busy)."""
    await call.dial(*SUPPORT, timeout_s=10, sequential=True)


@dialplan.route("666")
async def refused(call: Call) -> None:
    """A number nobody should call: 603 Decline, with a reason the phone can show."""
    await call.reject(603, "This number is not in service")


@dialplan.route(pattern=r"10\d\d")
async def extension(call: Call) -> None:
    """Ring the extension's phones; when busy or not answering, go to reception.

    A phone that declines the call (603), or an extension with no phone
    registered (480), is not forwarded: the caller hears that.
    """
    if not call.users.exists(call.dialed):
        await call.reject(404, "No such extension")
        return
    result = await call.dial(call.dialed, timeout_s=RING_S)
    if isinstance(result, (Busy, NoAnswer)) and call.dialed != RECEPTION:
        await call.forward(RECEPTION, timeout_s=RING_S)
    # The caller hears the best of what happened: a busy callee and a
    # reception that did not answer is still busy (486).
