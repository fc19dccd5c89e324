"""Stage 5, sound -> image: the model with one latent space for a sound and its video frame
(``model``), its pairs of spectrogram and picture (``pairs``), its training (``train``) and the
commands that use it (``sound_to_image``: sound-to-image, image-to-sound, sample-images,
evaluate-images)."""
