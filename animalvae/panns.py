"""PANNs (Kong et al., 2020) without surprises: shipped labels, a checked checkpoint, no wget.

``panns_inference`` downloads at import time (the AudioSet label CSV into ``~/panns_data``) and
when its wrappers build a model (the checkpoint); offline, ``wget -O`` leaves empty or truncated
files behind and the package silently ends up with 0 classes. So this module

- ships the 527 AudioSet labels with the project (``data/class_labels_indices.csv``, from the
  AudioSet ontology, CC BY 4.0) and puts a copy where the package looks *before* importing it;
- builds ``Cnn14_DecisionLevelMax`` itself (once per process) and loads ``detect.checkpoint``
  with ``torch.load(weights_only=True)``, after checking the file is there and large enough
  (the training extras saved beside the weights, numpy scalars and arrays, are allowed as
  data; only ``"model"`` is kept); stage 3 runs the same weights through
  :class:`animalvae.cnn14.Cnn14Detector` (:func:`load_detector`), the inference-only form;
- downloads only on request (:func:`download_models`, ``animal_sound_detector.py
  --download-models``), with a progress bar, a size check and an atomic rename.

torch and panns_inference are imported inside the functions that need them, so that
:mod:`animalvae.config` can validate class names against :func:`audioset_labels` cheaply.
"""

from __future__ import annotations

import csv
import functools
import http.client
import logging
import shutil
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .audio import FRAMES_PER_S
from .errors import ConfigError
from .stage import atomic_path

if TYPE_CHECKING:
    import torch

__all__ = [
    "LABELS_CSV", "CHECKPOINT_URL", "CHECKPOINT_RECORD", "LABELS_URL", "SAMPLE_RATE",
    "HOP_LENGTH", "NUM_CLASSES", "ANIMAL_CLASSES", "MIN_CHECKPOINT_BYTES",
    "audioset_labels", "resolve_classes", "check_checkpoint", "install_package_labels",
    "build_model", "load_model", "load_detector", "read_state_dict", "clear_model_cache",
    "download_models",
]

log = logging.getLogger(__name__)

#: The AudioSet label list shipped with the project: ``index,mid,display_name``, 527 rows.
LABELS_CSV = Path(__file__).resolve().parent / "data" / "class_labels_indices.csv"
#: Zenodo record of the PANNs checkpoints, and the file this project uses.
CHECKPOINT_RECORD = "https://zenodo.org/record/3987831"
CHECKPOINT_URL = (f"{CHECKPOINT_RECORD}/files/"
                  "Cnn14_DecisionLevelMax_mAP%3D0.385.pth?download=1")
LABELS_URL = ("http://storage.googleapis.com/us_audioset/youtube_corpus/v1/csv/"
              "class_labels_indices.csv")

SAMPLE_RATE = 32000   # Hz; the rate Cnn14 was trained at
HOP_LENGTH = SAMPLE_RATE // FRAMES_PER_S  # 320 samples per output frame: 100 frames/s
NUM_CLASSES = 527
#: AudioSet's "Animal" subtree: indices 72 (Animal) to 136 (Whale vocalization).
ANIMAL_CLASSES = tuple(range(72, 137))
#: The real checkpoint is ~327 MB; anything under this is a truncated or failed download
#: (panns_inference uses the same threshold). Tests with small random weights lower it.
MIN_CHECKPOINT_BYTES = 300_000_000

_PACKAGE_LABELS = Path("panns_data") / "class_labels_indices.csv"  # under the home folder


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------

@functools.cache
def audioset_labels() -> tuple[str, ...]:
    """The 527 AudioSet display names, in model output order (index 0 = ``Speech``)."""
    return tuple(row[2] for row in _read_labels(LABELS_CSV))


