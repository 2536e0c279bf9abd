"""The embedded default dataset (`narvl synth`): scenes of coloured shapes rendered and described in the real
datasets' file formats (COCO captions in Karpathy's split, VQAv2, RefCOCO, SNLI-VE), so that the readers of those
formats (narvl/tasks/) serve it unchanged. `scene` draws, renders and describes one scene; `generate` writes the
files (docs/data-default.md)."""
