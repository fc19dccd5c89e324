"""Sound -> image: stage 4's images, the product-of-experts model, its commands and gallery.

Images that must be refused are made here (corrupt, truncated, grayscale, CMYK, 16-bit, 1x1,
a PNG header that claims 20000 x 20000). The model trains on a tiny generated stage-4 folder:
two groups whose spectrograms differ by band and whose pictures differ by colour, and within
a group a "pitch" that moves the spectrogram's band and sets the size of the picture's square,
so "the picture follows the sound" is checkable after a short run.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

import vae
from animalvae import images as images_mod
from animalvae.config import SoundImageConfig, load_config
from animalvae.errors import ConfigError, ItemFailed
from animalvae.evaluation.image_quality import (
    candidate_sets,
    edge_strength,
    frechet_distance,
    group_only_recall,
    image_features,
    retrieval_recall,
    variety,
)
from animalvae.image.model import (
    SoundImageVAE,
    draw_residuals,
    load_pairs_model,
    product_of_experts,
)
from animalvae.image.train import image_loss
from animalvae.shards import parse_shard
from animalvae.spectrogram import SpectrogramSpec, save_spec
from animalvae.stage import StageOptions, read_manifest, run_stage, write_manifest

SPEC = SpectrogramSpec(kind="stft", sample_rate=8000, n_fft=128, hop_length=64, n_frames=32)
SIZE = 16
COLOURS = {"birds": (40, 90, 220), "dogs": (200, 120, 30)}
TINY = """
paths:
  spectrograms: {data}
  runs: {runs}
features:
  image_size: 16
train:
  warmup_steps: 2
  val_fraction: 0.25
  seed: 0
generate:
  griffin_lim_iters: 4
sound_image:
  latent_dim: 8
  sound_channels: [4, 8]
  image_channels: [8, 16]
  epochs: {epochs}
  batch_size: 8
  lr: 0.01
  kl_warmup_epochs: 1
  count: 2
  edge_weight: {edge}
"""

QUIET = StageOptions(progress=False)


# --------------------------------------------------------------------------------------------
# Images: reading, refusing, preparing
# --------------------------------------------------------------------------------------------

def _png_claiming(path: Path, width: int, height: int) -> None:
    """A small valid PNG whose header is then patched to claim ``width`` x ``height``."""
    cv2.imwrite(str(path), np.zeros((20, 20, 3), np.uint8))
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]                                   # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))


def _bad_images(folder: Path) -> dict[str, str]:
    """Write one file per kind of bad image; returns {file name: expected reason words}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG" * 10)
    cv2.imwrite(str(folder / "whole.jpg"), scene)
    data = (folder / "whole.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "whole.jpg").unlink()
    cv2.imwrite(str(folder / "deep.png"), scene.astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "tiny.png"), scene[:1, :1])
    _png_claiming(folder / "huge.png", 20000, 20000)
    _png_claiming(folder / "big.png", 8000, 8000)            # below PIL's own limit
    return {"corrupt.jpg": "corrupt image", "truncated.jpg": "truncated",
            "deep.png": "16-bit",
            "tiny.png": "too small (1x1", "huge.png": "too large (400 megapixels",
            "big.png": "too large (8000x8000 px"}


def test_bad_images_are_refused_with_a_one_line_reason(tmp_path):
    for name, words in _bad_images(tmp_path / "bad").items():
        with pytest.raises(ItemFailed) as info:
            images_mod.load_image(tmp_path / "bad" / name)
        reason = str(info.value)
        assert words in reason and "\n" not in reason and len(reason) < 200, (name, reason)


def test_good_images_of_any_colour_layout_load_as_rgb(tmp_path):
    scene = np.zeros((40, 60, 3), np.uint8)
    scene[..., 0] = 200                                   # red, in RGB
    Image.fromarray(scene).save(tmp_path / "rgb.png")
    Image.fromarray(scene).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(scene).convert("P").save(tmp_path / "palette.png")
    cv2.imwrite(str(tmp_path / "bgr.jpg"), scene[..., ::-1])
    for name in ("rgb.png", "rgba.png", "palette.png", "bgr.jpg"):
        image = images_mod.load_image(tmp_path / name)
        assert image.shape == (40, 60, 3) and image.dtype == np.uint8
        assert image[..., 0].mean() > 150 and image[..., 2].mean() < 50, name


