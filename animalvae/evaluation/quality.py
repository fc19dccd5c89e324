"""How good the generated sounds are: measured, per group, against the run's real clips.

Every figure compares what the model makes with real clips of the same run *sent through the
same representation and Griffin-Lim*, so the loss of phase is never counted against the model,
and every input is a peak-normalised waveform at the spectrogram's sample rate:

- **features** (:func:`logmel_stats`): per mel band, the mean, the standard deviation and the
  mean absolute frame-to-frame change of the log-mel spectrogram (dB below the clip's peak):
  what the sound's spectrum is, how much it varies, and how fast;
- **a judge** (:func:`fit_judge`): a logistic regression on standardised features, fit on the
  run's *training* clips; its accuracy on the real *validation* clips is the ceiling that the
  accuracy of samples and reconstructions is read against;
- **Fréchet distance** (:func:`animalvae.evaluation.image_quality.frechet_distance`, Heusel et al.
  2017, shared with the image half) between two feature sets, in the judge's standardised
  units; with a PANNs checkpoint, the same on Cnn14's
  2048-d embeddings (FAD, Kilgour et al. 2019, :func:`panns_embeddings`);
- **diversity** (:func:`diversity_ratio`): the median pairwise distance among a group's
  samples over the same among its real clips (near 0: all samples alike);
- **nearest-training ratio** (:func:`nearest_ratio`): how far each sample is from its nearest
  training clip, over how far real validation clips are from theirs (near 0: copying);
- **sharpness** (:func:`spectral_contrast`): the mean spectral contrast (peak minus valley per
  octave band, dB; librosa) over that of real clips; a blurred spectrogram scores below 1.

The functions here are pure (arrays in, numbers out; deterministic); :func:`quality_report`
puts them together and :func:`animalvae.sound.generate.evaluate` feeds it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .image_quality import accuracy, frechet_distance

__all__ = ["logmel_stats", "spectral_contrast", "fit_judge",
           "diversity_ratio", "nearest_ratio", "panns_embeddings", "space_figures",
           "quality_report",
           "N_MELS", "FRAME_SECONDS"]

#: Mel bands of the judge's features.
N_MELS = 64
#: Analysis frame of the features and of the spectral contrast, seconds (rounded to a power
#: of two in samples): about 46 ms, a usual size for animal calls.
FRAME_SECONDS = 0.046
_FLOOR_DB = 80.0   # log-mel values are clipped this far below each clip's peak
_CONTRAST_FMIN = 200.0  # Hz, the lower edge of the first spectral-contrast octave
_CONTRAST_FRAMES = 5    # frames (hops of FRAME_SECONDS / 4) the power is averaged over


def _frame(sample_rate: int) -> tuple[int, int]:
    """``(n_fft, hop)`` for ``sample_rate``: a power-of-two frame of about FRAME_SECONDS."""
    n_fft = 2 ** round(math.log2(FRAME_SECONDS * sample_rate))
    return n_fft, n_fft // 4


def logmel_stats(waves: np.ndarray, sample_rate: int) -> np.ndarray:
    """Log-mel statistics of each waveform: what the judge and the distances compare.

    Parameters
    ----------
    waves : np.ndarray [shape=(N, n_samples), float]
    sample_rate : int
        Hz.

    Returns
    -------
    np.ndarray [shape=(N, 3 * N_MELS), float64]
        Per band: mean over frames, standard deviation over frames, mean absolute difference
        between consecutive frames, of the log-mel spectrogram in dB relative to the clip's
        peak (floored at -80 dB, so silence and level do not dominate).
    """
    import librosa

    waves = np.asarray(waves, dtype=np.float32)
    n_fft, hop = _frame(sample_rate)
    power = librosa.feature.melspectrogram(y=waves, sr=sample_rate, n_fft=n_fft,
                                           hop_length=hop, n_mels=N_MELS)  # (N, M, T)
    db = 10.0 * np.log10(np.maximum(power, 1e-12))
    db -= db.max(axis=(1, 2), keepdims=True)
    db = np.maximum(db, -_FLOOR_DB)
    change = np.abs(np.diff(db, axis=2)).mean(axis=2)                     # (N, M)
    return np.concatenate([db.mean(axis=2), db.std(axis=2), change], axis=1).astype(np.float64)


def spectral_contrast(waves: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mean spectral contrast of each waveform (dB; higher is sharper).

    ``librosa.feature.spectral_contrast`` (octave bands from 200 Hz, 6 or as many as fit below
    Nyquist, and the rest; peak minus valley of each band per frame, on the power averaged
    over 5 frames, about 60 ms), averaged over bands and over the frames that hold sound
    (within 60 dB of the clip's loudest frame), so trailing silence does not count.

    Parameters
    ----------
    waves : np.ndarray [shape=(N, n_samples)]
    sample_rate : int

    Returns
    -------
    np.ndarray [shape=(N,)]
    """
    import librosa

    waves = np.asarray(waves, dtype=np.float32)
    n_fft, hop = _frame(sample_rate)
    from scipy.ndimage import uniform_filter1d

    power = np.abs(librosa.stft(waves, n_fft=n_fft, hop_length=hop)) ** 2  # (N, F, T)
    # averaged over a few frames: the random fluctuation of a noisy spectrum (which Griffin-Lim
    # adds to any magnitude) evens out, while harmonics and other lasting peaks stay
    mag = np.sqrt(uniform_filter1d(power, _CONTRAST_FRAMES, axis=-1, mode="nearest"))
    # librosa's default 6 octaves from 200 Hz, fewer where they would pass Nyquist
    n_bands = min(6, math.ceil(math.log2(sample_rate / 2 / _CONTRAST_FMIN)))
    contrast = librosa.feature.spectral_contrast(
        S=mag, sr=sample_rate, n_fft=n_fft, hop_length=hop, fmin=_CONTRAST_FMIN,
        n_bands=n_bands).mean(axis=1)                                     # (N, T)
    energy = 10.0 * np.log10(np.maximum((mag ** 2).sum(axis=1), 1e-20))  # (N, T)
    loud = energy >= energy.max(axis=1, keepdims=True) - 60.0
    return (contrast * loud).sum(axis=1) / np.maximum(loud.sum(axis=1), 1)


