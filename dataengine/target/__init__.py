"""A publish target (a Hub dataset repository or a folder): where it is, what it holds, how files reach it.
Shared by curation (which dedups against what an appending target holds) and publishing."""
