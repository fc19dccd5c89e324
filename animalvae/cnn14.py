"""PANNs ``Cnn14_DecisionLevelMax`` for inference: the same function, cheaper to build and run.

``panns_inference``'s module is written for training: building it draws 81 M random weights
that the checkpoint then overwrites, its STFT is two 1024-tap ``conv1d`` layers, and every
convolution is followed by a separate batch norm. :class:`Cnn14Detector` computes the same
``framewise_output`` from the same checkpoint, for inference only:

- it is built from the state dict itself (no random initialisation, no copy into a second
  set of weights);
- the log-mel front end is ``torch.stft`` (an FFT) with the checkpoint's window, then the
  checkpoint's mel matrix as one matmul;
- each eval-mode batch norm is folded into the convolution before it (weights scaled, a bias
  added), and ``bn0`` becomes one scale and shift per mel bin;
- on a CPU the convolutions run channels-last, the layout oneDNN computes in.

It agrees with the stock module to float32 rounding (the tests bound the difference, and check
that the chosen windows do not move); :func:`animalvae.panns.load_detector` loads it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Cnn14Detector", "state_dict_problems", "N_FFT", "HOP_LENGTH", "WIDTHS"]

N_FFT = 1024          # samples per STFT window (window_size of the PANNs models)
HOP_LENGTH = 320      # samples between frames: 100 frames/s at 32 kHz
MEL_BINS = 64
NUM_CLASSES = 527
#: Channels into and out of the six conv blocks, in order.
WIDTHS = (1, 64, 128, 256, 512, 1024, 2048)
_INTERPOLATE_RATIO = 32  # five 2x2 poolings in time: one segment score per 32 frames
_AMIN = 1e-10            # power floor of the log-mel (torchlibrosa's amin; ref = 1.0)


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor the detector reads from a ``Cnn14_DecisionLevelMax`` state dict, by key."""
    n_freq = N_FFT // 2 + 1
    shapes: dict[str, tuple[int, ...]] = {
        "spectrogram_extractor.stft.conv_real.weight": (n_freq, 1, N_FFT),
        "logmel_extractor.melW": (n_freq, MEL_BINS),
        "fc1.weight": (2048, 2048), "fc1.bias": (2048,),
        "fc_audioset.weight": (NUM_CLASSES, 2048), "fc_audioset.bias": (NUM_CLASSES,),
    }
    norms = [("bn0", MEL_BINS)]
    for block, (c_in, c_out) in enumerate(zip(WIDTHS, WIDTHS[1:]), start=1):
        shapes[f"conv_block{block}.conv1.weight"] = (c_out, c_in, 3, 3)
        shapes[f"conv_block{block}.conv2.weight"] = (c_out, c_out, 3, 3)
        norms += [(f"conv_block{block}.bn1", c_out), (f"conv_block{block}.bn2", c_out)]
    for name, width in norms:
        for field in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{field}"] = (width,)
    return shapes


def state_dict_problems(state: Mapping[str, torch.Tensor]) -> list[str]:
    """What keeps ``state`` from being a 527-class ``Cnn14_DecisionLevelMax`` (empty: usable)."""
    problems = []
    for key, shape in _expected_shapes().items():
        value = state.get(key)
        if not isinstance(value, torch.Tensor):
            problems.append(f"missing {key}")
        elif tuple(value.shape) != shape:
            problems.append(f"{key} has shape {tuple(value.shape)}, expected {shape}")
    return problems


def _fold(weight: torch.Tensor, state: Mapping[str, torch.Tensor], norm: str, eps: float,
          layout: torch.memory_format) -> tuple[torch.Tensor, torch.Tensor]:
    """``conv`` then eval-mode ``norm`` as one convolution: (scaled weight in ``layout``, bias).

    The product is written straight into ``layout``: one pass over the weights, not two.
    """
    scale, shift = _affine(state, norm, eps)
    folded = torch.empty_like(weight, memory_format=layout)
    torch.mul(weight, scale[:, None, None, None], out=folded)
    return folded, shift