def _read_labels(path: Path) -> list[list[str]]:
    """Rows ``[index, mid, display_name]`` of a label CSV (without the header)."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh) if r]
    return rows[1:] if rows and rows[0][:1] == ["index"] else rows


def resolve_classes(classes: Sequence[str | int]) -> tuple[list[int], list[str]]:
    """Turn AudioSet class names or indices into indices.

    Parameters
    ----------
    classes : sequence of str or int
        Display names exactly as in :func:`audioset_labels` (``"Bark"``,
        ``"Whimper (dog)"``), or indices in ``[0, 527)``.

    Returns
    -------
    indices : list of int
        Sorted, without duplicates; only the classes that resolved.
    problems : list of str
        One line per unknown name (with close matches) or out-of-range index.
    """
    import difflib

    labels = audioset_labels()
    by_name = {name: i for i, name in enumerate(labels)}
    indices: set[int] = set()
    problems: list[str] = []
    for entry in classes:
        if isinstance(entry, int) and not isinstance(entry, bool):
            if 0 <= entry < len(labels):
                indices.add(entry)
            else:
                problems.append(f"{entry} is not an AudioSet class index (0-{len(labels) - 1})")
        elif isinstance(entry, str) and entry in by_name:
            indices.add(by_name[entry])
        else:
            wanted = str(entry).lower()
            lowered = {name.lower(): name for name in labels}
            # Same word stem first ("Barking" -> "Bark"), then spelling ("Meow" for "meow").
            stems = [n for n in lowered if min(len(n), len(wanted)) >= 3
                     and (n.startswith(wanted) or wanted.startswith(n))]
            close = list(dict.fromkeys(
                sorted(stems, key=len) + difflib.get_close_matches(wanted, lowered, cutoff=0.6)))
            hint = (f" (did you mean {', '.join(repr(lowered[c]) for c in close[:3])}?)"
                    if close else " (names as in AudioSet's ontology, e.g. 'Bark', or indices)")
            problems.append(f"unknown AudioSet class {entry!r}{hint}")
    return sorted(indices), problems


def install_package_labels(home: Path | None = None) -> Path:
    """Make sure ``~/panns_data/class_labels_indices.csv`` holds the 527 labels.

    ``panns_inference`` reads (and, when it is missing, wgets) this file at import; an empty
    file left by an offline run gives it 0 classes. A file with 527 rows is left alone; any
    other is replaced, atomically, by the shipped copy.

    Parameters
    ----------
    home : Path or None
        The home folder (default: ``Path.home()``, where the package looks).

    Returns
    -------
    Path
        The label file.
    """
    target = (Path.home() if home is None else Path(home)) / _PACKAGE_LABELS
    try:
        if len(_read_labels(target)) == NUM_CLASSES:
            return target
    except (OSError, UnicodeDecodeError, csv.Error):
        pass  # missing or unreadable: replaced below
    with atomic_path(target) as tmp:
        shutil.copyfile(LABELS_CSV, tmp)
    log.debug("wrote the AudioSet labels to %s", target)
    return target


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------

def _how_to_get(path: Path) -> str:
    return (f"get it with `python animal_sound_detector.py --download-models`, or "
            f"{_by_hand(path)}; detect.backend=energy needs no model")


def _by_hand(path: Path) -> str:
    return (f"download Cnn14_DecisionLevelMax_mAP=0.385.pth from {CHECKPOINT_RECORD} and "
            f"save it as {path} (or point detect.checkpoint at it)")


def check_checkpoint(path: Path) -> list[str]:
    """Problems with the checkpoint file, one line each (empty when it looks usable).

    Checks only what is cheap: the file exists, and is at least :data:`MIN_CHECKPOINT_BYTES`
    (a failed download leaves an empty or truncated file). :func:`load_model` checks the rest.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        return [f"detect.checkpoint={path} does not exist: {_how_to_get(path)}"]
    size = path.stat().st_size
    if size < MIN_CHECKPOINT_BYTES:
        return [f"detect.checkpoint={path} is {size} bytes, smaller than a real checkpoint "
                f"(>= {MIN_CHECKPOINT_BYTES} bytes; a failed download?): {_how_to_get(path)}"]
    return []


def build_model() -> torch.nn.Module:
    """A ``Cnn14_DecisionLevelMax`` with random weights, in eval mode (32 kHz, 527 classes).

    ``forward(x)`` takes ``x [shape=(batch, samples)]`` at 32 kHz and returns a dict whose
    ``framewise_output`` has shape ``(batch, 1 + samples // 320, 527)``: 100 frames/s.
    """
    install_package_labels()  # before the import: the package wgets it otherwise
    from panns_inference.models import Cnn14_DecisionLevelMax

    model = Cnn14_DecisionLevelMax(sample_rate=SAMPLE_RATE, window_size=1024,
                                   hop_size=HOP_LENGTH, mel_bins=64, fmin=50, fmax=14000,
                                   classes_num=NUM_CLASSES)
    return model.eval()


_MODELS: dict[tuple[str, str, int, int, str], torch.nn.Module] = {}


