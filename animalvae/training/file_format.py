"""The versioned files of stage 5: reading one safely and bringing an older version up to date.

Each kind of file (the sound model's ``model.pth``/``last.pth``, ``sampler.pth``, the sound ->
image model's ``images/model.pth``/``images/last.pth``) is a dict of plain data (loadable with
``torch.load(weights_only=True)``) whose ``format`` entry names its kind and version:
``animalvae.<kind>/<version>``, e.g. ``animalvae.vae/2``. The version changes whenever what the
file holds changes. The module that owns a kind defines its current version and one upgrade
function (``upgrade_checkpoint``, ``upgrade_pairs_checkpoint``, ``upgrade_sampler``) that hands
:func:`upgrade` the steps from each older version to the next; every loader of that kind reads
through it, so the rest of the code only ever sees the current version.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["format_tag", "read_payload", "upgrade", "require_keys", "library_versions"]

#: One upgrade step: a payload of version n -> the same content as version n + 1 writes it.
Step = Callable[[dict[str, Any]], dict[str, Any]]


def format_tag(kind: str, version: int) -> str:
    """The ``format`` entry of a file of ``kind`` at ``version``: ``animalvae.<kind>/<version>``."""
    return f"animalvae.{kind}/{version}"


def library_versions() -> dict[str, str]:
    """The versions of torch, torchaudio and animalvae, for the ``versions`` entry of a file."""
    import torchaudio

    from .. import __version__
    # str(): torch.__version__ is a str subclass that weights_only loading refuses
    return {"torch": str(torch.__version__), "torchaudio": str(torchaudio.__version__),
            "animalvae": str(__version__)}


def _load_failure(path: Path, exc: Exception) -> str:
    """A short reason why ``torch.load(path, weights_only=True)`` raised ``exc``."""
    text = str(exc)
    if "Unsupported global:" in text:  # a real pickle holding more than plain data
        reason = text[text.index("Unsupported global:"):].split(". Please")[0]
        return f"cannot load it safely: {' '.join(reason.split())[:200]}"
    if path.stat().st_size == 0:
        return "not a PyTorch checkpoint (empty file)"
    return "not a PyTorch checkpoint (damaged or another format)"


def read_payload(path: Path, *, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, any failure a one-line ConfigError.

    ``what`` names the file in the messages (``model.pth``, ``sampler.pth``, ...). The result is
    whatever the file holds: :func:`upgrade` checks that it is a payload of the right kind.

    Raises
    ------
    ConfigError
        When the file is missing, not a torch file, or holds something other than plain data.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found: train first (vae.py train), or pass --run-dir "
                          f"DIR with the run folder that holds {what}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - torch.load on an arbitrary user file
        raise ConfigError(f"{path} is not a {what} written by vae.py train "
                          f"({_load_failure(path, exc)})") from None


def _version_of(data: Any, kind: str) -> int | None:
    """The version in ``data``'s format tag when it is a payload of ``kind`` (else None)."""
    tag = data.get("format") if isinstance(data, dict) else None
    prefix = format_tag(kind, 0)[:-1]
    if not isinstance(tag, str) or not tag.startswith(prefix) or not tag[len(prefix):].isdigit():
        return None
    return int(tag[len(prefix):])


def upgrade(data: Any, *, kind: str, current: int, steps: Mapping[int, Step], path: Path,
            what: str) -> dict[str, Any]:
    """``data`` (a payload read from ``path``) brought from its version to ``current``.

    Parameters
    ----------
    data : Any
        What :func:`read_payload` returned.
    kind : str
        The file kind of the format tag (``vae``, ``sound_image``, ``sampler``).
    current : int
        The version this code writes.
    steps : mapping of int -> callable
        ``steps[n]`` takes a payload of version n to version n + 1 (and retags it); the
        versions it has no step from are too old to read.
    path : Path
    what : str
        The file's name for the messages.

    Raises
    ------
    ConfigError
        When ``data`` is not a payload of ``kind``, or its version is newer than ``current``
        or older than the oldest step; one line naming ``path``.
    """
    version = _version_of(data, kind)
    if version is None:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"{path} is not a {what} written by this version of vae.py train "
                          f"(format {found!r}, expected {format_tag(kind, current)!r}); retrain")
    if version > current:
        raise ConfigError(f"{path} is a {what} of format {format_tag(kind, version)!r}, newer "
                          f"than this version of animalvae reads ({format_tag(kind, current)!r})"
                          "; update animalvae")
    while version < current:
        if version not in steps:
            raise ConfigError(f"{path} is a {what} of format {format_tag(kind, version)!r}, "
                              f"too old to upgrade to {format_tag(kind, current)!r}; retrain")
        data = steps[version](dict(data))
        version += 1
        data["format"] = format_tag(kind, version)
    return data


def require_keys(data: Mapping[str, Any], keys: tuple[str, ...], *, path: Path,
                 what: str) -> None:
    """A one-line ConfigError naming ``path`` when ``data`` lacks any of ``keys``."""
    missing = [k for k in keys if k not in data]
    if missing:
        raise ConfigError(f"{path} lacks {', '.join(missing)}: not a complete {what}; retrain")
