"""Students: initialisation, TRL fine-tuning and distillation, held-out evaluation."""