def _s15(x: float) -> bytes:
    return struct.pack(">i", round(x * 65536))


def _cmyk_profile(lab: tuple[float, float, float]) -> bytes:
    """A minimal ICC v2 CMYK profile (lut8 A2B0) that maps every ink mix to one Lab colour."""
    desc = b"desc" + bytes(4) + struct.pack(">I", 5) + b"test\0" + bytes(4 + 4 + 2 + 1 + 67)
    wtpt = b"XYZ " + bytes(4) + _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    entry = bytes([round(lab[0] * 255 / 100), round(lab[1] + 128), round(lab[2] + 128)])
    a2b0 = (b"mft1" + bytes(4) + bytes([4, 3, 2, 0])
            + b"".join(_s15(1.0 if i % 4 == 0 else 0.0) for i in range(9))
            + bytes(range(256)) * 4 + entry * 2 ** 4 + bytes(range(256)) * 3)
    tags = [(b"desc", desc), (b"wtpt", wtpt), (b"cprt", b"text" + bytes(4) + b"none\0"),
            (b"A2B0", a2b0)]
    start = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for sig, body in tags:
        data += bytes(-(start + len(data)) % 4)
        table += sig + struct.pack(">II", start + len(data), len(body))
        data += body
    header = (struct.pack(">I", start + len(data)) + bytes(4) + struct.pack(">I", 0x02100000)
              + b"prtrCMYKLab " + bytes(12) + b"acsp" + bytes(28)
              + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + bytes(48))
    return header + struct.pack(">I", len(tags)) + table + data


def _gray_and_cmyk(folder: Path) -> dict[str, tuple[str, str]]:
    """Grayscale and CMYK JPEGs as ImageNet holds them; {name: (mode, converted words)}."""
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.tile(np.linspace(0, 255, 60).astype(np.uint8), (40, 1))
    Image.fromarray(ramp, "L").save(folder / "gray.jpg")
    Image.fromarray(ramp, "L").convert("1").save(folder / "bilevel.png")
    blank = Image.new("CMYK", (60, 40), (0, 0, 0, 0))       # no ink: white on paper
    blank.save(folder / "cmyk_plain.jpg")
    blank.save(folder / "cmyk_profile.jpg", icc_profile=_cmyk_profile((60.0, -60.0, 50.0)))
    blank.save(folder / "cmyk_bad_profile.jpg", icc_profile=b"not a profile" * 20)
    return {"gray.jpg": ("L", "grayscale to 3 equal channels"),
            "bilevel.png": ("1", "grayscale to 3 equal channels"),
            "cmyk_plain.jpg": ("CMYK", "CMYK without a profile"),
            "cmyk_profile.jpg": ("CMYK", "CMYK via its ICC profile"),
            "cmyk_bad_profile.jpg": ("CMYK", "CMYK without a usable profile")}


def test_grayscale_and_cmyk_pictures_are_converted_and_say_how(tmp_path):
    expected = _gray_and_cmyk(tmp_path)
    for name, (mode, words) in expected.items():
        rgb, found_mode, converted = images_mod.load_picture(tmp_path / name)
        assert rgb.shape == (40, 60, 3) and rgb.dtype == np.uint8, name
        assert found_mode == mode and words in converted, (name, converted)
    gray, _, _ = images_mod.load_picture(tmp_path / "gray.jpg")
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert gray[:, :5].mean() < 20 and gray[:, -5:].mean() > 235      # the ramp survives
    plain = images_mod.load_image(tmp_path / "cmyk_plain.jpg")
    assert plain.min() > 245                                          # no ink: white
    through = images_mod.load_image(tmp_path / "cmyk_profile.jpg")
    r, g, b = through.reshape(-1, 3).mean(axis=0)
    assert g > r + 50 and g > b + 50                  # the profile's green, not the formula's
    assert (images_mod.load_image(tmp_path / "cmyk_bad_profile.jpg") == plain).all()


