"""The ``twistd pbx`` entry point: one ServiceMaker line [twisted.names tap]."""

from twisted.application.service import ServiceMaker

pbx = ServiceMaker("pbx", "pbx.tap", "An office phone system: a SIP PBX", "pbx")
