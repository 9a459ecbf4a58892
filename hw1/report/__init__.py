"""reproduce.py and its report: the stage runner, the presets, reading a runs folder, the findings, the figures and
REPORT.md."""