def fit_judge(features: np.ndarray, labels: np.ndarray):
    """The judge: standardisation + multinomial logistic regression, fit on real clips.

    Parameters
    ----------
    features : np.ndarray [shape=(N, D)]
    labels : np.ndarray [shape=(N,), int]
        Group indices; at least two distinct groups.

    Returns
    -------
    sklearn.pipeline.Pipeline
        Fit; deterministic (lbfgs). ``judge[0]`` is its scaler, which the distances reuse.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    judge = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    return judge.fit(features, labels)


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances: (N, D), (M, D) -> (N, M)."""
    d2 = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(d2, 0.0))


def _median_spread(x: np.ndarray) -> float:
    """Median distance over the distinct pairs of rows of ``x`` (N >= 2)."""
    d = _pairwise(x, x)
    return float(np.median(d[np.triu_indices(len(x), k=1)]))


def diversity_ratio(samples: np.ndarray, real: np.ndarray) -> float:
    """Median pairwise distance among ``samples`` over that among ``real`` (both >= 2 rows).

    1 means the samples spread as much as real clips do; near 0, they are all alike.
    """
    return _median_spread(samples) / max(_median_spread(real), 1e-12)


def nearest_ratio(samples: np.ndarray, train: np.ndarray,
                  val: np.ndarray | None = None) -> float:
    """How far samples lie from their nearest training clip, relative to real clips.

    ``median_i min_j |s_i - t_j|`` over ``median_k min_j |v_k - t_j|``: about 1 when samples
    are as new as real clips the model never saw, near 0 when they copy training clips.
    Without ``val`` the reference is each training clip's nearest *other* training clip
    (leave one out; ``train`` needs 2 rows or more), for a fit that has no held-out clips.
    """
    sample_near = _pairwise(samples, train).min(axis=1)
    if val is None:
        d = _pairwise(train, train)
        np.fill_diagonal(d, np.inf)
        real_near = d.min(axis=1)
    else:
        real_near = _pairwise(val, train).min(axis=1)
    return float(np.median(sample_near) / max(float(np.median(real_near)), 1e-12))