def test_square_resize_keeps_the_centre():
    wide = np.zeros((30, 90, 3), np.uint8)
    wide[:, :30] = (255, 0, 0)
    wide[:, 30:60] = (0, 255, 0)
    wide[:, 60:] = (0, 0, 255)
    out = images_mod.square_resize(wide, 16)
    assert out.shape == (16, 16, 3)
    assert (out[..., 1] == 255).all() and out[..., 0].max() == 0 and out[..., 2].max() == 0
    assert images_mod.square_resize(np.full((8, 8, 3), 7, np.uint8), 16).shape == (16, 16, 3)


def test_stage4_images_pair_frames_by_id_and_lose_nothing_else(tmp_path):
    detections = tmp_path / "detections"
    frames = detections / "frames" / "dogs"
    frames.mkdir(parents=True)
    rows = []
    for i in range(3):
        cv2.imwrite(str(frames / f"clip{i}.jpg"), np.full((120, 160, 3), 60 * i + 20, np.uint8))
        rows.append({"id": f"clip{i}", "label": "dog barking", "group": "dogs",
                     "source": "x", "output": f"segments/dogs/clip{i}.wav", "status": "ok",
                     "reason": "", "frame": f"frames/dogs/clip{i}.jpg"})
    rows.append({"id": "audio_only", "label": "dogs", "group": "dogs", "source": "x",
                 "output": "segments/dogs/audio_only.wav", "status": "ok", "reason": "",
                 "frame": ""})
    write_manifest(detections, rows, ("frame",))
    extra = tmp_path / "imagenet"
    reasons = _bad_images(extra / "cats")
    converted = _gray_and_cmyk(extra / "cats")
    cv2.imwrite(str(extra / "cats" / "good_cat.jpg"), np.full((300, 200, 3), 90, np.uint8))
    spectrograms = tmp_path / "spectrograms"
    config = load_config(_write(tmp_path / "c.yaml", f"""
paths: {{detections: {detections}, spectrograms: {spectrograms}}}
features: {{image_size: 32, extra_image_dirs: [{extra}]}}
"""))
    summary = images_mod.run(config, QUIET)
    assert (summary.ok, summary.failed) == (4 + len(converted), len(reasons))
    manifest = read_manifest(spectrograms / images_mod.IMAGES)
    assert "audio_only" not in manifest                  # no frame: stays an unpaired sound
    for i in range(3):
        row = manifest[f"clip{i}"]
        assert (row["status"], row["paired"], row["size"]) == ("ok", "yes", "32x32")
        image = images_mod.read_image(spectrograms / images_mod.IMAGES / row["output"], 32)
        assert abs(int(image.mean()) - (60 * i + 20)) <= 2
    assert manifest["good_cat"]["paired"] == "no" and manifest["good_cat"]["status"] == "ok"
    assert (manifest["good_cat"]["mode"], manifest["good_cat"]["converted"]) == ("RGB", "")
    for name, (mode, words) in converted.items():
        row = manifest[Path(name).stem]
        assert row["status"] == "ok" and row["mode"] == mode and words in row["converted"], row
    for name, words in reasons.items():
        row = manifest[Path(name).stem]
        assert row["status"] == "failed" and words in row["reason"], row
    again = images_mod.run(config, QUIET)       # a rerun redoes nothing
    assert again.ok == 0 and again.already_done == 4 + len(converted)
    bigger = load_config(_write(tmp_path / "c.yaml", f"""
paths: {{detections: {detections}, spectrograms: {spectrograms}}}
features: {{image_size: 64, extra_image_dirs: [{extra}]}}
"""))
    assert images_mod.run(bigger, QUIET).ok == 4 + len(converted)   # another size: redone


def test_shards_of_stage_4_prepare_the_images_of_their_own_ids(tmp_path):
    """Under ``--shard K/N`` each shard prepares only its own ids' pictures, into its own
    manifest part, so shards of stage 4 can run at once (a plain run would hold the folder)."""
    detections = tmp_path / "detections"
    (detections / "frames" / "dogs").mkdir(parents=True)
    rows = []
    for i in range(8):
        cv2.imwrite(str(detections / "frames" / "dogs" / f"c{i}.jpg"),
                    np.full((40, 40, 3), 30 * i, np.uint8))
        rows.append({"id": f"c{i}", "label": "dogs", "group": "dogs", "source": "x",
                     "output": f"segments/dogs/c{i}.wav", "status": "ok", "reason": "",
                     "frame": f"frames/dogs/c{i}.jpg"})
    write_manifest(detections, rows, ("frame",))
    config = load_config(_write(tmp_path / "c.yaml", f"""
paths: {{detections: {detections}, spectrograms: {tmp_path / "spectrograms"}}}
features: {{image_size: 16}}
"""))
    shards = [parse_shard("1/2"), parse_shard("2/2")]
    done = [images_mod.run(config, StageOptions(progress=False, shard=shard)).ok
            for shard in shards]
    folder = tmp_path / "spectrograms" / images_mod.IMAGES
    assert sum(done) == 8 and all(done)
    assert sorted(p.name for p in folder.glob("manifest.shard-*.csv")) == [
        "manifest.shard-1-of-2.csv", "manifest.shard-2-of-2.csv"]
    assert len(read_manifest(folder)) == 8
    assert images_mod.run(config, QUIET).already_done == 8   # a plain run sees both shards


