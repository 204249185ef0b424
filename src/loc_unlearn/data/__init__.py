"""Data layer: TOFU-format splits (tofu.py), the offline author world (synthetic.py), the project's
general-knowledge sets (general_knowledge.py), and tokenization/batching (formatting.py). See docs/contracts.md."""
