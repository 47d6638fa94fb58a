"""Tables (rules/tables.smk): Table 2 and the encoder kernel-regression rows."""