def load_model(checkpoint: Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The stock ``Cnn14_DecisionLevelMax`` with ``checkpoint``'s weights on ``device``.

    Built once per process (see :func:`load_detector` for the cheaper inference-only module
    stage 3 runs; this one also gives ``clipwise_output`` and hooks on its layers).

    Parameters
    ----------
    checkpoint : Path
        A PANNs checkpoint: a dict whose ``"model"`` entry is the state dict (as on
        Zenodo, where it sits beside training extras such as ``"iteration"``), or a bare
        state dict.
    device : torch.device or str

    Raises
    ------
    ConfigError
        When the file is missing, too small, not loadable with ``weights_only=True``, or
        not a ``Cnn14_DecisionLevelMax`` with 527 classes.
    """
    return _load(checkpoint, device, _stock_model)


def load_detector(checkpoint: Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """:class:`animalvae.cnn14.Cnn14Detector` with ``checkpoint``'s weights on ``device``.

    The same ``framewise_output`` as :func:`load_model`'s module, to float32 rounding,
    built without random initialisation and cheaper to run; channels-last on a CPU. Built
    once per process; same parameters and errors as :func:`load_model`.
    """
    return _load(checkpoint, device, _detector)


def _load(checkpoint: Path, device: torch.device | str,
          make: Callable[[dict, Path, torch.device], torch.nn.Module]) -> torch.nn.Module:
    """Check, read and build (``make``) a model once per process: the cache of both loaders."""
    import torch

    path = Path(checkpoint).expanduser()
    if problems := check_checkpoint(path):
        raise ConfigError(problems)
    stat = path.stat()
    device = torch.device(device)
    key = (make.__name__, str(path.resolve()), stat.st_size, stat.st_mtime_ns, str(device))
    if key in _MODELS:
        return _MODELS[key]
    model = make(read_state_dict(path), path, device).to(device).eval()
    _MODELS.clear()  # one model per process: a new checkpoint replaces the old one
    _MODELS[key] = model
    log.info("loaded PANNs Cnn14_DecisionLevelMax (%s) from %s on %s", type(model).__name__,
             path, device)
    return model


def _stock_model(state: dict, path: Path, device: torch.device) -> torch.nn.Module:
    model = build_model()
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ConfigError(_not_cnn14(path, _short(exc))) from None
    return model


def _detector(state: dict, path: Path, device: torch.device) -> torch.nn.Module:
    from .cnn14 import Cnn14Detector, state_dict_problems

    if problems := state_dict_problems(state):
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise ConfigError(_not_cnn14(path, problems[0] + more))
    return Cnn14Detector(state, channels_last=device.type == "cpu")


def _not_cnn14(path: Path, why: str) -> str:
    return (f"detect.checkpoint={path} is not a Cnn14_DecisionLevelMax checkpoint with "
            f"{NUM_CLASSES} classes ({why}): {_how_to_get(path)}")


def read_state_dict(path: Path) -> dict:
    """The state dict in a checkpoint file, read with ``torch.load(weights_only=True)``.

    Besides ``"model"``, the PANNs training script saved ``"iteration"`` and the sampler's
    state: numpy integers and index arrays, which ``weights_only=True`` refuses by default.
    The numpy globals those pickle to (:func:`_numpy_data_globals`) are allowed for this one
    load: they rebuild plain data and run no other code. Only ``"model"`` is kept. A
    zip-format file (what ``torch.save`` writes) is memory-mapped rather than read into a
    second copy: the models copy what they keep.

    Raises
    ------
    ConfigError
        One line naming the file, when it cannot be unpickled that way or holds no state dict.
    """
    import pickle
    import zipfile

    import torch

    try:
        with torch.serialization.safe_globals(_numpy_data_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True,
                               mmap=zipfile.is_zipfile(path))
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError,
            zipfile.BadZipFile) as exc:
        raise ConfigError(f"detect.checkpoint={path} cannot be loaded "
                          f"({_unpickling_reason(exc)}): {_how_to_get(path)}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ConfigError(f"detect.checkpoint={path} holds a {type(state).__name__}, not a "
                          f"state dict: {_how_to_get(path)}")
    return state


def _numpy_data_globals() -> list:
    """What numpy scalars, dtypes and arrays pickle to, under numpy 1 and numpy 2 names.

    The Zenodo files were written with numpy 1 (``numpy.core.multiarray.scalar``); numpy 2
    writes ``numpy._core.multiarray.scalar``; both name the same function, so each is
    allowed under both spellings. Unpickling a dtype builds an instance of its concrete
    class (``numpy.dtypes.Int64DType``...), so the numeric and boolean ones are allowed too.
    """
    import numpy as np
    from numpy._core import multiarray

    allowed: list = [np.ndarray, np.dtype]
    allowed += sorted({type(np.dtype(code)) for code in "?bBhHiIlLqQefd"}, key=str)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed += [(multiarray.scalar, f"{module}.scalar"),
                    (multiarray._reconstruct, f"{module}._reconstruct")]
    return allowed


def _unpickling_reason(exc: BaseException) -> str:
    """``torch.load``'s multi-paragraph weights-only message cut down to what went wrong."""
    import re

    text = " ".join(str(exc).split())
    if found := re.search(r"Unsupported global: GLOBAL (\S+)", text):
        return f"it pickles {found[1]}, which weights_only=True does not allow"
    if found := re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text):
        return f"not a torch checkpoint, or a damaged one: {_short(found[1])}"
    return _short(exc)


