"""The commands: ``anomalib-agpt`` CLI, the demo, the leaderboard (where a cell runs) and the web demo."""
