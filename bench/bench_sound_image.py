#!/usr/bin/env python3
"""Stage 5, sound -> image on the demo: variety of the images of one sound, retrieval beyond the
group, group accuracy, sharpness and Fréchet distance, per seed and per variant.

For each seed the demo runs in a folder of its own (``python -m animalvae.demo --fresh --seed N
--epochs E``: the sample dataset of that seed, stages 1-4, and the sound -> image model at the
defaults; the sound VAE's epochs (``--epochs``, default 1) do not touch the image model, which
trains on stage 4's output alone). Then each variant trains its own image model on the same
stage-4 folder (``vae.py train-images --run <seed>/runs/<variant>`` with the variant's
``--set``s) and is judged by ``vae.py evaluate-images``. Variants:

- ``before``: the previous release's way, images drawn with q(z | sound)'s own spread
  (``sound_image.draw=posterior``, temperature 1), per-pixel image loss only
  (``edge_weight=0``), half the defaults' steps (17 epochs of the demo's 57 training pairs:
  the ~240 steps it took then);
- ``residual``: images drawn with the residuals of real training pairs, per-pixel loss only;
- ``defaults``: the demo's own run (residual draws and the edge term).

With ``--photos N`` (seed 0 only), the same variants also train with N real photographs per
group as unpaired images (``features.extra_image_dirs``, as a user adds ImageNet pictures):
square crops of the photographs that ship with scikit-learn (``china.jpg``, ``flower.jpg``)
and matplotlib (``grace_hopper.jpg``), one photograph per group, at random places and scales.
Other crops of the same photographs, never trained on, are then encoded and decoded by the
image half (q(z | image) -> image): their sharpness (edge strength over the crops') and mean
absolute error say whether the image loss keeps the detail of photographs.

Prints a Markdown section and writes it to ``bench/results/sound_image.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the helpers below import animalvae lazily
VARIANTS = {"before": ["sound_image.draw=posterior", "sound_image.edge_weight=0",
                       "sound_image.epochs=17", "sound_image.draw_temperature=1.0"],
            "residual": ["sound_image.edge_weight=0"],
            "defaults": None}
COLUMNS = (("retrieval_r1", "R@1"), ("group_only_r1", "group alone"),
           ("group_accuracy_generated", "group acc."), ("variety_within_sound", "within"),
           ("variety_across_sounds", "across"), ("variety_ratio", "within / across"),
           ("sharpness_ratio", "sharpness"), ("frechet_generated", "Fréchet"),
           ("frechet_train_frames", "Fréchet, real train frames"))


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(argv)}\n{proc.stderr[-3000:]}")


def _variant(out: Path, name: str, sets: list[str], spectrograms: Path | None = None) -> dict:
    """Train and judge one variant's image model on the seed's stage-4 folder."""
    spectrograms = spectrograms or out / "data" / "spectrograms"
    common = ["--config", "configs/demo.yaml", "--run", str(out / "runs" / name),
              "--set", f"paths.spectrograms={json.dumps(str(spectrograms))}"]
    for item in sets:
        common += ["--set", item]
    _run([sys.executable, "vae.py", "train-images", "--force", "-q", *common])
    _run([sys.executable, "vae.py", "evaluate-images", "-q", *common])
    return json.loads((out / "runs" / name / "images" / "metrics.json").read_text())


PHOTOS = {"dogs": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
          "cats": ("sklearn", "datasets/images/china.jpg"),
          "birds": ("sklearn", "datasets/images/flower.jpg")}


def _photo(group: str):
    import importlib.util

    import numpy as np
    from PIL import Image

    package, name = PHOTOS[group]
    folder = Path(importlib.util.find_spec(package).origin).parent
    return np.asarray(Image.open(folder / name).convert("RGB"))


def _crops(photo, n: int, *, seed: int) -> list:
    """``n`` square crops of ``photo`` (H, W, 3), sides 1/4 to 3/4 of its shorter side."""
    import numpy as np

    rng = np.random.default_rng(seed)
    h, w = photo.shape[:2]
    out = []
    for _ in range(n):
        side = int(rng.uniform(0.25, 0.75) * min(h, w))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        out.append(photo[top:top + side, left:left + side])
    return out


def _with_photos(out: Path, per_group: int) -> Path:
    """A copy of the seed's stage-4 folder whose images include ``per_group`` photo crops."""
    import shutil

    from PIL import Image

    photos, spectrograms = out / "photos", out / "photo_spectrograms"
    shutil.rmtree(spectrograms, ignore_errors=True)
    shutil.copytree(out / "data" / "spectrograms", spectrograms)
    for group in PHOTOS:
        (photos / group).mkdir(parents=True, exist_ok=True)
        for k, crop in enumerate(_crops(_photo(group), per_group, seed=0)):
            Image.fromarray(crop).save(photos / group / f"photo_{group}_{k}.jpg", quality=92)
    _run([sys.executable, "preprocess_audio_vae.py", "--config", "configs/demo.yaml", "-q",
          "--set", f"paths.detections={json.dumps(str(out / 'data' / 'detections'))}",
          "--set", f"paths.spectrograms={json.dumps(str(spectrograms))}",
          "--set", f"features.extra_image_dirs=[{json.dumps(str(photos))}]"])
    return spectrograms


