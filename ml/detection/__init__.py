"""Localisation: a YOLO detector trained by `python -m ml.detection.train`, served by `load_detector`.

detector.py (inference: Detection, Detector, load_detector) and crops.py (crop_with_context) import neither
ml.training nor ultralytics' trainer; train.py and evaluate.py are the training / evaluation side.
"""
