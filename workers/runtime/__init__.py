"""Model runtime: the encoder, the dynamic batcher and the classification engine."""