def test_an_extra_image_with_a_segment_id_is_a_config_error(tmp_path):
    detections = tmp_path / "detections"
    (detections / "frames" / "dogs").mkdir(parents=True)
    cv2.imwrite(str(detections / "frames" / "dogs" / "a.jpg"), np.zeros((20, 20, 3), np.uint8))
    write_manifest(detections, [{"id": "a", "label": "d", "group": "dogs", "source": "x",
                                 "output": "segments/dogs/a.wav", "status": "ok", "reason": "",
                                 "frame": "frames/dogs/a.jpg"}], ("frame",))
    (tmp_path / "extra" / "cats").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "extra" / "cats" / "a.png"), np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(ConfigError, match="same id 'a'"):
        images_mod.list_image_items(detections, [tmp_path / "extra"])


def test_image_stage_is_a_thread_stage_writing_pngs(tmp_path):
    cv2.imwrite(str(tmp_path / "in.jpg"), np.zeros((40, 40, 3), np.uint8))
    from animalvae.stage import Item
    summary = run_stage(images_mod.ImagesStage(16), [Item("x", "g", tmp_path / "in.jpg")],
                        tmp_path / "out", progress=False)
    assert summary.ok == 1 and (tmp_path / "out" / "g" / "x.png").is_file()


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------

def test_product_of_experts_adds_precisions():
    mu, logvar = torch.tensor([[2.0, -1.0]]), torch.zeros(1, 2)       # variance 1
    joint_mu, joint_logvar = product_of_experts([(mu, logvar)])
    torch.testing.assert_close(joint_mu, mu / 2)                       # with N(0, 1): halfway
    torch.testing.assert_close(joint_logvar.exp(), torch.full((1, 2), 0.5))
    sharp = (torch.tensor([[3.0, 3.0]]), torch.full((1, 2), -10.0))     # a confident expert
    both_mu, _ = product_of_experts([(mu, logvar), sharp])
    assert torch.allclose(both_mu, torch.tensor([[3.0, 3.0]]), atol=1e-3)


def test_model_shapes_and_a_config_that_does_not_fit():
    config = SoundImageConfig(latent_dim=8, sound_channels=[4, 8], image_channels=[8, 16])
    model = SoundImageVAE(config, SPEC.shape, SIZE)
    mu, logvar = model.posterior(sound=torch.rand(3, 1, *SPEC.shape))
    assert mu.shape == (3, 8) and model.decode_image(mu).shape == (3, 3, SIZE, SIZE)
    assert model.decode_sound(mu).shape == (3, 1, *SPEC.shape)
    with pytest.raises(ConfigError, match="image_channels"):
        SoundImageVAE(SoundImageConfig(image_channels=[4, 4, 4, 4, 4]), SPEC.shape, SIZE)
    with pytest.raises(ConfigError, match="sound_image.image_channels"):
        load_config(None, ["features.image_size=16",
                           "sound_image.image_channels=[4, 4, 4, 4, 4]"])


def test_quality_measures():
    keys = np.eye(6)
    candidates = candidate_sets(6, 4, seed=0)
    assert candidates.shape == (6, 4) and (candidates[:, 0] == np.arange(6)).all()
    assert all(len(set(row)) == 4 for row in candidates)
    assert retrieval_recall(keys + 0.01, keys, candidates) == {1: 1.0, 5: 1.0}
    shuffled = keys[[1, 2, 3, 4, 5, 0]]
    assert retrieval_recall(shuffled, keys, candidate_sets(6, 6, seed=0))[1] == 0.0
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 3)), rng.normal(size=(400, 3)) + 2
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, b) == pytest.approx(12.0, rel=0.15)     # |2,2,2|**2
    features = image_features(np.zeros((2, 16, 16, 3), np.uint8))
    assert features.shape == (2, 204) and features[:, 192:].sum(axis=1).tolist() == [3.0, 3.0]


