"""The text-to-text service: LLM engines behind InferenceService."""
