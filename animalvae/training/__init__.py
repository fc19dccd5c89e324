"""What both stage-5 models share to train: the loop itself, with its schedules, checkpoints and
metrics (``loop``), the run folder's file names (``run_folder``), the stage-4 arrays, the seeded
split and the batch order (``dataset``), checkpoints and the --resume/--force rules
(``checkpoint``), the versioned files and their upgrades (``file_format``) and torchrun
(``distributed``)."""
