"""Feature extractors (embeddings, LM losses, gradients, n-grams) and the feature cache."""
