"""Stage 5, how good a run is: the sound measures and their judges (``quality``; the pretrained
embedding ``birdnet``), the image measures (``image_quality``) and the HTML galleries that show
both (``gallery``, ``image_gallery``). Pure functions over arrays; nothing here trains or
decodes."""
