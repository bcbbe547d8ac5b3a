"""Loss pairs: which two embeddings an InfoNCE term compares, and which audio crop each view sees.

A pair joins two views with ``-``. Every view sees the clip's first crop (the audio window and exactly
the frames shown in it) unless it carries the suffix ``2``: then it sees the clip's second, independent
audio crop (only audio views have one; the video tower always sees crop 1's frames).

=========================  ==============================================  ========================
form                        meaning                                         embedding keys
=========================  ==============================================  ========================
``spec-video``              two views, both on crop 1                       ``("spec", "video")``
``spec-spec``               an audio view on crop 1 against crop 2 (COLA)   ``("spec", "spec2")``
``spec-wave2``              spectrogram of crop 1, waveform of crop 2       ``("spec", "wave2")``
``wave2-video``             waveform of crop 2, frames of crop 1            ``("wave2", "video")``
=========================  ==============================================  ========================

Pure string grammar (no torch): the config checks ``loss.pairs`` with it at load, the trainer, the loss
and the FLOP count read the crops from it.
"""

from __future__ import annotations

VIEWS = ("spec", "wave", "video")
AUDIO_VIEWS = ("spec", "wave")
SECOND_CROP = "2"  # suffix of a view on the second audio crop ("wave2"); also the key of its embeddings
PAIR_FORMS = (f"A-B (two views on crop 1: spec-video), V-V (an audio view, crop 1 against crop 2: spec-spec), "
              f"A-B2 or A2-B (one audio view on crop 2: spec-wave2, wave2-video); views: {', '.join(VIEWS)}")


def parse_pair(pair: str) -> tuple[str, str]:
    """The two embedding keys a pair compares: ``"spec-video"`` -> ``("spec", "video")``, ``"spec-spec"`` ->
    ``("spec", "spec2")``, ``"spec-wave2"`` -> ``("spec", "wave2")``, ``"wave2-video"`` -> ``("wave2", "video")``.

    Raises ``ValueError`` naming the pair, what is wrong and the allowed forms (:data:`PAIR_FORMS`)."""
    parts = pair.split("-")
    second = [p.endswith(SECOND_CROP) for p in parts]
    views = [p.removesuffix(SECOND_CROP) if s else p for p, s in zip(parts, second)]
    if len(parts) != 2 or not set(views) <= set(VIEWS):
        why = "not two known views joined by '-'"
    elif any(s and v not in AUDIO_VIEWS for s, v in zip(second, views)):
        why = "only audio views have a second crop (video sees crop 1's frames)"
    elif views[0] == views[1]:
        if any(second):
            why = f"a view against itself already means crop 1 against crop 2; write {views[0]}-{views[0]}"
        elif views[0] not in AUDIO_VIEWS:
            why = "a view against itself needs a second crop, which only audio views have"
        else:
            return views[0], views[0] + SECOND_CROP
    elif all(second):
        why = f"both sides on crop 2 is the same-crop pair; write {views[0]}-{views[1]}"
    else:
        return parts[0], parts[1]
    raise ValueError(f"loss pair {pair!r}: {why}; allowed forms: {PAIR_FORMS}")


def crop_views(pairs: list[str], views: list[str]) -> tuple[list[str], list[str]]:
    """``(views run on crop 1, audio views run on crop 2)``, each in ``views`` order: a tower runs once per crop
    some pair needs it on (``["spec-wave2"]`` -> ``(["spec"], ["wave"])``)."""
    keys = {k for p in pairs for k in parse_pair(p)}
    return [v for v in views if v in keys], [v for v in views if v + SECOND_CROP in keys]
