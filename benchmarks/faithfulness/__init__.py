"""Faithfulness studies: per-method metrics over many images with bootstrap intervals and paired comparisons."""
