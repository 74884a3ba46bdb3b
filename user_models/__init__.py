"""Your own networks for model.arch custom (model.module: user_models.NAME:FUNCTION).

A DVC dep of train, export and evaluate: a change here retrains. See docs/your-own-model.md.
"""