def test_variety_group_only_recall_and_edges():
    flat = np.zeros((2, 3, 8, 8, 3), np.uint8)
    flat[1] = 100                                       # two sounds, each one image thrice
    within, across = variety(flat)
    assert within == 0.0 and across == pytest.approx(100.0)
    noisy = flat.copy()
    noisy[:, 1] += 10                                   # the second draw of each sound differs
    within, _ = variety(noisy)
    assert within == pytest.approx(20 / 3)              # pairs (0,1), (0,2), (1,2): 10, 0, 10
    assert np.isnan(variety(flat[:, :1])[0]) and np.isnan(variety(flat[:1])[1])
    labels = np.array([0, 0, 1, 1, 1])
    candidates = np.array([[0, 1, 2], [1, 0, 2], [2, 3, 4], [3, 2, 4], [4, 2, 3]])
    assert group_only_recall(labels, candidates) == pytest.approx((0.5 * 2 + 1 / 3 * 3) / 5)
    steps = np.zeros((1, 4, 4, 3), np.uint8)
    steps[:, :, 2:] = 255                               # one vertical edge
    assert edge_strength(steps) == pytest.approx(255 / 3 / 2)
    assert edge_strength(steps.astype(np.float32) / 255) == pytest.approx(255 / 3 / 2)


def test_the_edge_term_charges_for_a_smeared_step():
    target = torch.zeros(1, 3, 8, 8)
    target[..., 4:] = 1.0
    smeared = torch.linspace(0, 1, 8).expand(1, 3, 8, 8)
    shifted = torch.zeros(1, 3, 8, 8)
    shifted[..., 5:] = 1.0
    plain = [image_loss(x, target, edge_weight=0.0) for x in (smeared, shifted)]
    edges = [image_loss(x, target, edge_weight=1.0) - p for x, p in zip((smeared, shifted),
                                                                         plain)]
    assert edges[0] > 1.3 * edges[1] > 0                # a smear costs more than a shifted step
    assert image_loss(target, target, edge_weight=1.0) == 0.0


