"""QRS morphology cues for ventricular beats: correlation with the patient's own normal
template and QRS width relative to it.

The beat model's V sensitivity across patients is about 0.75, so a run of five V beats
would often show one beat called N. Ventricular beats are wide and look unlike the
patient's supraventricular beats whatever the lead; comparing each beat with a running
template of the patient's own normal beats gives a second, patient-specific opinion that
does not depend on having seen this patient in training.
"""

from __future__ import annotations

# The template and the measures live in dsp/, shared with the beat classifier's
# patient-adaptive inputs; the alarm engine teaches its template the beats called normal.
from ecgmon.monitor.dsp.beat_template import (  # noqa: F401 (re-exported for the alarms)
    AFTER_S,
    BEFORE_S,
    MAX_SHIFT_S,
    TEMPLATE_ALPHA,
    WIDTH_FRACTION,
    BeatTemplate as MorphologyTracker,
    Morphology,
    qrs_width,
)

# Normal beats that make the template: regular, i.e. RR within this fraction of the last one.
REGULAR_RR = 0.2
