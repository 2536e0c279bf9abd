"""Scoring with the official metrics: captions (pycocoevalcap), VQA accuracy, grounding Acc@0.5 (`narvl score`)."""
