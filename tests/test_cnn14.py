"""Stage 3's inference-only PANNs module against panns_inference's own, on the same weights.

:class:`animalvae.cnn14.Cnn14Detector` (FFT front end, batch norms folded into the
convolutions, channels-last) must give the stock ``Cnn14_DecisionLevelMax``'s frame-wise
probabilities within ``TOLERANCE`` (float32 rounding; the stated tolerance), and so the same
window, peak frame, score and labels. The weights are random, with batch-norm statistics drawn
away from the identity so that folding them is really tested.
"""

import numpy as np
import pytest
import torch
from media import animal_call, tone

from animalvae import audio, detect, panns
from animalvae.cnn14 import Cnn14Detector, state_dict_problems
from animalvae.errors import ConfigError

#: Largest difference allowed between the two modules' probabilities (absolute, in [0, 1]).
TOLERANCE = 1e-5
SR = panns.SAMPLE_RATE


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    """A random-weight stock module with trained-like batch norms; HOME is a temporary folder
    (building it writes ``~/panns_data/class_labels_indices.csv``)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(tmp_path_factory.mktemp("home")))
        torch.manual_seed(0)
        model = panns.build_model()
    g = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.weight.data = 0.5 + torch.rand(n, generator=g)
            module.bias.data = 0.2 * torch.randn(n, generator=g)
            module.running_mean.data = 0.2 * torch.randn(n, generator=g)
            module.running_var.data = 0.5 + torch.rand(n, generator=g)
    return model.eval()


def clips(seconds: float = 6.0) -> torch.Tensor:
    """Four real-ish clips: calls in noise at different times, a tone, digital silence at the
    end of one (as batch padding and short clips give)."""
    rng = np.random.default_rng(3)
    n = int(seconds * SR)
    batch = 0.01 * rng.standard_normal((4, n)).astype(np.float32)
    for row, at in zip(batch, (0.5, 2.0, 3.5)):
        call = animal_call(2.0, SR, seed=int(at * 10))
        row[int(at * SR):int(at * SR) + len(call)] += call
    batch[3, :2 * SR] += tone(2.0, SR, frequency=700.0, amplitude=0.3)
    batch[3, 4 * SR:] = 0.0
    return torch.from_numpy(batch)


@pytest.mark.slow
@pytest.mark.parametrize("channels_last", [True, False])
def test_detector_gives_the_stock_framewise_output(stock, channels_last):
    x = clips()
    detector = Cnn14Detector(stock.state_dict(), channels_last=channels_last).eval()
    with torch.inference_mode():
        expected = stock(x)["framewise_output"]
        got = detector(x)["framewise_output"]
    assert got.shape == expected.shape == (4, 1 + x.shape[1] // 320, 527)
    assert float((got - expected).abs().max()) <= TOLERANCE
    assert float(expected.std()) > 0.01  # the comparison is not between two constants


@pytest.mark.slow
def test_windows_peaks_scores_and_labels_do_not_move(stock):
    x = clips()
    detector = Cnn14Detector(stock.state_dict()).eval()
    with torch.inference_mode():
        outputs = [m(x)["framewise_output"].numpy() for m in (stock, detector)]
    labels = panns.audioset_labels()
    window = 3 * audio.FRAMES_PER_S
    starts = set()
    for classes in (list(panns.ANIMAL_CLASSES), [74, 75, 76]):  # the "*" and a few dog ones
        for expected, got in zip(*outputs):
            chosen = []
            for probs in (expected, got):
                scores = detect.frame_scores(probs, classes)
                start, score = audio.best_window(scores, window_frames=window)
                chosen.append((start, detect.peak_frame(scores, start, window), score,
                               detect.top_labels(probs[start:start + window], labels)))
            (start, peak, score, top), (start2, peak2, score2, top2) = chosen
            assert (start2, peak2, top2) == (start, peak, top)
            assert score2 == pytest.approx(score, abs=TOLERANCE)
            starts.add(start)
    assert len(starts) > 1  # the clips give different windows


@pytest.mark.slow
def test_state_dict_problems_name_the_key_and_shape(stock):
    state = dict(stock.state_dict())
    assert state_dict_problems(state) == []
    state["fc_audioset.weight"] = torch.zeros(10, 2048)
    del state["conv_block3.bn1.running_var"]
    assert state_dict_problems(state) == [
        "fc_audioset.weight has shape (10, 2048), expected (527, 2048)",
        "missing conv_block3.bn1.running_var"]
    with pytest.raises(ValueError, match="missing conv_block3.bn1.running_var"):
        Cnn14Detector(state)


def test_load_detector_refuses_another_model_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(panns, "MIN_CHECKPOINT_BYTES", 1)
    path = tmp_path / "other.pth"
    torch.save({"model": {"fc1.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(ConfigError) as info:
        panns.load_detector(path)
    message = str(info.value)
    assert message.startswith(f"detect.checkpoint={path} is not a Cnn14_DecisionLevelMax "
                              "checkpoint with 527 classes (missing spectrogram_extractor")
    assert "more)" in message and "\n" not in message and "--download-models" in message


@pytest.mark.slow
def test_load_detector_builds_once_per_checkpoint(stock, tmp_path, monkeypatch):
    monkeypatch.setattr(panns, "MIN_CHECKPOINT_BYTES", 1)
    path = tmp_path / "random.pth"
    torch.save({"model": stock.state_dict()}, path)
    try:
        detector = panns.load_detector(path)
        assert isinstance(detector, Cnn14Detector) and not detector.training
        assert panns.load_detector(path) is detector
        assert detector.conv_weights[1].is_contiguous(memory_format=torch.channels_last)
    finally:
        panns.clear_model_cache()
