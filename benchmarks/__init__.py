"""The sections of bench.py, grouped by what they measure; `run.run_sections` runs them in order."""
