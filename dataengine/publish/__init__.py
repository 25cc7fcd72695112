"""Publishing: the curated rows as a Hub dataset layout with its card, sent to the Hub or a folder."""
