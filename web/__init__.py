"""The web search-and-answer UI and JSON API (Flask)."""
