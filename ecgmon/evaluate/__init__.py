"""ecgmon scored against reference annotations: QRS detection (EC57), beat classes, alarms,
model files and heart-sound verdicts, with the scoring and plotting they share.

It replays records through the daemon's own parts (``ecgmon.monitor``) and loads models with
the daemon's loader, so a score is the score of what runs live. Only ``ecgmon.commands``
imports it: the daemon and training never depend on their evaluation.
"""
