"""perturbo.sim"""