def test_residual_draws_come_from_the_nearest_groups_pairs():
    residuals = {"a": (torch.zeros(2), torch.tensor([[1.0, 0.0], [2.0, 0.0]])),
                 "b": (torch.full((2,), 10.0), torch.tensor([[0.0, -5.0]]))}
    mu = torch.tensor([[0.5, 0.0], [9.0, 11.0]])
    draws = draw_residuals(residuals, mu, 6, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (2, 6, 2)
    assert set(draws[0, :, 0].tolist()) == {1.0, 2.0} and (draws[0, :, 1] == 0).all()
    assert (draws[1] == torch.tensor([0.0, -5.0])).all()


# --------------------------------------------------------------------------------------------
# Training and the commands, on a tiny stage-4 folder
# --------------------------------------------------------------------------------------------

def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def make_pairs(folder: Path, *, per_group: int = 12, unpaired: int = 2) -> None:
    """Spectrograms + images: band per group, band height and square size per 'pitch'."""
    save_spec(folder, SPEC)
    image_rows = []
    for g, (group, colour) in enumerate(COLOURS.items()):
        (folder / group).mkdir(parents=True, exist_ok=True)
        (folder / "images" / group).mkdir(parents=True, exist_ok=True)
        for k in range(per_group + unpaired):
            pitch = k / (per_group - 1) if k < per_group else 0.5
            x = np.full(SPEC.shape, 0.1, np.float32)
            low = (34 if g else 2) + int(round(pitch * 20))
            x[low:low + 8] = 0.9
            name = f"{group}{k:02d}"
            if k < per_group or k == per_group:              # one unpaired sound per group
                np.save(folder / group / f"{name}.npy", x.astype(np.float16))
            if k < per_group or k == per_group + 1:          # one unpaired image per group
                image = np.full((SIZE, SIZE, 3), colour, np.uint8)
                side = 3 + int(round(pitch * 10))
                image[SIZE - side:, :side] = 255
                cv2.imwrite(str(folder / "images" / group / f"{name}.png"), image[..., ::-1])
                image_rows.append({"id": name, "label": group, "group": group, "source": "x",
                                   "output": f"{group}/{name}.png", "status": "ok",
                                   "reason": "", "paired": "yes", "size": f"{SIZE}x{SIZE}"})
    write_manifest(folder / "images", image_rows, ("paired", "size"))


def run_vae(argv: list[str], capsys) -> tuple[int, str]:
    code = vae.main(argv)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def pairs_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pairs")
    make_pairs(tmp / "data")
    config = _write(tmp / "c.yaml", TINY.format(data=tmp / "data", runs=tmp / "runs", epochs=40,
                                                        edge=0.0))   # per-pixel: judged so
    assert vae.main(["train-images", "--config", str(config), "-q"]) == 0
    return config, tmp / "runs" / "default" / "images"


def test_training_writes_the_model_folder_and_learns(pairs_run):
    config, run = pairs_run
    for name in ("model.pth", "last.pth", "split.csv", "metrics.csv", "settings.yaml"):
        assert (run / name).is_file(), name
    split = (run / "split.csv").read_text()
    assert ",sound," in split and ",image," in split      # unpaired items train too
    rows = (run / "metrics.csv").read_text().splitlines()
    first, last = (dict(zip(rows[0].split(","), r.split(","))) for r in (rows[1], rows[-1]))
    assert float(last["val_image_from_sound_l1"]) < 0.6 * float(first["val_image_from_sound_l1"])
    data = torch.load(run / "model.pth", weights_only=True)
    assert data["format"] == "animalvae.sound_image/3" and set(data["group_codes"]) == set(COLOURS)
    trained = load_pairs_model(run / "model.pth")
    assert trained.groups == sorted(COLOURS) and trained.model.image_size == SIZE


def test_the_image_follows_the_sound_beyond_its_group(pairs_run):
    _, run = pairs_run
    trained = load_pairs_model(run / "model.pth")
    for g, group in enumerate(COLOURS):
        sizes = []
        for pitch in (0.0, 1.0):
            x = np.full(SPEC.shape, 0.1, np.float32)
            low = (34 if g else 2) + int(round(pitch * 20))
            x[low:low + 8] = 0.9
            with torch.no_grad():
                mu, _ = trained.model.posterior(sound=torch.from_numpy(x)[None, None])
                image = trained.model.decode_image(mu)[0].permute(1, 2, 0).numpy()
            assert np.abs(image[:4, -4:].mean(axis=(0, 1)) * 255
                          - np.array(COLOURS[group])).max() < 40      # the group's colour
            sizes.append((image.min(axis=2) > 0.7).sum())           # white pixels
        assert sizes[1] > sizes[0] + 20, (group, sizes)             # a higher call: bigger


def test_resume_continues_to_the_same_weights(tmp_path, monkeypatch):
    from animalvae.image import train as train_images
    make_pairs(tmp_path / "data", per_group=6, unpaired=0)
    whole = _write(tmp_path / "a.yaml", TINY.format(data=tmp_path / "data",
                                                   runs=tmp_path / "a", epochs=4, edge=1.0))
    part = _write(tmp_path / "b.yaml", TINY.format(data=tmp_path / "data",
                                                  runs=tmp_path / "b", epochs=4, edge=1.0))
    assert vae.main(["train-images", "--config", str(whole), "-q"]) == 0
    validate, calls = train_images._validate, []

    def interrupted(*args, **kwargs):                   # Ctrl-C during epoch 3's validation
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return validate(*args, **kwargs)

    monkeypatch.setattr(train_images, "_validate", interrupted)
    assert vae.main(["train-images", "--config", str(part), "-q"]) == 130
    monkeypatch.setattr(train_images, "_validate", validate)
    last = tmp_path / "b" / "default" / "images" / "last.pth"
    assert torch.load(last, weights_only=True)["epoch"] == 2
    assert vae.main(["train-images", "--resume", "--config", str(part), "-q",
                     "--set", "sound_image.latent_dim=4"]) == 2   # another model: refused
    assert vae.main(["train-images", "--resume", "--config", str(part), "-q"]) == 0
    a = torch.load(tmp_path / "a" / "default" / "images" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "default" / "images" / "last.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 4
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key])


