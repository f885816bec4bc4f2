"""Traces for timeline viewers: Chrome trace-event JSON (chrome.py), which
Perfetto UI and chrome://tracing open, and a picture of one fault's stages
(timeline.py)."""
