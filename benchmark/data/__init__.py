"""Datasets: ImageNet val folders, the embedded sample set, and (later) ImageNet-C / -P."""
