"""Choosing the torch device: ``cuda`` when present, else ``mps``, else ``cpu``."""

from __future__ import annotations

import torch

from .errors import ConfigError

__all__ = ["pick_device", "device_of"]


def pick_device(name: str = "auto", *, key: str = "device") -> torch.device:
    """The device named by a config value (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``).

    ``key`` is the config key the value came from (``train.device``), named in errors.

    Raises
    ------
    ConfigError
        When the named device is not available here.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key}={name!r} is not a torch device (auto, cpu, cuda, mps)") \
            from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={name!r} but CUDA is not available here (use auto or cpu)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key}={name!r} but MPS is not available here (use auto or cpu)")
    return device


def device_of(module: torch.nn.Module) -> torch.device:
    """The device a module's parameters live on (a loaded model's, for its inputs)."""
    return next(module.parameters()).device
