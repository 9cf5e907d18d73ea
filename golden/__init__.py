"""perturbo.golden"""
