"""Synthetic animal calls and video frames for the offline demo: numpy arrays in, arrays out.

Each group has a call that is easy to tell apart by ear and in a spectrogram:

- ``dogs``: :func:`bark`, five to eight short, noisy harmonic bursts (f0 about 350-600 Hz) with a
  sharp attack and a falling pitch;
- ``cats``: :func:`meow`, one gliding harmonic tone (f0 rising to about 800 Hz and falling
  back) with vibrato and a soft envelope;
- ``birds``: :func:`chirp`, a run of fast frequency sweeps between 2.5 and 7 kHz.

:func:`clip_audio` places one call at a random time over quieter pink background noise, so a
detector that picks the loudest window (``detect.backend: energy``) finds the call. Calls last
about 1.5-2.7 s, so they nearly fill a 3 s window and sit in it at similar places.
:func:`video_frame` draws a group-coloured scene whose shape jumps while the animal calls, its
size following the call's pitch (the ``pitch`` argument of both); where it stands and how bright
the scene is (``place``, ``light``) vary from clip to clip and are not in the sound, as a real
video's pose and light are not.
Everything is seeded through the ``rng`` argument; nothing here touches files.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["CALLS", "CALL_MARGIN_S", "GROUP_STYLES", "bark", "meow", "chirp", "pink_noise",
           "clip_audio", "video_frame"]


def _envelope(n: int, *, attack: int, release: int) -> np.ndarray:
    """A linear attack, flat top and raised-cosine release [shape=(n,)], values in [0, 1]."""
    env = np.ones(n)
    attack, release = min(attack, n), min(release, n)
    env[:attack] = np.linspace(0.0, 1.0, attack, endpoint=False)
    if release:
        env[n - release:] *= 0.5 * (1 + np.cos(np.linspace(0, np.pi, release)))
    return env


def _harmonics(f0_hz: np.ndarray, *, sr: int, amplitudes: list[float]) -> np.ndarray:
    """A sum of harmonics of a time-varying f0 [shape=(n,)]; harmonics above Nyquist are dropped."""
    phase = 2 * np.pi * np.cumsum(f0_hz) / sr
    y = np.zeros_like(f0_hz)
    for k, amp in enumerate(amplitudes, start=1):
        # Silence each harmonic where it would alias (the glide may cross Nyquist).
        y += amp * np.sin(k * phase) * (k * f0_hz < 0.45 * sr)
    return y


def _noise(n: int, *, sr: int, rng: np.random.Generator, cutoff_hz: float) -> np.ndarray:
    """Gaussian noise through a first-order low-pass at ``cutoff_hz``, unit RMS [shape=(n,)]."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(1 + (np.fft.rfftfreq(n, 1 / sr) / cutoff_hz) ** 2)
    y = np.fft.irfft(spectrum, n)
    return y / (np.sqrt(np.mean(y ** 2)) + 1e-12)


def _peak_normalise(y: np.ndarray, peak: float) -> np.ndarray:
    top = float(np.max(np.abs(y)))
    return y * (peak / top) if top > 0 else y


def bark(*, sr: int, rng: np.random.Generator, pitch: float = 0.5) -> np.ndarray:
    """A dog-like bark: a run of 5-8 short, noisy harmonic bursts.

    Parameters
    ----------
    sr : int
        Sample rate in Hz (> 16000 keeps the upper harmonics).
    rng : np.random.Generator
        Source of all randomness (number of barks, timing, roughness).
    pitch : float
        In [0, 1]: f0 from about 350 Hz (0) to 600 Hz (1).

    Returns
    -------
    np.ndarray [shape=(n,), dtype=float32]
        The call, peak 1.0, about 1.5-2.6 s long.
    """
    f0 = (350 + 250 * pitch) * rng.uniform(0.97, 1.03)
    parts = []
    for _ in range(int(rng.integers(5, 9))):
        n = int(rng.uniform(0.12, 0.2) * sr)
        t = np.arange(n) / sr
        # A bark's pitch falls during the burst; the noise makes it rough rather than tonal.
        f0_hz = f0 * rng.uniform(0.95, 1.05) * (1.2 - 0.35 * t / t[-1])
        voiced = _harmonics(f0_hz, sr=sr, amplitudes=[1.0, 0.8, 0.6, 0.45, 0.3, 0.2, 0.12, 0.08])
        # Roughness: the harmonics wobble in amplitude (noise below 300 Hz smears each one)
        # and a low-passed hiss sits under them.
        wobble = 1 + 0.6 * _noise(n, sr=sr, rng=rng, cutoff_hz=300.0)
        rough = voiced * wobble + 0.5 * _noise(n, sr=sr, rng=rng, cutoff_hz=4 * f0)
        decay = np.exp(-t / rng.uniform(0.06, 0.11))
        parts.append(rough * decay * _envelope(n, attack=int(0.004 * sr),
                                                release=int(0.02 * sr)))
        parts.append(np.zeros(int(rng.uniform(0.12, 0.25) * sr)))
    return _peak_normalise(np.concatenate(parts[:-1]), 1.0).astype(np.float32)


