"""Data layer: TOFU-format splits (tofu.py), the offline author world (synthetic.py), and
tokenization/batching (formatting.py). See docs/contracts.md."""
