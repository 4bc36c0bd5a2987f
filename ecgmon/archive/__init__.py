"""Full disclosure: every sample, beat, class and alarm of every stream on disk, in WFDB.

One folder per stream under the archive root, holding a WFDB multi-segment record (closed
segments of ``[archive] segment_s``, each a complete record, and a layout header listing
them, ``~`` null segments marking gaps), per segment an annotation file of beats
(``.ecgmon``) and one of alarms, technical events and rhythm changes (``.event``), and at the
root an append-only JSON Lines audit log. Everything is written to a temporary name, fsynced
and renamed, so a crash loses at most the open segment.

Modules, one job each: ``fsio`` (atomic, fsynced writes), ``layout`` (the multi-segment
header), ``segment`` (one segment record), ``annotations`` (WFDB annotation files),
``audit`` (the JSON Lines log), ``stream`` (one stream's archive), ``retention`` (age and
size limits), ``writer`` (the bounded queue and thread the daemon feeds), ``reader``
(listing, verifying, exporting and replaying an archive).
"""
