"""VisNet training (never imported by ml.inference or ml.models)."""