def meow(*, sr: int, rng: np.random.Generator, pitch: float = 0.5) -> np.ndarray:
    """A cat-like meow: one harmonic tone whose pitch glides up and back down, with vibrato.

    Parameters
    ----------
    sr : int
        Sample rate in Hz.
    rng : np.random.Generator
        Source of all randomness (length, shape of the contour, vibrato).
    pitch : float
        In [0, 1]: the glide from about 380 to 700 Hz (0) up to 520 to 950 Hz (1).

    Returns
    -------
    np.ndarray [shape=(n,), dtype=float32]
        The call, peak 1.0, 1.8-2.6 s long.
    """
    n = int(rng.uniform(1.8, 2.6) * sr)
    u = np.linspace(0.0, 1.0, n)
    low = (380 + 140 * pitch) * rng.uniform(0.97, 1.03)
    high = (700 + 250 * pitch) * rng.uniform(0.97, 1.03)
    top_at = rng.uniform(0.3, 0.5)
    # "mi-aa-ow": up to the top of the glide, then down again, slightly below the start.
    fall = np.clip((u - top_at) / (1 - top_at), 0, 1) ** 1.5
    contour = np.where(u < top_at, low + (high - low) * np.sin(0.5 * np.pi * u / top_at),
                       high - (high - 0.85 * low) * fall)
    vibrato = 1 + 0.015 * np.sin(2 * np.pi * rng.uniform(5, 7) * u * n / sr)
    y = _harmonics(contour * vibrato, sr=sr, amplitudes=[1.0, 0.7, 0.5, 0.35, 0.2, 0.1])
    y *= _envelope(n, attack=int(0.08 * sr), release=int(0.25 * sr))
    return _peak_normalise(y, 1.0).astype(np.float32)


def chirp(*, sr: int, rng: np.random.Generator, pitch: float = 0.5) -> np.ndarray:
    """A bird-like chirp: a run of 14-20 fast frequency sweeps (2.5-7 kHz), each 40-90 ms.

    Parameters
    ----------
    sr : int
        Sample rate in Hz (>= 16000 for the top of the sweeps).
    rng : np.random.Generator
        Source of all randomness (number, direction and timing of the sweeps).
    pitch : float
        In [0, 1]: sweeps from about 2.5 to 5 kHz (0) up to 3.5 to 7 kHz (1).

    Returns
    -------
    np.ndarray [shape=(n,), dtype=float32]
        The call, peak 1.0, about 1.7-2.7 s long.
    """
    parts = []
    upward = rng.random() < 0.7
    for _ in range(int(rng.integers(14, 21))):
        n = int(rng.uniform(0.04, 0.09) * sr)
        lo = (2500 + 1000 * pitch) * rng.uniform(0.97, 1.03)
        hi = min((5000 + 2000 * pitch) * rng.uniform(0.97, 1.03), 0.45 * sr)
        u = np.linspace(0.0, 1.0, n)
        f_hz = lo * (hi / lo) ** (u if upward else 1 - u)   # exponential sweep
        y = _harmonics(f_hz, sr=sr, amplitudes=[1.0, 0.15])
        parts.append(y * np.hanning(n))
        parts.append(np.zeros(int(rng.uniform(0.03, 0.1) * sr)))
    return _peak_normalise(np.concatenate(parts[:-1]), 1.0).astype(np.float32)


#: The call of each demo group.
CALLS: dict[str, Callable[..., np.ndarray]] = {"dogs": bark, "cats": meow, "birds": chirp}


