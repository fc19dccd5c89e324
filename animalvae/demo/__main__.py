"""``python -m animalvae.demo``: the whole pipeline, offline, on a generated sample dataset."""

import sys

from .pipeline import main

sys.exit(main())
