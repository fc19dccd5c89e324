"""Stage 5, the sound VAE: the model and its harmonic comb (``model``, ``harmonic``), its losses
(``losses``), training (``train``), the sampler fit after training that turns a code into a
spectrogram (``sampler`` with ``prior``, ``spread``, ``texture``) and the commands that use a run
(``generate``: generate, reconstruct, interpolate, evaluate)."""