def pink_noise(n: int, *, rng: np.random.Generator) -> np.ndarray:
    """Pink (1/f power) noise with unit RMS [shape=(n,), dtype=float32]."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spectrum.size)
    spectrum[1:] /= np.sqrt(f[1:])
    spectrum[0] = 0.0
    y = np.fft.irfft(spectrum, n)
    return (y / (np.sqrt(np.mean(y ** 2)) + 1e-12)).astype(np.float32)


def clip_audio(group: str, *, seconds: float, sr: int, rng: np.random.Generator,
               call_between_s: tuple[float, float] | None = None, call_peak: float = 0.5,
               noise_dbfs: float = -42.0, pitch: float = 0.5) -> tuple[np.ndarray, float, float]:
    """A clip of background noise with one call of ``group`` at a random time.

    Parameters
    ----------
    group : str
        A key of :data:`CALLS` (``dogs``, ``cats``, ``birds``).
    seconds : float
        Length of the clip, > 0.
    sr : int
        Sample rate in Hz.
    rng : np.random.Generator
        Source of all randomness (the call itself and where it sits).
    call_between_s : (float, float) or None
        The call lies entirely inside this span of the clip (seconds); default the whole clip.
    call_peak : float
        Peak amplitude of the call, in (0, 1); the default leaves headroom, as AAC
        re-encoding (yt-dlp's exact cut) can overshoot and clip a louder call.
    noise_dbfs : float
        RMS level of the background noise in dBFS (the call's RMS is about -15 to -25 dBFS).
    pitch : float
        In [0, 1]: how high the call is (:func:`bark`, :func:`meow`, :func:`chirp`); the
        demo's scene shows the same value as the animal's size (:func:`video_frame`).

    Returns
    -------
    y : np.ndarray [shape=(round(seconds * sr),), dtype=float32]
        The mixed clip, within [-1, 1].
    call_start_s, call_end_s : float
        Where the call sits in the clip.

    Raises
    ------
    ValueError
        For an unknown group, or a span too short for the call.
    """
    if group not in CALLS:
        raise ValueError(f"group={group!r} has no synthetic call (one of {', '.join(CALLS)})")
    n = int(round(seconds * sr))
    lo_s, hi_s = call_between_s if call_between_s is not None else (0.0, seconds)
    call = CALLS[group](sr=sr, rng=rng, pitch=pitch) * call_peak
    latest_s = min(hi_s, seconds) - call.size / sr
    if latest_s < max(lo_s, 0.0):
        raise ValueError(f"call_between_s={call_between_s} is too short for a "
                         f"{call.size / sr:.2f} s call in a {seconds} s clip")
    start = int(rng.uniform(max(lo_s, 0.0), latest_s) * sr)
    y = pink_noise(n, rng=rng) * 10 ** (noise_dbfs / 20)
    y[start:start + call.size] += call
    return np.clip(y, -1.0, 1.0).astype(np.float32), start / sr, (start + call.size) / sr


#: Seconds before and after a call during which the scene shows the animal calling.
CALL_MARGIN_S = 0.3
#: Per group: sky colour, ground colour, shape colour (RGB) and shape; the three scenes
#: differ in every colour, so a picture's group shows at any size.
GROUP_STYLES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int],
                              tuple[int, int, int], str]] = {
    "dogs": ((235, 200, 150), (150, 110, 70), (140, 60, 30), "square"),
    "cats": ((60, 60, 100), (120, 110, 100), (230, 230, 230), "disc"),
    "birds": ((120, 200, 250), (40, 110, 50), (250, 210, 30), "triangle"),
}


def video_frame(group: str, t_s: float, *, call_s: tuple[float, float], width: int = 160,
                height: int = 120, pitch: float = 0.5, place: float = 0.5,
                light: float = 1.0) -> np.ndarray:
    """One frame of a group's scene at time ``t_s``: a shape walks along; while calling it
    stands still at ``place``, raised, its size following the call's pitch.

    Parameters
    ----------
    group : str
        A key of :data:`GROUP_STYLES`.
    t_s : float
        Time in the clip, seconds.
    call_s : (float, float)
        When the call sounds (the shape is centred and raised then, so the frame the detector
        picks at the call's peak visibly differs from the rest).
    width, height : int
        Frame size in pixels (even numbers suit H.264).
    pitch : float
        In [0, 1]: the call's pitch (:func:`clip_audio`). While calling, the shape's size
        follows it (a fifth of the frame's height at 0, almost half at 1), so a picture made
        from the sound alone can show more than the group: how high the animal called.
    place : float
        In [0, 1]: where the animal stands while calling, from a quarter of the width (0) to
        three quarters (1). Nothing in the sound tells it.
    light : float
        In (0, 1]: the brightness of sky and ground (the time of day). Nothing in the sound
        tells it either.

    Returns
    -------
    np.ndarray [shape=(height, width, 3), dtype=uint8]
        RGB frame.
    """
    sky, ground, colour, shape = GROUP_STYLES[group]
    rows = np.linspace(0.6, 1.0, height)[:, None, None]     # a gradient: never a flat frame
    frame = np.empty((height, width, 3))
    horizon = int(height * 0.65)
    frame[:horizon] = np.array(sky) * light * rows[:horizon]
    frame[horizon:] = np.array(ground) * light * rows[horizon:]
    # A moment's margin each side: the frame picked at a call's loudest instant may be one
    # video frame before its first burst or after its last.
    calling = call_s[0] - CALL_MARGIN_S <= t_s <= call_s[1] + CALL_MARGIN_S
    size = int(height * ((0.2 + 0.25 * pitch) if calling else 0.2))
    # It walks along, and stands still at its place while it calls (so the frame at the call
    # shows what the sound tells, the group and, by its size, the pitch, and what it does not).
    cx = int((0.25 + 0.5 * place) * width) if calling else \
        int((0.1 + 0.8 * ((t_s / 12.0) % 1.0)) * width)
    cy = horizon - size // 2 - (int(height * 0.15) if calling else 0)
    yy, xx = np.mgrid[0:height, 0:width]
    dx, dy = xx - cx, yy - cy
    if shape == "square":
        mask = (np.abs(dx) <= size // 2) & (np.abs(dy) <= size // 2)
    elif shape == "disc":
        mask = dx ** 2 + dy ** 2 <= (size // 2) ** 2
    else:
        mask = (dy <= size // 2) & (dy >= -size // 2) & (np.abs(dx) <= (dy + size // 2) // 2)
    frame[mask] = colour
    return np.clip(frame, 0, 255).astype(np.uint8)
