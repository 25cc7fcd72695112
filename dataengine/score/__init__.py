"""Teacher scoring: top-k logprobs of every answer token, stored next to the curated rows."""
