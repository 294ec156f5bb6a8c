"""VisNet training (never imported by ml.inference or ml.models).

config (typed sections, YAML loading) -> data (benchmark) -> mining (BISS triplets) -> samplers (epoch batches)
-> augment -> miners + losses -> loop (train, validation, artifact) ; train_visnet is the command line.
"""
