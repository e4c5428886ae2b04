"""The text-to-image service: diffusers pipelines behind InferenceService."""
