"""What both stage-5 models share to train: the run folder's file names (``run_folder``), the
stage-4 arrays, the seeded split and the batch order (``dataset``), checkpoints and the
--resume/--force rules (``checkpoint``), the versioned files and their upgrades (``file_format``)
and torchrun (``distributed``)."""