def test_a_used_folder_needs_resume_or_force_and_no_pairs_is_an_error(pairs_run, tmp_path,
                                                                      capsys):
    config, _ = pairs_run
    code, err = run_vae(["train-images", "--config", str(config)], capsys)
    assert code == 2 and "--resume" in err and "--force" in err
    save_spec(tmp_path / "empty", SPEC)
    (tmp_path / "empty" / "dogs").mkdir()
    for k in range(3):
        np.save(tmp_path / "empty" / "dogs" / f"d{k}.npy", np.zeros(SPEC.shape, np.float16))
    code, err = run_vae(["train-images", "--config", str(config), "--input",
                         str(tmp_path / "empty"), "--run", str(tmp_path / "r")], capsys)
    assert code == 2 and "needs at least 2 pairs" in err


def test_sound_to_image_on_held_out_pairs_and_evaluate(pairs_run, capsys):
    config, run = pairs_run
    assert run_vae(["sound-to-image", "--config", str(config)], capsys)[0] == 0
    entries = sorted(p for p in (run / "samples" / "val").glob("*/*") if p.is_dir())
    split = (run / "split.csv").read_text()
    assert len(entries) == split.count(",val,") >= 2
    for entry in entries:
        names = sorted(p.name for p in entry.iterdir())
        assert names == ["frame.png", "generated_0.png", "generated_1.png", "sound.png",
                         "sound.wav"], names
        y, sr = sf.read(entry / "sound.wav")
        assert sr == SPEC.sample_rate and np.abs(y).max() > 0
    code, err = run_vae(["evaluate-images", "--config", str(config)], capsys)
    assert code == 0 and "retrieval R@1" in err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["retrieval_candidates"] == len(entries)
    assert metrics["chance_r1"] == pytest.approx(1 / len(entries))
    assert metrics["group_accuracy_generated"] == 1.0
    assert metrics["group_accuracy_real_frames"] == 1.0
    assert metrics["retrieval_r1"] > 2 * metrics["chance_r1"]
    assert metrics["frechet_generated"] >= 0
    assert metrics["group_only_r1"] == pytest.approx(
        np.mean([1 / sum(e.parent.name == f.parent.name for f in entries) for e in entries]))
    # The images of one sound differ (what the sound leaves open: here the pitch it cannot
    # quite tell) and stay nearer one another than images of other sounds.
    assert 0 < metrics["variety_within_sound"] < metrics["variety_across_sounds"]
    assert metrics["variety_ratio"] == pytest.approx(
        metrics["variety_within_sound"] / metrics["variety_across_sounds"])
    assert metrics["sharpness_ratio"] > 0
    page = (run / "index.html").read_text()
    assert "retrieval_r1" in page and "frame.png" in page and "variety within one sound" in page


def test_sound_to_image_from_recordings_of_any_kind(pairs_run, tmp_path, capsys):
    config, run = pairs_run
    t = np.arange(SPEC.sample_rate * 5) / SPEC.sample_rate
    tone = 0.5 * np.sin(2 * np.pi * 440 * t) * (np.abs(t - 3) < 1)      # loud in 2-4 s
    sf.write(tmp_path / "call.wav", tone, SPEC.sample_rate)
    mp4 = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=f=300:d=2",
                    "-f", "lavfi", "-i", "testsrc=s=64x48:d=2", "-shortest", "-c:v",
                    "libx264", "-c:a", "aac", str(mp4)], check=True)
    code, _ = run_vae(["sound-to-image", "--config", str(config), "--count", "3",
                       str(tmp_path / "call.wav"), str(mp4)], capsys)
    assert code == 0
    for name in ("call", "clip"):
        folder = run / "samples" / "files" / name
        assert sorted(p.name for p in folder.glob("generated_*.png")) == [
            "generated_0.png", "generated_1.png", "generated_2.png"]
        y, sr = sf.read(folder / "sound.wav")
        assert len(y) == SPEC.n_samples
    y, _ = sf.read(run / "samples" / "files" / "call" / "sound.wav")
    assert np.abs(y).max() > 0.1                       # the loud part was taken
    (tmp_path / "notes.txt").write_text("not audio")
    code, err = run_vae(["sound-to-image", "--config", str(config),
                         str(tmp_path / "notes.txt")], capsys)
    assert code == 2 and "notes.txt" in err and "ffmpeg cannot read audio" in err


