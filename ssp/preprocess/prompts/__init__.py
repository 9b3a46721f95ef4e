"""MLLM text prompts (paper §4.2): the `prompts` stage (:mod:`.stage`), the questions
(:mod:`.questions`) and the backends that answer them (:mod:`.backends`)."""
