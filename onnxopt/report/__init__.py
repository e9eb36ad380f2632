"""Terminal tables and report files (JSON, CSV)."""
