"""What the CLI writes: the explain output folder, the evaluation record, overlays and panels, segmentation pictures."""
