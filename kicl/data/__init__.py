"""Inputs of the language-model chain (rules/data.smk, rules/models.smk): packaged wheels, tasks, models, encoders."""
