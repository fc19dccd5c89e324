"""The names of the files in a run folder (``paths.runs/<train.name>``), defined once.

================  ====================================================================
``model.pth``     the best weights by validation loss (format: :mod:`animalvae.sound.model`)
``sampler.pth``   what turns a code into a spectrogram, fit after training
                  (:mod:`animalvae.sound.sampler`)
``last.pth``      the latest state, for ``vae.py train --resume``
``split.csv``     which stage-4 arrays train and which are held out
``metrics.csv``   one row per epoch; ``loss.png`` draws it
``metrics.json``  ``vae.py evaluate``'s figures
``samples/``      generated, reconstructed and interpolated sounds with their pictures
``index.html``    the gallery over ``samples/``
``images/``       the sound <-> image model (``vae.py train-images``), a run folder of its
                  own with the same names: :mod:`animalvae.image.train`
================  ====================================================================

``settings.yaml`` (the settings in effect) is written by every stage under one name,
:data:`animalvae.stage.SETTINGS`.
"""

__all__ = ["MODEL", "SAMPLER", "LAST", "SPLIT", "METRICS", "LOSS_PLOT", "EVALUATION", "SAMPLES",
           "GALLERY", "IMAGE_RUN", "RUN_FILES"]

MODEL = "model.pth"
SAMPLER = "sampler.pth"
LAST = "last.pth"
SPLIT = "split.csv"
METRICS = "metrics.csv"
LOSS_PLOT = "loss.png"
EVALUATION = "metrics.json"
SAMPLES = "samples"
GALLERY = "index.html"
IMAGE_RUN = "images"

#: The files a fresh run (``--force``) removes with the old run's ``samples/``, so that
#: neither ``--resume`` nor the gallery can mix an old model's files with the new one's.
RUN_FILES = (MODEL, SAMPLER, LAST, METRICS, LOSS_PLOT, SPLIT, EVALUATION, GALLERY)
