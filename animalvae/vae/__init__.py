"""Stage 5, the VAE: the model and the ``model.pth`` format (``model``), the stage-4 arrays and the
seeded split (``dataset``), the run folder (``checkpoint``), the training loop (``train``),
sampling and evaluation (``generate``) and the HTML gallery (``gallery``)."""
