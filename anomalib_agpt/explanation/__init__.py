"""The explanation head: where an answer is made (LLM, prompt learner, conversation, positions, answer metrics)."""
