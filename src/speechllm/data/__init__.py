"""Data layer: audio I/O, offline TTS, augmentation, manifests, dataset builders, feature cache.

Submodules are imported where they are used, so that `import speechllm.data` stays cheap and the
optional TTS engines are only loaded by the code that synthesises.
"""

from speechllm.data.audio import SAMPLE_RATE, AudioError, decode_audio_bytes, load_audio, save_wav
from speechllm.data.manifest import ManifestError, Sample, read_manifest, write_manifest

__all__ = [
    "SAMPLE_RATE",
    "AudioError",
    "ManifestError",
    "Sample",
    "decode_audio_bytes",
    "load_audio",
    "read_manifest",
    "save_wav",
    "write_manifest",
]
