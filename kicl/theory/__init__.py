"""The synthetic theory check (rules/theory.smk, rules/theory_icl.smk).

Mixture-of-HMM world, exact posterior, Eq. 6 kernel regression, Table 3, and a transformer trained in that world.
"""
