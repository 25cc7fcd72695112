"""The route stage: how the MoE teacher routes every kept (and rejected) row's answer through its experts."""
