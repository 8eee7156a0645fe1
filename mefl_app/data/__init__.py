"""The data sets, loaded as normalized in-memory tensors, and their split into client shards."""
