"""The ANSI/AAMI EC57 beat classes (N, S, V, F, Q) of MIT-BIH beat symbols, and the
inter-patient record split of de Chazal et al. (2004) that beat classifiers are judged by.
"""

from __future__ import annotations

CLASSES: tuple[str, ...] = ("N", "S", "V", "F", "Q")
CLASS_INDEX: dict[str, int] = {c: i for i, c in enumerate(CLASSES)}

# EC57 / de Chazal et al. 2004, table I. '!' (ventricular flutter wave) is a QRS annotation
# in WFDB but EC57 leaves flutter out of beat classification, so it maps to nothing, like
# every non-beat annotation ('+', '~', '|', '[', ']', 'x', ...).
AAMI_OF_SYMBOL: dict[str, str] = {
    # N: normal, bundle branch blocks, atrial and nodal (junctional) escape
    "N": "N", "L": "N", "R": "N", "e": "N", "j": "N",
    # S: supraventricular ectopic — atrial, aberrated atrial, nodal premature, SV premature
    "A": "S", "a": "S", "J": "S", "S": "S",
    # V: ventricular ectopic — premature ventricular contraction, ventricular escape
    "V": "V", "E": "V",
    # F: fusion of ventricular and normal
    "F": "F",
    # Q: paced, fusion of paced and normal, unclassifiable
    "/": "Q", "f": "Q", "Q": "Q",
}

# de Chazal, O'Dwyer & Reilly, IEEE TBME 51(7) 2004: two sets of 22 records with a similar
# mix of beat classes, so that a classifier trained on DS1 is tested on other patients.
# The four paced records belong to neither (EC57 excludes them). Note that 201 (DS1) and
# 202 (DS2) come from the same subject; the split, as published, keeps them apart anyway.
DS1: tuple[str, ...] = (
    "101", "106", "108", "109", "112", "114", "115", "116", "118", "119", "122",
    "124", "201", "203", "205", "207", "208", "209", "215", "220", "223", "230",
)
DS2: tuple[str, ...] = (
    "100", "103", "105", "111", "113", "117", "121", "123", "200", "202", "210",
    "212", "213", "214", "219", "221", "222", "228", "231", "232", "233", "234",
)
PACED: tuple[str, ...] = ("102", "104", "107", "217")


def aami_class(symbol: str) -> str | None:
    """The AAMI class of a MIT-BIH annotation symbol; None for non-beats and for '!'."""
    return AAMI_OF_SYMBOL.get(symbol)


def aami_index(symbol: str) -> int:
    """The class index (into ``CLASSES``) of a beat symbol, -1 when it is not a classified beat."""
    cls = AAMI_OF_SYMBOL.get(symbol)
    return -1 if cls is None else CLASS_INDEX[cls]
