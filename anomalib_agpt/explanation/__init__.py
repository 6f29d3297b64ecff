"""The explanation head: where an answer is made (LLM, prompt learner, conversation, chat, answer metrics)."""