def _affine(state: Mapping[str, torch.Tensor], norm: str, eps: float
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode batch norm ``norm`` as ``x * scale + shift`` per channel."""
    scale = state[f"{norm}.weight"] / torch.sqrt(state[f"{norm}.running_var"] + eps)
    return scale, state[f"{norm}.bias"] - state[f"{norm}.running_mean"] * scale


class Cnn14Detector(nn.Module):
    """Frame-wise AudioSet probabilities from 32 kHz audio, as ``Cnn14_DecisionLevelMax``.

    Parameters
    ----------
    state : mapping of str -> torch.Tensor
        A ``Cnn14_DecisionLevelMax`` state dict (see :func:`state_dict_problems`).
    channels_last : bool
        Keep the convolution weights (and so the activations) channels-last.
    eps : float
        The batch norms' epsilon (PyTorch's default, which PANNs trained with).
    """

    def __init__(self, state: Mapping[str, torch.Tensor], *, channels_last: bool = True,
                 eps: float = 1e-5):
        super().__init__()
        if problems := state_dict_problems(state):
            raise ValueError("; ".join(problems))
        state = {k: v.detach().float() for k, v in state.items()}
        layout = torch.channels_last if channels_last else torch.contiguous_format
        # Row 0 of the STFT's real part is cos(0) times the window: the window itself.
        self.register_buffer("window", state["spectrogram_extractor.stft.conv_real.weight"]
                             [0, 0].clone())
        self.register_buffer("mel_basis", state["logmel_extractor.melW"].clone())  # (513, 64)
        scale, shift = _affine(state, "bn0", eps)
        self.register_buffer("mel_scale", scale.clone())
        self.register_buffer("mel_shift", shift.clone())
        self.conv_weights = nn.ParameterList()
        self.conv_biases = nn.ParameterList()
        for block in range(1, len(WIDTHS)):
            for conv in (1, 2):
                weight, bias = _fold(state[f"conv_block{block}.conv{conv}.weight"], state,
                                     f"conv_block{block}.bn{conv}", eps, layout)
                self.conv_weights.append(nn.Parameter(weight, requires_grad=False))
                self.conv_biases.append(nn.Parameter(bias, requires_grad=False))
        self.fc1 = nn.Linear(2048, 2048, device="meta")
        self.fc_audioset = nn.Linear(2048, NUM_CLASSES, device="meta")
        # Copies: no tensor of the module keeps a memory-mapped checkpoint file in use.
        self.load_state_dict({k: state[k].clone() for k in ("fc1.weight", "fc1.bias",
                                                            "fc_audioset.weight",
                                                            "fc_audioset.bias")},
                             strict=False, assign=True)
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"framewise_output": (batch, 1 + samples // 320, 527)}`` for ``x (batch, samples)``.

        The dict mirrors the stock module's, so either can be scored the same way.
        """
        spectrum = torch.stft(x, N_FFT, HOP_LENGTH, window=self.window, center=True,
                              pad_mode="reflect", return_complex=True)  # (B, 513, T)
        power = spectrum.real.square() + spectrum.imag.square()
        mel = torch.matmul(power.transpose(1, 2), self.mel_basis)  # (B, T, 64)
        h = 10.0 * torch.log10(torch.clamp(mel, min=_AMIN)) * self.mel_scale + self.mel_shift
        n_frames = h.shape[1]
        h = h[:, None]  # (B, 1, T, 64)
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        for block in range(len(WIDTHS) - 1):
            for conv in (2 * block, 2 * block + 1):
                h = F.relu_(F.conv2d(h, self.conv_weights[conv], self.conv_biases[conv],
                                     padding=1))
            if block < len(WIDTHS) - 2:  # the last block pools 1x1: nothing
                h = F.avg_pool2d(h, 2)
        h = h.mean(dim=3)  # (B, 2048, T / 32)
        h = F.max_pool1d(h, 3, stride=1, padding=1) + F.avg_pool1d(h, 3, stride=1, padding=1)
        h = F.relu_(self.fc1(h.transpose(1, 2)))
        segments = torch.sigmoid(self.fc_audioset(h))  # (B, T / 32, 527)
        frames = segments.repeat_interleave(_INTERPOLATE_RATIO, dim=1)
        tail = frames[:, -1:].expand(-1, n_frames - frames.shape[1], -1)
        return {"framewise_output": torch.cat([frames, tail], dim=1)}
