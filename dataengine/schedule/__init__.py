"""Scheduled runs: the foreground scheduler, one scheduled run, and exports to real schedulers."""
