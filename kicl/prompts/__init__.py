"""Prompt construction (rules/prompts.smk): templates, demonstration strategies, the prompt-file contract."""
