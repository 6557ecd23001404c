"""pytorch-grad-cam's `utils` package: `model_targets` (the targets fusioncam's graphs compute) and `image`."""