def test_image_to_sound_and_group_samples(pairs_run, tmp_path, capsys):
    config, run = pairs_run
    cv2.imwrite(str(tmp_path / "blue.png"), np.full((40, 30, 3), COLOURS["birds"][::-1],
                                                    np.uint8))
    assert run_vae(["image-to-sound", "--config", str(config), str(tmp_path / "blue.png")],
                   capsys)[0] == 0
    folder = run / "samples" / "from_images" / "blue"
    assert {p.name for p in folder.iterdir()} == {"image.png", "sound.png", "sound.wav"}
    cv2.imwrite(str(tmp_path / "deep.png"), np.zeros((40, 30), np.uint16))
    code, err = run_vae(["image-to-sound", "--config", str(config), str(tmp_path / "deep.png")],
                        capsys)
    assert code == 2 and "deep.png: 16-bit" in err
    assert run_vae(["sample-images", "--config", str(config), "--count", "2"], capsys)[0] == 0
    assert sorted(p.name for p in (run / "samples" / "prior").iterdir()) == [
        "birds_0", "birds_1", "dogs_0", "dogs_1"]


def test_the_gallery_loads_in_a_real_browser(pairs_run, capsys):
    """Every image on the page loads and every audio element's file decodes (headless)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("no chromium + chromedriver (tools/setup.sh installs them as root)")
    config, run = pairs_run
    assert run_vae(["sound-to-image", "--config", str(config)], capsys)[0] == 0
    assert run_vae(["sample-images", "--config", str(config), "--count", "1"], capsys)[0] == 0
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service
    browser = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        browser.set_script_timeout(60)
        browser.get((run / "index.html").resolve().as_uri())
        report = browser.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const images = [...document.images];
            const audios = [...document.querySelectorAll('audio')];
            const settle = a => new Promise(resolve => {
                if (a.readyState >= 2) return resolve(true);
                a.addEventListener('loadeddata', () => resolve(true), {once: true});
                a.addEventListener('error', () => resolve(false), {once: true});
                a.preload = 'auto'; a.load();
            });
            const loaded = img => img.complete ? Promise.resolve(img.naturalWidth > 0)
                : new Promise(r => { img.onload = () => r(img.naturalWidth > 0);
                                     img.onerror = () => r(false); });
            Promise.all([Promise.all(images.map(loaded)), Promise.all(audios.map(settle))])
              .then(([i, a]) => done({images: i, audios: a,
                  durations: audios.map(x => x.duration),
                  broken: images.filter((_, k) => !i[k]).map(x => x.src)
                      .concat(audios.filter((_, k) => !a[k]).map(x => x.src))}));
        """)
    finally:
        browser.quit()
    assert len(report["images"]) >= 8 and len(report["audios"]) >= 4
    assert all(report["images"]) and all(report["audios"]), report["broken"]
    assert all(d == pytest.approx(SPEC.n_samples / SPEC.sample_rate, abs=0.05)
               for d in report["durations"])


def test_the_run_gallery_links_the_image_model(pairs_run):
    from animalvae.evaluation.gallery import write_gallery
    _, run = pairs_run
    page = write_gallery(run.parent).read_text()
    assert 'href="images/index.html"' in page


IMAGE_FLAGS = {   # each sound <-> image sub-command's own flags, beyond the common ones
    "train-images": {"--input", "--limit", "--force", "--resume"},
    "sound-to-image": {"--count", "--limit"},
    "image-to-sound": set(),
    "sample-images": {"--count"},
    "evaluate-images": set(),
}


@pytest.mark.parametrize("command", sorted(IMAGE_FLAGS))
def test_each_image_command_takes_only_the_flags_it_uses(command, capsys):
    import re

    from vae_runs import COMMON
    with pytest.raises(SystemExit) as info:
        vae.main([command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    flags = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", text.split("options:", 1)[1]))
    assert flags == COMMON | IMAGE_FLAGS[command], flags ^ (COMMON | IMAGE_FLAGS[command])
    assert ("1 training diverged" in text) == (command == "train-images")
