"""The judge: a model rates the kept rows against a rubric, and rows under the threshold are rejected."""
