"""The balance stage: routing-aware curation, choosing the kept rows that load the teacher's experts evenly."""
