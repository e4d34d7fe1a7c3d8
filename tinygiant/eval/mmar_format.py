"""MMAR's item format: its 7 modalities, 4 layers (`category`) and 16 sub-categories, and the keys every item has.

The benchmark module (`tinygiant.eval.mmar`) and MMAR-Rubrics (`tinygiant.eval.rubrics`) both read items through
these; the official matching rule is `tinygiant.eval.runner.string_match`, which MMAR's `code/evaluation.py` shares
with MMAU's.
"""

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
