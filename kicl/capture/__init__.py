"""The forward pass (rules/forward.smk): fused-attention last-row capture into a forward store."""
