"""Evaluation of a ProgEmu model on the synthetic held-out split, with the paper's metric set."""
