"""mentor-tabular: feature vectors as a mentor modality, written against `import mentor` only.

The worked example of docs/plugins.md's "A modality": a modality (what an
example is, its augmentation, what `mentor predict` reads), a data source for
CSV and parquet tables, and an MLP over feature vectors.
"""
