"""Read-only facts about a model shared by two or more passes (channel groups, MACs, input
moments, weights, codebook decoders); the pass manager caches them."""