def panns_embeddings(waves: np.ndarray, sample_rate: int, checkpoint: Path, *,
                     device: str = "cpu", batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """PANNs Cnn14 clip embeddings and top AudioSet class of each waveform.

    The embedding is the 2048-d output of the model's ``fc1`` layer (after its ReLU), averaged
    over time; the top class is the arg-max of the clip-wise scores.

    Parameters
    ----------
    waves : np.ndarray [shape=(N, n_samples)]
    sample_rate : int
        Resampled to PANNs' 32 kHz when different.
    checkpoint : Path
        ``detect.checkpoint`` (see :func:`animalvae.panns.load_model`).
    device : str
    batch_size : int

    Returns
    -------
    embeddings : np.ndarray [shape=(N, 2048)]
    top : np.ndarray [shape=(N,), int]
        AudioSet class indices.

    Raises
    ------
    ConfigError
        When the checkpoint is missing or not a Cnn14_DecisionLevelMax.
    """
    import torch
    import torchaudio

    from .. import panns

    model = panns.load_model(checkpoint, device)
    captured: list[torch.Tensor] = []
    hook = model.fc1.register_forward_hook(lambda _m, _i, out: captured.append(out))
    embeddings, top = [], []
    try:
        with torch.no_grad():
            for start in range(0, len(waves), batch_size):
                x = torch.as_tensor(np.asarray(waves[start:start + batch_size]),
                                    dtype=torch.float32)
                if sample_rate != panns.SAMPLE_RATE:
                    x = torchaudio.functional.resample(x, sample_rate, panns.SAMPLE_RATE)
                captured.clear()
                out = model(x.to(device))
                embeddings.append(torch.relu(captured[0]).mean(dim=1).cpu().numpy())
                top.append(out["clipwise_output"].argmax(dim=1).cpu().numpy())
    finally:
        hook.remove()
    return np.concatenate(embeddings), np.concatenate(top)


def _share(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


Labelled = tuple[np.ndarray, np.ndarray]


def space_figures(groups: Sequence[str], *, fit: Labelled, ceiling: Labelled, train: Labelled,
                  val: Labelled, samples: Labelled, reconstructions: np.ndarray,
                  reference: np.ndarray, real: np.ndarray,
                  standardised: bool = True) -> dict[str, Any]:
    """Accuracy, diversity, nearest-training ratio and Fréchet distances in one feature space.

    The judge (:func:`fit_judge`) is fit on ``fit``; its accuracy on ``ceiling`` is what the
    accuracy of samples and reconstructions is read against. In-sample, ``fit`` is the run's
    training clips and ``ceiling`` its held-out ones; against independent recordings, ``fit``
    is those recordings and ``ceiling`` the run's own real clips.

    Parameters
    ----------
    groups : list of str
        Group names; labels index into them.
    fit, ceiling, train, val, samples : (np.ndarray [shape=(N, D)], np.ndarray [shape=(N,)])
        Features and group labels: the judge's clips, the clips that give its ceiling, the
        run's real training and held-out clips (references of diversity and novelty), samples.
    reconstructions : np.ndarray [shape=(len(val[0]), D)]
        Features of the reconstructions of ``val``, in its order.
    reference, real : np.ndarray [shape=(N, D)]
        Fréchet distances of samples and reconstructions are to ``reference``; that of
        ``real`` to ``reference`` is the floor a model is read against.
    standardised : bool
        Distances in the judge's standardised units (hand-made features of mixed scales), or
        in the features' own (an embedding, as FAD does).

    Returns
    -------
    dict
        ``{"overall": {...}, "groups": {name: {...}}, "frechet": {...}}``: accuracies
        (``ceiling``, ``samples``, ``reconstructions`` and their ratios to the ceiling),
        ``diversity``, ``nearest_training``; overall diversity and novelty are group means.
    """
    judge = fit_judge(*fit)
    scale = judge[0].transform if standardised else (lambda x: x)
    (train_x, train_y), (val_x, val_y), (gen_x, gen_y) = train, val, samples
    real_x, real_y = scale(np.concatenate([train_x, val_x])), np.concatenate([train_y, val_y])
    train_s, val_s, gen_s = scale(train_x), scale(val_x), scale(gen_x)
    per_group: dict[str, dict[str, float]] = {}
    for g, name in enumerate(groups):
        ce, va, ge = ceiling[1] == g, val_y == g, gen_y == g
        if not (ce.any() and va.any() and ge.any()):
            continue
        row = {"ceiling": accuracy(judge, ceiling[0][ce], ceiling[1][ce]),
               "samples": accuracy(judge, gen_x[ge], gen_y[ge]),
               "reconstructions": accuracy(judge, reconstructions[va], val_y[va])}
        for key in ("samples", "reconstructions"):
            row[f"{key}_vs_ceiling"] = row[key] / max(row["ceiling"], 1e-12)
        if ge.sum() >= 2 and (real_y == g).sum() >= 2:
            row["diversity"] = diversity_ratio(gen_s[ge], real_x[real_y == g])
        if (train_y == g).any():
            row["nearest_training"] = nearest_ratio(gen_s[ge], train_s[train_y == g],
                                                    val_s[va])
        per_group[name] = row
    overall: dict[str, float] = {
        "ceiling": accuracy(judge, *ceiling),
        "samples": accuracy(judge, gen_x, gen_y),
        "reconstructions": accuracy(judge, reconstructions, val_y),
    }
    for key in ("samples", "reconstructions"):
        overall[f"{key}_vs_ceiling"] = overall[key] / max(overall["ceiling"], 1e-12)
    for key in ("diversity", "nearest_training"):
        overall[key] = _share([row[key] for row in per_group.values() if key in row])
    frechet = {"samples": frechet_distance(gen_s, scale(reference)),
               "reconstructions": frechet_distance(scale(reconstructions), scale(reference)),
               "real_train": frechet_distance(scale(real), scale(reference))}
    return {"overall": overall, "groups": per_group, "frechet": frechet}


def _in_sample(groups: Sequence[str], feats: dict[str, np.ndarray], labels: dict[str, np.ndarray],
               *, standardised: bool) -> dict[str, Any]:
    """:func:`space_figures` with the judge fit on the run's training clips."""
    pair = {k: (feats[k], labels[k]) for k in ("train", "val", "gen")}
    return space_figures(groups, fit=pair["train"], ceiling=pair["val"], train=pair["train"],
                         val=pair["val"], samples=pair["gen"], reconstructions=feats["rec"],
                         reference=feats["val"], real=feats["train"], standardised=standardised)


def _independent(groups: Sequence[str], feats: dict[str, np.ndarray],
                 labels: dict[str, np.ndarray], *, standardised: bool) -> dict[str, Any]:
    """:func:`space_figures` with the judge fit on recordings the model never saw."""
    real = (np.concatenate([feats["train"], feats["val"]]),
            np.concatenate([labels["train"], labels["val"]]))
    pair = {k: (feats[k], labels[k]) for k in ("train", "val", "gen", "judge")}
    return space_figures(groups, fit=pair["judge"], ceiling=real, train=pair["train"],
                         val=pair["val"], samples=pair["gen"], reconstructions=feats["rec"],
                         reference=feats["judge"], real=real[0], standardised=standardised)


def quality_report(*, groups: Sequence[str], sample_rate: int,
                   train: Labelled, val: Labelled, samples: Labelled,
                   reconstructions: np.ndarray, independent: Labelled | None = None,
                   embedding: Callable[[np.ndarray, int], np.ndarray] | None = None,
                   panns: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every quality figure of a run, per group and overall.

    Parameters
    ----------
    groups : list of str
        Group names; labels index into it.
    sample_rate : int
    train, val : (waves, labels)
        Real clips through the representation and Griffin-Lim: ``(N, n)`` float and ``(N,)``
        int. ``train`` fits the judge; ``val`` gives the ceiling and the references.
    samples : (waves, labels)
        Generated clips.
    reconstructions : np.ndarray [shape=(N_val, n)]
        The model's reconstructions of the ``val`` clips, in the same order.
    independent : (waves, labels) or None
        Real recordings the model never trained on (other sources, say), through the same
        Griffin-Lim: judges fit on them give the out-of-sample figures (``"independent"``).
    embedding : callable or None
        ``(waves, sample_rate) -> (N, D)``, a pretrained network's embedding
        (:func:`animalvae.evaluation.birdnet.birdnet_embeddings`): the same figures in its space
        (``"embedding"``), distances in its own units as FAD takes them.
    panns : dict or None
        ``{"checkpoint": Path, "device": str, "classes": {group: [AudioSet class names or
        indices]}}`` (``detect.*``'s) for the PANNs figures; None leaves them out.

    Returns
    -------
    dict
        ``{"overall": {...}, "groups": {name: {...}}, "frechet": {...}}`` on log-mel
        statistics, with ``sharpness_samples`` and ``sharpness_reconstructions`` per group;
        ``"embedding"`` the same in the embedding's space; ``"independent"``:
        ``{"logmel": ..., "embedding": ...}`` judged by the independent recordings.
    """
    waves = {"train": train[0], "val": val[0], "gen": samples[0], "rec": reconstructions}
    labels = {"train": train[1], "val": val[1], "gen": samples[1], "rec": val[1]}
    if independent is not None:
        waves["judge"], labels["judge"] = independent
    logmel = {k: logmel_stats(w, sample_rate) for k, w in waves.items()}
    report: dict[str, Any] = {"samples_per_group": int(np.bincount(samples[1]).max()),
                              **_in_sample(groups, logmel, labels, standardised=True)}
    contrast = {k: spectral_contrast(waves[k], sample_rate) for k in ("train", "val", "gen", "rec")}
    real_contrast = np.concatenate([contrast["train"], contrast["val"]])
    real_y = np.concatenate([train[1], val[1]])
    for name, row in report["groups"].items():
        g = list(groups).index(name)
        ge, va = samples[1] == g, val[1] == g
        row["sharpness_samples"] = float(contrast["gen"][ge].mean()
                                         / real_contrast[real_y == g].mean())
        row["sharpness_reconstructions"] = float(contrast["rec"][va].mean()
                                                 / contrast["val"][va].mean())
    for key in ("sharpness_samples", "sharpness_reconstructions"):
        report["overall"][key] = _share([row[key] for row in report["groups"].values()])
    embedded = ({k: embedding(w, sample_rate) for k, w in waves.items()}
                if embedding is not None else None)
    if embedded is not None:
        report["embedding"] = _in_sample(groups, embedded, labels, standardised=False)
    if independent is not None:
        report["independent"] = {"logmel": _independent(groups, logmel, labels,
                                                         standardised=True)}
        if embedded is not None:
            report["independent"]["embedding"] = _independent(groups, embedded, labels,
                                                              standardised=False)
    if panns is not None:
        report["panns"] = _panns_figures(panns, groups, sample_rate, train[0], val[0],
                                         samples, reconstructions)
    return report


def _panns_figures(panns: dict[str, Any], groups: Sequence[str], sample_rate: int,
                   train_w: np.ndarray, val_w: np.ndarray,
                   samples: tuple[np.ndarray, np.ndarray],
                   reconstructions: np.ndarray) -> dict[str, Any]:
    """FAD on PANNs embeddings and the share of samples whose top class fits their group."""
    from ..panns import resolve_classes

    gen_w, gen_y = samples
    embed = {}
    tops = None
    for name, w in (("train", train_w), ("val", val_w), ("gen", gen_w),
                    ("rec", reconstructions)):
        embed[name], top = panns_embeddings(w, sample_rate, panns["checkpoint"],
                                            device=panns.get("device", "cpu"))
        if name == "gen":
            tops = top
    share = {}
    for g, name in enumerate(groups):
        mask = gen_y == g
        if mask.any():
            allowed = set(resolve_classes(panns["classes"].get(name, ()))[0])
            share[name] = float(np.mean([int(t) in allowed for t in tops[mask]]))
    return {"fad_samples": frechet_distance(embed["gen"], embed["val"]),
            "fad_reconstructions": frechet_distance(embed["rec"], embed["val"]),
            "fad_real_train": frechet_distance(embed["train"], embed["val"]),
            "top_class_share": share,
            "top_class_share_overall": _share(list(share.values()))}