def clear_model_cache() -> None:
    """Forget the model :func:`load_model` or :func:`load_detector` keeps (frees its ~1 GB;
    the next call reloads)."""
    _MODELS.clear()


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] + ("…" if len(text) > 200 else "") or type(exc).__name__


# --------------------------------------------------------------------------------------------
# Download (only when asked)
# --------------------------------------------------------------------------------------------

def download_models(checkpoint: Path, *, progress: bool = True,
                    checkpoint_url: str | None = None, labels_url: str | None = None,
                    home: Path | None = None, timeout_s: float = 30.0) -> Path:
    """Fetch the PANNs checkpoint to ``checkpoint`` and the AudioSet label CSV to ``~/panns_data``.

    A checkpoint that already passes :func:`check_checkpoint` is kept. Each file goes to a
    temp file beside its target, is size-checked, then renamed, so an interrupted or failed
    download never leaves a truncated file in place.

    Parameters
    ----------
    checkpoint : Path
        Where the checkpoint goes (``detect.checkpoint``).
    progress : bool
        Show a tqdm progress bar.
    checkpoint_url, labels_url : str or None
        Where to fetch from; None: :data:`CHECKPOINT_URL` (Zenodo record 3987831) and
        :data:`LABELS_URL` (AudioSet's CSV), read at call time.
    home : Path or None
        Home folder for ``panns_data/`` (default: ``Path.home()``).
    timeout_s : float
        Socket timeout per connection attempt and read, seconds.

    Returns
    -------
    Path
        The checkpoint.

    Raises
    ------
    ConfigError
        When a download fails (offline, HTTP error, short file), with how to get it by hand.
    """
    checkpoint = Path(checkpoint).expanduser()
    checkpoint_url = checkpoint_url or CHECKPOINT_URL
    labels_url = labels_url or LABELS_URL
    labels_path = (Path.home() if home is None else Path(home)) / _PACKAGE_LABELS
    try:
        _fetch(labels_url, labels_path, min_bytes=10_000, progress=False, timeout_s=timeout_s,
               hint="")
    except ConfigError as exc:  # not fatal: the shipped copy is just as good
        log.warning("%s; using the shipped copy %s", exc, LABELS_CSV)
    install_package_labels(home)  # a download with other than 527 rows is replaced too
    if not check_checkpoint(checkpoint):
        log.info("%s is already there (%d bytes); delete it to download again", checkpoint,
                 checkpoint.stat().st_size)
        return checkpoint
    _fetch(checkpoint_url, checkpoint, min_bytes=MIN_CHECKPOINT_BYTES, progress=progress,
           timeout_s=timeout_s, hint=_by_hand(checkpoint))
    log.info("saved %s", checkpoint)
    return checkpoint


def _fetch(url: str, target: Path, *, min_bytes: int, progress: bool, timeout_s: float,
           hint: str) -> None:
    """Download ``url`` to ``target`` atomically; ConfigError on any network or size problem."""
    from tqdm.auto import tqdm

    log.info("downloading %s -> %s", url, target)
    request = urllib.request.Request(url, headers={"User-Agent": "animalvae"})
    try:
        with atomic_path(target) as tmp:
            with urllib.request.urlopen(request, timeout=timeout_s) as response, \
                    tmp.open("wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                          desc=target.name, disable=not progress) as bar:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        bar.update(len(chunk))
            size = tmp.stat().st_size
            if (total is not None and size != total) or size < min_bytes:
                expected = total if total is not None else f">= {min_bytes}"
                raise ConfigError(f"download of {url} is incomplete ({size} bytes, expected "
                                  f"{expected}){_or(hint)}")
    except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets
        reason = getattr(exc, "reason", None) or exc
        raise ConfigError(f"cannot download {url} ({_short(reason)}): are you online?"
                          f"{_or(hint)}") from None


def _or(hint: str) -> str:
    return f"; otherwise {hint}" if hint else ""
