"""Who answers Q1/Q2: hf (local model), openai (endpoint), scene (generated benchmark)."""
