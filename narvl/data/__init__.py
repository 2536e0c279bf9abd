"""Data: the embedded default dataset (`synth`), readers of the real datasets' formats, webdataset shards, the tokenizer and the loaders.

    synth      `narvl synth`: the embedded default dataset in the real formats
    readers    Karpathy captions, VQAv2, RefCOCO (refer toolkit), OFA TSV -> records in the shard sample format
    shard      `narvl shard`: records -> `<task>-<split>-%06d.tar` + `sizes.json`
    tokenizer  `narvl tokenizer`: BPE with the special, location and CTC-blank tokens
    loader     training (shuffled, endless) and evaluation (every sample once) batches
    preview    `narvl preview`: a PNG grid of samples as the model sees them
    bench      `narvl bench data`: loader throughput
"""
