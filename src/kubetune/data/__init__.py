"""Data: dataset registry, converters, templates, tokenisation with label masks, packing, cache."""
