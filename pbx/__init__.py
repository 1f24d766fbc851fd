"""An office phone system: a SIP PBX in Python on Twisted.

Importing the package first decides whether its compiled hot path may be
used (`pbx.compiled`): a build older than its sources never runs.
"""

from pbx.compiled import use_source_when_stale

use_source_when_stale()
