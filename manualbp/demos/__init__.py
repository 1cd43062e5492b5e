"""Runnable versions of the lecture's small examples: ``python -m manualbp.demos.chain_rule``,
``python -m manualbp.demos.gradient_descent``."""
