"""Channels: where alerts go (console, jsonl; Telegram and email in their own modules)."""
