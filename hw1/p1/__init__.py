"""Problem 1: BYOL pre-training, the ResNet models and heads, the fine-tuning recipes and the settings A–E."""