def _demo_clips_per_group() -> int:
    """The demo's own default clip count per group (``python -m animalvae.demo``), which the
    runs here use."""
    from animalvae.demo.pipeline import build_parser

    return build_parser().get_default("clips_per_group")


def _photo_metrics(run: Path, *, per_group: int) -> dict:
    """Sharpness and error of held-out photo crops through the image half."""
    import numpy as np
    import torch

    from animalvae.evaluation.image_quality import edge_strength
    from animalvae.image.model import load_pairs_model
    from animalvae.images import square_resize

    model = load_pairs_model(run / "images" / "model.pth").model
    size = model.image_size
    crops = np.stack([square_resize(np.ascontiguousarray(c), size) for g in PHOTOS
                      for c in _crops(_photo(g), per_group, seed=1)])
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        decoded = model.decode_image(model.posterior(image=x)[0])
    back = decoded.permute(0, 2, 3, 1).numpy()
    return {"photo_sharpness": edge_strength(back) / edge_strength(crops),
            "photo_l1": float(np.abs(back * 255 - crops).mean())}


def _table(rows: list, columns: tuple) -> list[str]:
    """Markdown table lines: one row per (variant, seed, metrics)."""
    lines = ["| variant | seed | " + " | ".join(title for _, title in columns) + " |",
             "|---|---:|" + "---:|" * len(columns)]
    for name, seed, m in rows:
        lines.append(f"| {name} | {seed} | " + " | ".join(
            f"{m[k]:.2f}" if isinstance(m.get(k), float) else str(m.get(k, "n/a"))
            for k, _ in columns) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2", help="demo seeds (default: 0,1,2)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--epochs", type=int, default=1, help="the sound VAE's epochs (default: 1)")
    p.add_argument("--work", type=Path, default=None,
                   help="folder for the demo runs (default: a temporary one, removed after)")
    p.add_argument("--photos", type=int, default=0, metavar="N",
                   help="photo crops per group for the photograph runs (seed 0; 0 = none)")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "sound_image.md")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    start = time.monotonic()
    rows, photo_rows = [], []
    with tempfile.TemporaryDirectory(prefix="animalvae-bench-") as tmp:
        work = args.work or Path(tmp)
        for seed in seeds:
            out = work / f"seed{seed}"
            _run([sys.executable, "-m", "animalvae.demo", "--out", str(out), "--seed", str(seed),
                  "--fresh", "--epochs", str(args.epochs)])
            for name in variants:
                metrics = (json.loads((out / "runs" / "demo" / "images" / "metrics.json")
                                      .read_text()) if VARIANTS[name] is None
                           else _variant(out, name, VARIANTS[name]))
                rows.append((name, seed, metrics))
                print(name, seed, {k: metrics.get(k) for k, _ in COLUMNS}, flush=True)
            if args.photos and seed == seeds[0]:
                folder = _with_photos(out, args.photos)
                for name in variants:
                    metrics = _variant(out, f"{name}_photos", VARIANTS[name] or [], folder)
                    metrics.update(_photo_metrics(out / "runs" / f"{name}_photos",
                                                  per_group=args.photos))
                    photo_rows.append((name, seed, metrics))
                    print(name, "photos", metrics, flush=True)
    held_out = "/".join(str(n) for n in sorted({m.get("pairs") for _, _, m in rows}))
    per_sound = "/".join(str(n) for n in sorted({m.get("images_per_sound") for _, _, m in rows}))
    lines = ["## Stage 5: images from a sound on the demo: variety, retrieval, sharpness", "",
             f"Per seed of the demo's sample dataset ({_demo_clips_per_group()} clips per group; "
             f"{held_out} held-out pairs, {per_sound} images per held-out sound): sound -> image "
             "retrieval R@1 among the held-out "
             "frames beside what knowing only the group gives; the group accuracy of the "
             "generated images (a classifier fit on real training frames); variety: mean "
             "absolute pixel difference (0-255) between the images of one sound (within) and "
             "of different sounds (across); sharpness: edge strength of generated images over "
             "the real held-out frames'; Fréchet distance of generated to real held-out frames "
             "on image features (real training frames beside it: the floor).", "",
             *_table(rows, COLUMNS)]
    if photo_rows:
        photo_columns = (*COLUMNS[:1], *COLUMNS[2:8], ("photo_sharpness", "photos: sharpness"),
                         ("photo_l1", "photos: mean |error|"))
        lines += ["", f"With {args.photos} photograph crops per group as unpaired images "
                  "(seed 0); the last two columns: held-out crops of the same photographs "
                  "through the image half (sharpness of the result over the crops', and its "
                  "mean absolute error, 0-255).", "", *_table(photo_rows, photo_columns)]
    lines += ["", "Variants: " + "; ".join(
        f"`{n}` = {' '.join(VARIANTS[n]) if VARIANTS[n] else 'configs/demo.yaml as it is'}"
        for n in variants) + ".", "",
        f"Took {time.monotonic() - start:.0f} s on a CPU shared with other work.", "",
        f"Command: `python bench/bench_sound_image.py --seeds {args.seeds} "
        f"--variants {args.variants} --epochs {args.epochs}"
        + (f" --photos {args.photos}" if args.photos else "") + "`"]
    text = "\n".join(lines) + "\n"
    print(text)
    args.results.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
