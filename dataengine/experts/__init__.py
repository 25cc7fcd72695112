"""How an MoE routes tokens to its experts: routing signatures and the metrics computed from them (shared by
the route stage, curation's expert balance and the report)."""
