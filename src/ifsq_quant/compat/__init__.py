"""The semantics of published FSQ code, reproduced bit for bit: one module per family."""
