"""The synthetic theory check (rules/theory.smk): mixture-of-HMM world, exact posterior, Eq. 6 kernel regression, Table 3."""
