"""genmesh: a multi-modal generation mesh."""
