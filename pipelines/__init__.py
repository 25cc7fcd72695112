"""The pipelines dataengine ships: `pipeline: generate`, `curate` or `distill` in a recipe names one of these
modules. Each is short code read top to bottom: which stages, in what order, which stage's output feeds which
input. Copy one next to your recipe, edit it and point `pipeline:` at the file (docs/extending.md)."""
