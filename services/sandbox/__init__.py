"""The agent sandbox: the llmPython dialect, implicit parallelism and OS isolation."""
