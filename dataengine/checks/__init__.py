"""Checks that curation applies to the teacher's answers and evaluation to the student's: the code sandbox,
code-answer parsing and language identification. Shared by stages, so that no stage imports another."""
