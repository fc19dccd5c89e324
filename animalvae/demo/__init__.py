"""The offline demo: synthetic calls and scenes (``synth``), rendered clips and a VGGSound-format
CSV (``data``), a loopback server standing in for YouTube (``server``), and the five scripts run
in order (``pipeline``; ``python -m animalvae.demo``)."""
