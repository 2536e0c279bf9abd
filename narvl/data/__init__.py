"""Data: the embedded default dataset, readers into webdataset shards, the tokenizer and the loaders."""
