"""Media: what plugins build audio features on (see ``DESIGN.md``).

`pbx.media.seam` is where a call hands its session descriptions to a
media layer (a relay, a player, a mixer) on their way from one leg to the
other. Plugins import this package and `pbx.dialplan`, never the core.
"""
