"""Stage 5, the VAE: the model and the ``model.pth`` format (``model``), the stage-4 arrays and the
seeded split (``dataset``), the run folder (``checkpoint``), the training loop (``train``),
the sampler fit after training (``sampler``: prior, spread, texture, finishing), the commands
that use a run (``generate``), the quality measures (``quality``, ``birdnet``) and the HTML
gallery (``gallery``)."""
