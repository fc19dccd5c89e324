"""animalvae: VGGSound animal clips -> 3 s segments -> spectrograms -> a VAE of animal sounds.

The five root scripts are thin command lines over this package; each module owns one concern
(config, stage machinery, download, extract, detect, spectrogram, model, train, generate).
"""

__version__ = "0.1.0"
