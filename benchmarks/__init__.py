"""Side-by-side benchmarks of fusioncam against the tools users have today (JSON + markdown out)."""
