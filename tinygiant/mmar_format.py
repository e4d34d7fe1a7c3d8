"""MMAR's item format: its 7 modalities, 4 layers (`category`) and 16 sub-categories, the keys every item has, and
the official rule that judges a prediction (`string_match`, as MMAR's `code/evaluation.py` does).

The harness (`tinygiant.mmar`) and MMAR-Rubrics (`tinygiant.rubrics`) both read items through these.
"""

import re

MODALITIES = [
    "sound",
    "music",
    "speech",
    "mix-sound-music",
    "mix-sound-speech",
    "mix-music-speech",
    "mix-sound-music-speech",
]

LAYERS = {
    "Signal Layer": ["Acoustic Quality Analysis", "Anomaly Detection", "Audio Difference Analysis"],
    "Perception Layer": [
        "Environmental Perception and Reasoning",
        "Counting and Statistics",
        "Music Theory",
        "Correlation Analysis",
        "Temporal Analysis",
        "Spatial Analysis",
    ],
    "Semantic Layer": ["Content Analysis", "Emotion and Intention", "Speaker Analysis"],
    "Cultural Layer": [
        "Professional Knowledge and Reasoning",
        "Culture of Speaker",
        "Imagination",
        "Aesthetic Evaluation",
    ],
}
SUB_CATEGORIES = [s for subs in LAYERS.values() for s in subs]
REQUIRED_KEYS = ["id", "audio_path", "question", "choices", "answer", "modality", "category", "sub-category"]


def _tokens(text):
    return set(re.findall(r"\b\w+\b", text.lower()))


def string_match(answer, prediction, choices):
    """The official MMAR rule: is `prediction` a correct pick of `answer` among `choices`?

    Texts are lower-cased and reduced to sets of `\\b\\w+\\b` tokens. An empty prediction is wrong.
    The "incorrect tokens" are, for every choice whose token set differs from the answer's, that
    choice's tokens minus the answer's tokens. Correct iff every answer token is in the prediction
    and no incorrect token is. So a bare letter ("D") is wrong and "D. Parrot" is right.
    A `None` prediction counts as empty (the official script would fail on it).
    """
    predicted = _tokens(prediction or "")
    if not predicted:
        return False
    expected = _tokens(answer)
    incorrect = set()
    for choice in choices:
        tokens = _tokens(choice)
        if tokens != expected:
            incorrect |= tokens - expected
    return expected <= predicted and not (predicted & incorrect)
